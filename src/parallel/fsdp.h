// Sharded data parallelism (ZeRO-3 / FSDP style) for the tape-based model. The replicated
// trainable parameters are laid out in one flat index space of units, one unit per block of the
// forward pass (the prologue, each decoder layer, the epilogue: model::Gemma4::parameter_blocks()).
// Each unit is padded to a multiple of the dp group's size, and rank d of the dp group permanently
// owns slice d of every unit: the master weights (the optimizer keeps its moments for the same
// elements) and, after backward, the summed gradient.
//
// Block by block (enable_sharded_parameters): the model's forward gathers a block's units just
// before the block runs, while the next block's units are already being gathered asynchronously,
// and frees them after it; backward gathers them again just before the block's backward (the
// previous block's gather in flight) and reduce-scatters their gradients right after it. Only
// about two blocks' weights are ever whole at once. gather() instead makes the whole model
// present until release() (checkpoints, evaluation, or a step without hooks).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/gemma4.h"
#include "model/params.h"
#include "parallel/device_mesh.h"

namespace g4::parallel {

struct FlatParam {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // first element in the flat index space
  int64_t numel = 0;
};

// A unit: flat elements [begin, begin + padded), padded a multiple of the shards; its parameters
// lie end to end from `begin`, the tail is zeros. Shard d holds unit elements
// [d * padded / shards, (d + 1) * padded / shards).
struct FlatUnit {
  int64_t begin = 0;
  int64_t padded = 0;
};

// Where each parameter sits in the flat index space, how it is cut into units, and which elements
// each of `shards` ranks owns. A shard's tensor [shard_size()] is its slices of every unit, in
// unit order: the slice of unit u starts at units[u].begin / shards.
struct FlatLayout {
  std::vector<FlatParam> params;
  std::vector<FlatUnit> units;
  int64_t numel = 0;   // the parameters' elements
  int64_t padded = 0;  // the flat index space: the units' padded lengths together
  int64_t shards = 1;

  int64_t shard_size() const { return padded / shards; }
  int64_t unit_shard_size(size_t u) const { return units[u].padded / shards; }
  // One unit of the parameters `names` of `params`, in that order.
  static FlatLayout build(const model::ParamStore& params, const std::vector<std::string>& names, int64_t shards);
  // One unit per entry of `units` (parameter names, in order); an empty unit still gets one
  // element per shard, so every shard of every unit is a real tensor. align > 1 (GPU
  // parameters): every parameter starts at a multiple of `align` elements of its unit and every
  // unit is padded to a multiple of shards·align, so the whole parameters (views of a unit's
  // buffer) and each shard's part of every parameter keep the alignment the GPU kernels' vector
  // loads need; the gaps are zeros like the padding.
  static FlatLayout build_units(const model::ParamStore& params, const std::vector<std::vector<std::string>>& units,
                                int64_t shards, int64_t align = 1);
  const FlatParam* find(const std::string& name) const;  // nullptr when not in the buffer

  // Flat element i lives in shard `shard` at index `index` of its tensor; the `run` elements from
  // i on are contiguous there (up to the end of that shard's slice of the unit).
  struct Location {
    int64_t shard = 0, index = 0, run = 0;
  };
  Location locate(int64_t i) const;
  // Calls fn(param, first, count, local) for each part of a parameter that shard d owns: flat
  // elements [first, first + count), at index `local` of the shard's tensor.
  template <class Fn>
  void for_each_owned(int64_t d, Fn&& fn) const;

  // For checkpoints (the metadata that lets a later run re-split the shards). `what` names the
  // source in errors. Layouts without "units" (format 1) are one unit.
  nlohmann::json to_json() const;
  static FlatLayout from_json(const nlohmann::json& j, const std::string& what);
};

class ShardedParameters {
 public:
  // Replicated: parameters every rank holds whole (all but the routed experts); their gradient
  // slices are summed over dp, then over ep and cp. Experts: this rank's expert-parallel slice of
  // the routed experts, which its dp peers (same ep coordinate) hold too; summed over dp, then cp.
  enum class Kind : uint8_t { Replicated, Experts };

  // Takes this rank's slice of the parameters' current values (identical on every rank) as its
  // master shard; the parameters stay whole (gathered) until release(). Every parameter must be of
  // one dtype: f32 or f64 (CPU models, their own masters), or bf16 (compute copies, any device:
  // the master shard is f32 and a bf16 shard beside it, its rounding, is what the gathers move).
  // They live on the dp group's device (CUDA parameters need a CUDA communicator: NCCL or
  // host-staged). None may be an expert parameter (those stay with expert parallelism; with
  // Kind::Experts they must all be expert parameters). `blocks`: the parameters each block of the forward reads, in the order the
  // forward runs them (model::Gemma4::parameter_blocks()); each of `names` joins the unit of the
  // first block that reads it, and names no block reads form a last unit. Without blocks, one unit.
  // `master_source` (optional, e.g. a bf16 model's f32 CPU original): the values the masters start
  // from instead of the parameters' own (a bf16 copy's masters then start unrounded).
  // `master_remainders` (bf16 parameters only; ignored otherwise): the f32 master shard is kept as
  // the compute copy's bits plus an i16 remainder shard (ops/master_bits.h) instead of a tensor of
  // its own, and the compute copy is the masters' split, not their rounding.
  ShardedParameters(model::ParamStore& params, std::vector<std::string> names, DeviceMesh& mesh,
                    const std::vector<std::vector<std::string>>& blocks = {}, Kind kind = Kind::Replicated,
                    const model::ParamStore* master_source = nullptr, bool master_remainders = false);
  ~ShardedParameters();

  const FlatLayout& layout() const { return layout_; }
  DType dtype() const { return state_dtype_; }  // of the masters, gradients (and moments): f32 or f64
  Device device() const { return device_; }
  // [shard_size]: this rank's master weights; undefined when they are kept as remainders.
  Tensor& master() { return master_; }
  const Tensor& master() const { return master_; }
  // [shard_size] i16: the remainders that, joined with the compute copy, are the masters
  // (master_remainders); undefined otherwise.
  Tensor& remainder() { return remainder_; }
  // This rank's master shard as an f32/f64 tensor on device(): master(), or the compute copy and
  // the remainders joined (a copy).
  Tensor master_values() const;
  // The compute copy of the master shard (bf16 parameters): what the gathers move; the optimizer
  // rewrites it with each update. Undefined when the parameters are their own masters.
  Tensor& compute_copy() { return compute_; }
  Tensor& grad() { return grad_; }  // [shard_size]: after reduce_scatter_gradients
  // True between gather() and release(): the whole model is present and the block hooks do nothing.
  bool gathered() const { return pinned_; }

  // Collective over the dp group: every unit gathered (its parameters views of the unit's
  // buffer), kept until release(). A no-op when already gathered.
  void gather();
  // Drops every whole parameter (their values become undefined); only the shards remain.
  void release();
  // After backward, collective over the mesh: completes grad(), the sum over every rank of the
  // gradients of this rank's elements. Units the block hooks did not already reduce-scatter
  // (all of them after a forward on the gathered model) are reduce-scattered over dp here; then
  // the slice is all-reduced over ep and cp (the ranks that hold the same slice but trained on
  // other tokens). The whole gradients are freed. Undefined gradients count as zeros.
  void reduce_scatter_gradients();
  // Copies this rank's slice of the parameters' current values into the master shard (after the
  // whole parameters were loaded, e.g. from a checkpoint). Needs gathered parameters.
  void reload_master() { load_master(params_); }
  // The same from `source` (a store with the parameters' names and shapes, any dtype and device,
  // e.g. a bf16 model's f32 CPU original); the compute copy becomes the masters' rounding.
  void load_master(const model::ParamStore& source);
  // Collective over the dp group: the whole flat tensor [padded], in flat order, from every
  // rank's [shard_size] tensor in this layout (master, gradient or moments).
  Tensor gather_flat(const Tensor& shard);

  // Block by block (the hooks enable_sharded_parameters installs; collective over dp, every rank
  // calls them in the same order). No-ops while gathered().
  // Gathers block b's units (waiting for a prefetch in flight), then starts gathering the units
  // of block `next` (-1: none) asynchronously.
  void begin_block(int64_t b, int64_t next);
  // Frees block b's units except those block `keep` (-1: none) reads.
  void end_block(int64_t b, int64_t keep);
  // After block b's backward: starts reduce-scattering the gradients of the units b owns (reads
  // first) over dp (one reduce-scatter in flight at a time; the result is added into grad()),
  // frees those whole gradients, and frees b's units. A unit an earlier block also reads keeps
  // its whole gradient until that block's backward.
  // Units block `keep` (-1: none) reads stay whole.
  void reduce_scatter_block(int64_t b, int64_t keep);
  int64_t num_blocks() const { return static_cast<int64_t>(block_units_.size()); }

  // Elements of whole (gathered or arriving) unit buffers: now, and the peak since the last reset.
  int64_t whole_elements() const { return whole_now_; }
  int64_t whole_elements_peak() const { return whole_peak_; }
  void reset_whole_elements_peak() { whole_peak_ = whole_now_; }

 private:
  struct Unit;
  void ensure(size_t u);    // whole, waiting for its gather
  void prefetch(size_t u);  // starts its gather
  void free_unit(size_t u);
  void finish_reduce_scatter();
  void reduce_scatter_unit(size_t u);
  // Unit u's part of this rank's shard of the values the gathers move (the compute copy, or the
  // masters themselves).
  Tensor gathered_piece(size_t u) {
    const Tensor& from = compute_.defined() ? compute_ : master_;
    return from.slice0(layout_.units[u].begin / layout_.shards, layout_.unit_shard_size(u));
  }

  model::ParamStore& params_;
  DeviceMesh& mesh_;
  Kind kind_;
  FlatLayout layout_;
  DType compute_dtype_;  // the parameters' dtype: of the whole units
  DType state_dtype_;    // of the masters, gradients and moments: f32 (bf16 parameters) or the parameters'
  Device device_;
  Tensor master_, remainder_, compute_, grad_;
  std::vector<Unit> units_;
  std::vector<std::vector<size_t>> block_units_;  // per block: the units it reads
  bool pinned_ = false;
  // The reduce-scatter in flight: its unit, output and handle.
  struct PendingReduce;
  std::unique_ptr<PendingReduce> reducing_;
  int64_t whole_now_ = 0, whole_peak_ = 0;
  // Points at this object until it is destroyed; the model's hooks hold it.
  std::shared_ptr<ShardedParameters*> self_;
  friend void enable_sharded_parameters(model::Gemma4& model, const std::vector<ShardedParameters*>& shards);
};

// Connects the model to `shards` (each built from its parameter blocks; they must outlive the
// model's use of them; replicated parameters and, under fsdp, the experts): every forward gathers, prefetches and frees block by block, and records tape
// nodes so that backward gathers each block again before its backward and reduce-scatters its
// gradients after it. Activation recompute works unchanged: the recomputation runs between those
// two nodes. The last block stays whole after a recording forward, because backward starts there.
void enable_sharded_parameters(model::Gemma4& model, const std::vector<ShardedParameters*>& shards);

template <class Fn>
void FlatLayout::for_each_owned(int64_t d, Fn&& fn) const {
  // Parameters are in unit order, so one pass over both finds each parameter's unit.
  size_t u = 0;
  for (const FlatParam& p : params) {
    while (u + 1 < units.size() && p.offset >= units[u].begin + units[u].padded) ++u;
    const int64_t us = units[u].padded / shards;
    const int64_t lo = units[u].begin + d * us, hi = lo + us;
    const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
    if (a < b) fn(p, a, b - a, units[u].begin / shards + (a - lo));
  }
}

}  // namespace g4::parallel

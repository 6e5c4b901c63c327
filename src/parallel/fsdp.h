// Sharded data parallelism (ZeRO-3 / FSDP style) for the tape-based model. The replicated
// trainable parameters are laid end to end in one flat buffer, padded to a multiple of the dp
// group's size, and each rank of the dp group permanently owns one contiguous 1/dp slice of it
// (the master weights; the optimizer keeps its moments for the same slice). The parameters are
// all-gathered whole before the forward pass and dropped again once backward has produced their
// gradients, which are reduce-scattered so that each rank keeps only its slice's gradient.
//
// One flat buffer (not one per layer): the model runs on a tape that is recorded and replayed
// whole, so there is no per-layer hook at which to gather and free, and one buffer is one
// collective per step instead of one per tensor.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/params.h"
#include "parallel/device_mesh.h"

namespace g4::parallel {

struct FlatParam {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // first element in the flat buffer
  int64_t numel = 0;
};

// Where each parameter sits in the flat buffer and which slice each of `shards` ranks owns:
// shard d holds flat elements [d * shard_size(), (d + 1) * shard_size()).
struct FlatLayout {
  std::vector<FlatParam> params;
  int64_t numel = 0;   // the parameters' elements
  int64_t padded = 0;  // numel rounded up to a (nonzero) multiple of shards; the tail is zeros
  int64_t shards = 1;

  int64_t shard_size() const { return padded / shards; }
  // The parameters `names` of `params`, in that order.
  static FlatLayout build(const model::ParamStore& params, const std::vector<std::string>& names, int64_t shards);
  const FlatParam* find(const std::string& name) const;  // nullptr when not in the buffer

  // For checkpoints (the metadata that lets a later run re-split the shards). `what` names the
  // source in errors.
  nlohmann::json to_json() const;
  static FlatLayout from_json(const nlohmann::json& j, const std::string& what);
};

class ShardedParameters {
 public:
  // Takes this rank's slice of the parameters' current values (identical on every rank) as its
  // master shard. The parameters stay gathered until release(). Every parameter must be f32 or
  // f64, all of one dtype, and must not be an expert parameter (those stay with expert parallelism).
  ShardedParameters(model::ParamStore& params, std::vector<std::string> names, DeviceMesh& mesh);

  const FlatLayout& layout() const { return layout_; }
  int64_t shard_begin() const { return shard_begin_; }  // flat index of master()[0]
  DType dtype() const { return master_.dtype(); }
  Tensor& master() { return master_; }  // [shard_size]: this rank's master weights
  const Tensor& master() const { return master_; }
  Tensor& grad() { return grad_; }  // [shard_size]: after reduce_scatter_gradients
  bool gathered() const { return full_.defined(); }

  // Collective over the dp group: all-gathers the master shards into one flat buffer and makes
  // each parameter's value a view of its part. A no-op when already gathered.
  void gather();
  // Drops the whole parameters (their values become undefined); only the shards remain.
  void release();
  // After backward, collective over the mesh: sums every rank's gradients of the parameters
  // (reduce-scatter over dp, then all-reduce of the slice over ep and cp, the ranks that hold
  // the same slice) into grad(), and frees the parameters' whole gradients. Undefined gradients
  // count as zeros.
  void reduce_scatter_gradients();
  // Copies this rank's slice of the parameters' current values into the master shard (after the
  // whole parameters were loaded, e.g. from a checkpoint). Needs gathered parameters.
  void reload_master();
  // Collective over the dp group: the whole flat tensor [padded] from every rank's [shard_size].
  Tensor gather_flat(const Tensor& shard);

 private:
  model::ParamStore& params_;
  DeviceMesh& mesh_;
  FlatLayout layout_;
  int64_t shard_begin_ = 0;
  Tensor master_, grad_, full_;
};

}  // namespace g4::parallel

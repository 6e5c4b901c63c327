// AdamW for sharded data parallelism (recipe key parallel.fsdp). The replicated trainable
// parameters are a parallel::ShardedParameters flat buffer: each rank of the dp group holds the
// master weights, the gradient and the moments m, v of its 1/dp slice only, and updates that
// slice with a per-element weight-decay mask. The routed experts this rank holds (its
// expert-parallel slice, which its dp peers hold too) are a second flat buffer sharded the same
// way over the dp group. The arithmetic is torch.optim.AdamW's, element for element, so a sharded
// step equals the unsharded one.
//
// A step, built from the model (layer by layer): forward and backward, during which the model's
// hooks gather each block's weights just before use and reduce-scatter its gradients right after;
// reduce_gradients(); clip_grad_norm(); step(lr). Built from a ParamStore (no hooks), or after
// gather_parameters(), the step works on the whole model: gather_parameters(); forward and
// backward; reduce_gradients() (reduce-scatter, and the whole parameters are freed); ...
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "parallel/fsdp.h"
#include "train/adamw.h"
#include "train/optimizer_state.h"

namespace g4::train {

class ShardedAdamW {
 public:
  // Collective over the mesh. `trainable` lists the parameters to update (the replicated ones go
  // into the flat buffer in this order); `no_decay` those exempt from weight decay. The parameters
  // are f32/f64 CPU tensors (their own masters) or bf16 compute copies on the mesh's device (the
  // GPU): then masters, gradients and moments are f32 on that device, and `master_source` (a CPU
  // f32 store of the same names, e.g. the model's f32 original) gives the masters' first values
  // (without it they start from the bf16 values).
  ShardedAdamW(model::ParamStore& params, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
               const std::set<std::string>& no_decay, AdamWOptions options,
               const model::ParamStore* master_source = nullptr);
  // The same, sharded block by block: one flat unit per block of the model's forward
  // (Gemma4::parameter_blocks()), and the model's hooks installed (parallel::enable_sharded_parameters),
  // so that forward and backward gather each block just before use. The model must not outlive
  // this optimizer's use of it.
  ShardedAdamW(model::Gemma4& model, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
               const std::set<std::string>& no_decay, AdamWOptions options,
               const model::ParamStore* master_source = nullptr);

  // Collective over dp: the whole parameters (replicated and this rank's experts), all-gathered and kept until
  // release_parameters() or reduce_gradients() (no-op when they are). While they are, the
  // model's block hooks do nothing.
  void gather_parameters();
  // Frees the whole parameters: the next forward gathers block by block (with the hooks).
  void release_parameters();
  // After backward, collective over the mesh: each rank keeps the summed gradient of its slice
  // (and of its experts' slice, summed over dp and cp); the whole parameters and gradients are
  // freed.
  void reduce_gradients();
  // torch.nn.utils.clip_grad_norm_ over every trainable parameter of the whole model (the squared
  // norms of the slices are all-reduced over dp, those of the experts also over ep); returns the norm
  // before clipping. Collective over the mesh.
  double clip_grad_norm(double max_norm);
  // Updates this rank's slice and experts; the parameters are gathered again by the next
  // gather_parameters().
  void step(double lr);
  // Drops the reduced gradients without an update.
  void discard_gradients();
  int64_t steps_taken() const { return step_; }

  parallel::ShardedParameters& shards() { return *flat_.shards; }
  const parallel::ShardedParameters& shards() const { return *flat_.shards; }
  const Tensor& exp_avg() const { return flat_.m; }      // [shard_size]
  const Tensor& exp_avg_sq() const { return flat_.v; }   // [shard_size]
  // The experts' sharded parameters and moments; nullptr / undefined without trainable experts.
  parallel::ShardedParameters* expert_shards() { return experts_.shards.get(); }
  const Tensor& expert_exp_avg() const { return experts_.m; }
  const Tensor& expert_exp_avg_sq() const { return experts_.v; }
  // Elements of optimizer state this rank holds: master shard + m + v of the replicated slice and
  // of the experts' slice.
  int64_t state_numel() const;

  // Checkpoints. The tensors this rank writes: the slice's moments ("flat.exp_avg",
  // "flat.exp_avg_sq") on the ranks with ep = cp = 0, the experts' slice's ("experts.exp_avg",
  // "experts.exp_avg_sq") on the ranks with cp = 0 (each (dp, ep) pair holds a distinct one).
  // Empty when this rank writes nothing.
  std::vector<std::pair<std::string, Tensor>> checkpoint_tensors() const;
  // The layout metadata (kOptimizerMetadataKey) that lets another mesh re-split them.
  std::string checkpoint_metadata() const;
  // Restores the moments of this rank's slice and experts from any checkpoint layout, and takes
  // the master shard from the parameters' current (just loaded, gathered) values, or from
  // `master_source` (the f32 original of bf16 compute copies) when given.
  void load_state(const OptimizerStateReader& reader, int64_t steps_taken,
                  const model::ParamStore* master_source = nullptr);
  // Collective over dp: writes the fp32 value of every sharded parameter (its gathered master)
  // into the same-named parameter of `dest` (a CPU store of the masters' dtype); what a checkpoint
  // of bf16 compute copies exports. Parameters not trained here are left as they are in dest.
  void copy_masters_to(model::ParamStore& dest);

 private:
  void init(const std::vector<std::string>& trainable, const std::set<std::string>& no_decay,
            const std::vector<std::vector<std::string>>& blocks, const model::ParamStore* master_source);

  model::ParamStore& params_;
  parallel::DeviceMesh& mesh_;
  AdamWOptions opt_;
  // One flat buffer of sharded parameters with the moments and weight-decay mask of its slice.
  struct Family {
    std::unique_ptr<parallel::ShardedParameters> shards;
    Tensor m, v;
    Tensor decay_mask;  // u8 [shard_size] on the shards' device
    void init(const std::set<std::string>& no_decay, int64_t dp_rank, const AdamWOptions& opt);
  };
  Family flat_, experts_;
  std::vector<std::string> expert_names_;
  int64_t num_experts_ = 0;
  int64_t step_ = 0;
};

}  // namespace g4::train

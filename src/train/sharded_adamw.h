// AdamW for sharded data parallelism (recipe key parallel.fsdp). The replicated trainable
// parameters are a parallel::ShardedParameters flat buffer: each rank of the dp group holds the
// master weights, the gradient and the moments m, v of its 1/dp slice only, and updates that
// slice with a per-element weight-decay mask. The routed experts (split by expert parallelism,
// replicated over dp) keep an ordinary AdamW over this rank's slices. The arithmetic is
// torch.optim.AdamW's, element for element, so a sharded step equals the unsharded one.
//
// A step: gather_parameters(); forward and backward; reduce_gradients() (reduce-scatter, and the
// whole replicated parameters are freed); clip_grad_norm(); step(lr).
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
  // into the flat buffer in this order); `no_decay` those exempt from weight decay.
  ShardedAdamW(model::ParamStore& params, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
               const std::set<std::string>& no_decay, AdamWOptions options);

  // Collective over dp: the whole replicated parameters, all-gathered (no-op when they are).
  void gather_parameters() { shards_->gather(); }
  // After backward, collective over the mesh: each rank keeps the summed gradient of its slice
  // (and of its experts, summed over dp and cp); the whole replicated parameters and gradients
  // are freed.
  void reduce_gradients();
  // torch.nn.utils.clip_grad_norm_ over every trainable parameter of the whole model (the squared
  // norms of the slices are all-reduced over dp, those of the experts over ep); returns the norm
  // before clipping. Collective over the mesh.
  double clip_grad_norm(double max_norm);
  // Updates this rank's slice and experts; the parameters are gathered again by the next
  // gather_parameters().
  void step(double lr);
  int64_t steps_taken() const { return step_; }

  parallel::ShardedParameters& shards() { return *shards_; }
  const parallel::ShardedParameters& shards() const { return *shards_; }
  const Tensor& exp_avg() const { return m_; }      // [shard_size]
  const Tensor& exp_avg_sq() const { return v_; }   // [shard_size]
  const AdamW& experts() const { return *experts_; }
  // Elements of optimizer state this rank holds: master shard + m + v of the slice, plus the
  // moments of its experts.
  int64_t state_numel() const;

  // Checkpoints. The tensors this rank writes: the slice's moments ("flat.exp_avg",
  // "flat.exp_avg_sq") on the ranks with ep = cp = 0, the experts' ("exp_avg.<name>", ...) on the
  // ranks with dp = cp = 0 (rank 0 writes both). Empty when this rank writes nothing.
  std::vector<std::pair<std::string, Tensor>> checkpoint_tensors() const;
  // The layout metadata (kOptimizerMetadataKey) that lets another mesh re-split them.
  std::string checkpoint_metadata() const;
  // Restores the moments of this rank's slice and experts from any checkpoint layout, and takes
  // the master shard from the parameters' current (just loaded, gathered) values.
  void load_state(const OptimizerStateReader& reader, int64_t steps_taken);

 private:
  model::ParamStore& params_;
  parallel::DeviceMesh& mesh_;
  AdamWOptions opt_;
  std::unique_ptr<parallel::ShardedParameters> shards_;
  std::unique_ptr<AdamW> experts_;
  std::vector<std::string> expert_names_;
  Tensor m_, v_;
  std::vector<uint8_t> decay_mask_;
  int64_t num_experts_ = 0;
  int64_t step_ = 0;
};

}  // namespace g4::train

// What a training run optimises. An objective owns its batch source (packed text for SFT, rollouts
// for RL, noised blocks for diffusion) and turns each micro-batch into a loss and metrics; the
// rest of a step (backward, gradient reduction, clipping, the update) is train_step's, the same
// for every objective. A new objective is one class implementing this interface.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "model/gemma4.h"
#include "train/checkpoint.h"

namespace g4::train {

// Scalars of one step, by name ("loss", "router_aux_loss", ...). Each micro-batch's values are
// summed into the step's, and train_step sums them over all ranks: an objective writes each
// rank's and micro-batch's share of a step-wide mean (e.g. its loss weighted by its share of the
// step's tokens).
using Metrics = std::map<std::string, double>;

// One micro-batch's contribution to a step.
struct MicroLoss {
  // backward(loss, weight) adds this micro-batch's gradient; undefined: nothing to backward (every
  // rank alike, since ranks exchange activations' gradients in the backward).
  ag::Var loss;
  double weight = 1.0;
  Metrics metrics;
  // Per MoE layer, rows each expert this rank holds processed (ForwardOutputs::expert_tokens).
  std::map<int64_t, std::vector<int64_t>> expert_tokens;
};

// The inputs of one optimizer step on this rank, as an objective prepares them.
class StepBatch {
 public:
  virtual ~StepBatch() = default;
  virtual int64_t micro_batches() const = 0;
};

// An objective is also the checkpoint part of its own state (data position, RNG, ...).
class Objective : public CheckpointPart {
 public:
  // Sets what the objective needs of the model before the first step (e.g. an auxiliary loss).
  virtual void configure(model::Gemma4& model) {}
  // The next step's batch for this rank (collective when it needs its peers, e.g. to count the
  // step's tokens over all ranks). Advances the objective's position.
  virtual std::unique_ptr<StepBatch> next_batch() = 0;
  // Forward of micro-batch `i` of `batch` through `model`, recording the tape.
  virtual MicroLoss forward(const model::Gemma4& model, const StepBatch& batch, int64_t i) = 0;
  // Held-out metrics of the model as it is (no tape; collective like forward); empty: none.
  virtual Metrics validate(const model::Gemma4& model) { return {}; }
  // Whether forward and validate run the model without its parameter hooks (Gemma4::run_stack):
  // they then get the whole parameters, gathered when sharded (parallel.fsdp), and only the
  // optimizer state and the reduced gradients stay sharded.
  virtual bool needs_whole_parameters() const { return false; }
};

}  // namespace g4::train

// One optimizer step, the same for every objective and every way of running: the forward and
// backward of each micro-batch (the objective's loss), the gradients reduced over the mesh, the
// global-norm clipping and the update. `g4 train` and `g4 bench train` both run it.
#pragma once
#include <functional>
#include <map>
#include <vector>

#include "parallel/communicator.h"
#include "train/objective.h"
#include "train/optimizer.h"

namespace g4::train {

struct StepResult {
  Metrics metrics;         // the objective's, summed over micro-batches and ranks
  double grad_norm = 0;    // before clipping
  // false: a metric or the gradient norm is NaN or infinite, and the update was skipped (the
  // weights are as before the step).
  bool finite = true;
  // Per MoE layer, rows each expert this rank holds processed over the step's micro-batches.
  std::map<int64_t, std::vector<int64_t>> expert_tokens;
};

// Where a step is: called after each micro-batch's forward and backward and after the update, so
// a benchmark can time the phases (it synchronises the device there; training passes none).
enum class StepPhase { Forward, Backward, Update };
using PhaseMark = std::function<void(StepPhase)>;

// Readies the parameters for the objective's forward or validation: released to gather block by
// block as the model runs, or whole (Objective::needs_whole_parameters). Collective over dp when
// sharded; a no-op otherwise.
void parameters_for(const Objective& objective, Optimizer& optimizer);

// Collective over `world` (the mesh's world; a one-rank communicator on one rank).
StepResult train_step(model::Gemma4& model, Objective& objective, Optimizer& optimizer, const StepBatch& batch,
                      double lr, double max_grad_norm, parallel::Communicator& world, const PhaseMark& mark = {});

}  // namespace g4::train

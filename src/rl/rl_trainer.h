// `g4 rl`: GRPO / DAPO from a recipe in one process. The policy being trained generates its own
// rollouts (the generation engine reads its weights: nothing is copied or refitted), its training
// forward recomputes their log-probs, and the step is train_step with the GRPO objective: the same
// optimizer, clipping, checkpoints and exact resume as `g4 train`.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "train/recipe.h"

namespace g4::rl {

struct RlResult {
  int64_t steps = 0;
  double first_validation_accuracy = -1, last_validation_accuracy = -1;  // -1: no validation
  double last_reward = 0;
  std::string checkpoint;  // final checkpoint directory
  nlohmann::json last_step;  // the last step's metrics record (what metrics.jsonl holds)
};

struct RlRunOptions {
  bool resume = false;  // continue from the newest complete checkpoint in the output directory
  bool final_checkpoint = true;  // false (benchmarks): no checkpoint at the end
};

// The recipe must have been read for Command::kRl.
RlResult run_rl(const train::Recipe& recipe, const RlRunOptions& options = {});

}  // namespace g4::rl

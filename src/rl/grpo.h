// GRPO / DAPO as a training objective (NeMo-RL's grpo_train step; docs/rl.md).
//
// prepare_step(): draw prompts -> rollouts by the generation engine on the policy's current
// weights -> rewards -> scaling and overlong shaping -> baselines -> DAPO's dynamic-sampling
// filter (more rounds until the step is full) -> advantages on the kept samples -> the kept
// samples packed into token-budgeted rows, split into global batches (one optimizer step each)
// and over the data-parallel ranks -> lp_prev (and lp_ref when the KL term is on) by the training
// forward with no gradient. Then next_batch() hands out the global batches in turn and forward()
// runs the clipped policy-gradient loss on one packed row.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "parallel/device_mesh.h"
#include "rl/advantages.h"
#include "rl/policy_loss.h"
#include "rl/prompt_stream.h"
#include "rl/rewards.h"
#include "rl/rollouts.h"
#include "train/objective.h"
#include "train/recipe.h"

namespace g4::rl {

// What prepare_step measured (metrics of the step that are not the loss's).
struct StepStats {
  train::Metrics metrics;  // reward, accuracy, lengths, dynamic sampling, time split, ...
  int64_t global_batches = 0;
};

class GrpoObjective final : public train::Objective {
 public:
  // The mesh (its world: data-parallel ranks) and the tokenizer must outlive the objective.
  // `reference`: the frozen initial policy for the KL term (nullptr when loss_fn's KL is off). A
  // LoRA run (recipe lora.rank > 0) passes nullptr: its reference is the policy's frozen base,
  // the same model with the adapters bypassed (model::LoraBypass), so no copy is kept.
  GrpoObjective(const train::Recipe& recipe, const io::Tokenizer& tok, const io::ModelConfig& config,
                parallel::DeviceMesh& mesh, std::unique_ptr<model::Gemma4> reference);
  ~GrpoObjective() override;

  // A sharded optimizer's whole parameters around the rollouts (the engine reads every weight at
  // once); the training forwards gather block by block. Default: nothing to do.
  void set_parameter_hooks(std::function<void()> gather, std::function<void()> release);
  // The rollout phase and everything up to lp_prev, on the policy as it is now (collective).
  StepStats prepare_step(const model::Gemma4& policy);
  // The step's global batches in turn (prepare_step first).
  std::unique_ptr<train::StepBatch> next_batch() override;
  train::MicroLoss forward(const model::Gemma4& model, const train::StepBatch& batch, int64_t i) override;
  // Held-out accuracy (avg@k of the raw reward) on the validation prompts; empty without them.
  train::Metrics validate(const model::Gemma4& model) override;

  // The draw position and the steps' counters (trainer_state.json "rl").
  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

  const PromptStream& prompts() const { return prompts_; }
  // The KL term's separate reference model; nullptr when it has none (KL off, or LoRA).
  const model::Gemma4* reference_model() const;
  // The reference policy's log-probabilities of the targets of `inputs` (a forward with
  // return_token_logprobs), without gradient: the reference model's, or with LoRA the policy's
  // with its adapters bypassed.
  std::vector<double> reference_logprobs(const model::Gemma4& policy, const model::ForwardInputs& inputs) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  PromptStream prompts_;
};

}  // namespace g4::rl

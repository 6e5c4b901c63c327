// Block-diffusion training with NeMo Automodel 0.7.0's semantics (docs/diffusion.md "Training",
// DIFFUSION.md §D): the causal encoder over the clean rows (with its next-token "AR" co-loss),
// then the denoiser over the corrupted response window under the block-causal mask, twice: a
// no-grad pass whose logits self-condition the second, for the examples whose coin says so. One
// block per example is scored. As a train::Objective for `g4 train`.
#pragma once
#include <memory>
#include <vector>

#include "diffusion/collate.h"
#include "model/gemma4.h"
#include "parallel/communicator.h"
#include "train/objective.h"

namespace g4::diffusion {

// One micro-batch, prepared on the host.
struct DllmStep {
  DllmBatch batch;
  ResponseWindow window;
  Tensor coins;  // [B] i64: 1 = pass 2 is self-conditioned on pass 1's logits
};

// Automodel's draws for micro-batch `place.microbatch` of a step: corruption per row, then the
// block selection and the self-conditioning coins (which read the same uniforms: the
// Automodel seed quirk, kept for parity).
DllmStep prepare_step(const DllmBatch& batch, uint64_t base_seed, const SamplePlace& place, int64_t vocab_size,
                      int64_t block_size, double eps, double self_conditioning_p);

struct DllmForward {
  // This micro-batch's share of the step's loss: its diffusion CE sum / n_diff + weight · its AR CE
  // sum / n_ar.
  ag::Var loss;
  double diffusion = 0, ar = 0;  // its shares of the two terms (ar before the weight)
  // With keep_logits: encoder logits [B, S, V], pass 1's [B, R, V] (training only), pass 2's.
  Tensor encoder_logits, sc_logits, logits;
};

// training: both passes, the coins and the AR term (weighted by ar_weight). Otherwise
// (validation) one denoiser pass without self-conditioning and the diffusion term alone.
// n_diff / n_ar: the step's denominators (scored tokens and AR pairs over every micro-batch and
// rank, each at least 1).
DllmForward dllm_forward(const model::Gemma4& m, const DllmStep& s, double n_diff, double n_ar, double ar_weight,
                         bool training, bool keep_logits = false);

struct DiffusionOptions {
  int64_t block_size = 0;  // dllm.block_size; 0: the model's canvas_length
  double eps = 1e-3, self_conditioning_p = 0.5, encoder_loss_weight = 1.0;
  CollateOptions collate;  // pad_block_size 0: the block size
  uint64_t seed = 42;      // Automodel's base seed of every draw
  int64_t batch_size = 1, grad_accumulation = 1;
  std::vector<DllmExample> train, validation;
  int64_t validation_batches = 0;  // of batch_size examples; 0: all
};

// Sample i of Automodel's global order (SamplePlace::global_index) is train[i mod size]. The step
// number is the objective's state: it drives every seed, so a resumed run draws what an
// uninterrupted one would. Data parallelism: the world's ranks are Automodel's dp ranks (no
// context parallelism), replicas or shards (parallel.fsdp).
class DiffusionObjective final : public train::Objective {
 public:
  DiffusionObjective(DiffusionOptions options, parallel::Communicator& world);

  // Takes the vocabulary, canvas length and sliding window from the model.
  void configure(model::Gemma4& model) override;
  std::unique_ptr<train::StepBatch> next_batch() override;
  // Metrics "loss" (the total), "diffusion_loss", "ar_loss".
  train::MicroLoss forward(const model::Gemma4& model, const train::StepBatch& batch, int64_t i) override;
  // {"validation_loss"}: the diffusion loss of the validation examples, one denoiser pass without
  // self-conditioning, drawn as step 0 of a run with one micro-batch per validation batch.
  train::Metrics validate(const model::Gemma4& model) override;
  // The passes run Gemma4::run_stack, which has no sharding hooks: under parallel.fsdp the step
  // gathers the whole model, and the optimizer state and gradients stay sharded.
  bool needs_whole_parameters() const override { return true; }

  void save(const std::filesystem::path& dir, nlohmann::json& state) override;  // "diffusion_step"
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

 private:
  std::vector<DllmExample> examples(const std::vector<DllmExample>& from, const SamplePlace& place) const;

  DiffusionOptions opt_;
  parallel::Communicator& world_;
  int64_t vocab_ = 0, step_ = 0;
};

}  // namespace g4::diffusion

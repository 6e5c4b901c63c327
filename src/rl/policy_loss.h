// NeMo-RL's clipped policy-gradient loss (ClippedPGLossFn; docs/rl.md): the PPO
// ratio against the trainer's own pre-update log-probs, dual clip, the train/inference importance
// weight with its truncation (tis / icepop / seq-mask-tis), the KL penalty against a frozen
// reference (k1 / k2 / k3), token- or sequence-level reduction over the *global* batch, and the
// metrics NeMo-RL logs. Evaluated on the host in double: a micro-batch holds at most a few hundred
// thousand response tokens, so the exact formulas cost nothing next to the forward.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace g4::rl {

enum class Truncation { kNone, kTis, kIcepop, kSeqMaskTis };
enum class KlType { kK1, kK2, kK3 };

struct LossConfig {
  double ratio_clip_min = 0.2;               // ε_low: r is clipped to [1 - ε_low, 1 + ε_high]
  double ratio_clip_max = 0.2;               // ε_high
  std::optional<double> ratio_clip_c;        // dual clip (c > 1); none: off
  double kl_penalty = 0;                     // β (0: no KL term, and no reference log-probs needed)
  KlType kl_type = KlType::kK3;
  double kl_input_clamp = 20, kl_output_clamp = 10;
  bool on_policy_kl_approximation = false;   // weight the KL by exp(lp_curr - lp_gen), no gradient
  bool importance_sampling_correction = false;
  Truncation truncation = Truncation::kNone;  // needs importance_sampling_correction
  double truncation_ratio = 2.0;             // R
  double truncation_ratio_min = 0.0;         // R_min (icepop, seq-mask-tis)
  bool token_level_loss = true;              // false: mean over tokens per sequence, then over sequences
};

// One micro-batch's response tokens, flattened: token i belongs to sequence seq[i] (0 .. sequences-1,
// ascending and contiguous). Masked tokens (mask 0) take part in nothing; a sequence whose
// sample_mask is 0 neither.
struct LossTokens {
  std::vector<int64_t> seq;          // [N]
  std::vector<double> lp_prev;       // [N] trainer forward before this step's update (no gradient)
  std::vector<double> lp_gen;        // [N] what the generation engine reported for the sampled token
  std::vector<double> lp_ref;        // [N] frozen reference; may be empty when kl_penalty == 0
  std::vector<double> advantage;     // [N] the sequence's advantage, repeated over its tokens
  std::vector<double> token_mask;    // [N] 1 on trained (generated) tokens
  std::vector<double> sample_mask;   // [sequences]
};

// The step's normalisers over every micro-batch and rank: Σ token_mask·sample_mask and Σ sample_mask.
struct Normalizers {
  double valid_tokens = 0;
  double valid_seqs = 0;
};

struct LossResult {
  double loss = 0;                    // this micro-batch's share of the global loss
  std::vector<double> grad;           // [N] d loss / d lp_curr
  // This micro-batch's share of each metric (RL.md §5: token means already divided by the global
  // token count, so summing over micro-batches and ranks gives the step's value): "loss",
  // "actor_loss", "kl_penalty", "token_mult_prob_error", "gen_kl_error", "policy_kl_error",
  // "js_divergence_error", "sampling_importance_ratio", "is_oob_ratio" (with truncation),
  // "probs_ratio", "probs_ratio_clamped", "clip_fraction", "approx_entropy". (No min/max metrics:
  // the step sums every metric over micro-batches and ranks.)
  std::map<std::string, double> metrics;
};

// Checks the configuration (c > 1, truncation needs the correction, ranges); throws g4::Error
// naming the recipe key (loss_fn.*).
void check(const LossConfig& config);

LossResult policy_loss(const std::vector<double>& lp_curr, const LossTokens& tokens, const LossConfig& config,
                       const Normalizers& norm);

// The same as an autograd node: lp_curr is [N] (any float dtype, any device); the result is a []
// f32 Var on lp_curr's device whose backward feeds `grad` into lp_curr. The metrics are returned
// through `metrics`. (One host copy of lp_curr per call: a synchronisation per micro-batch.)
ag::Var policy_loss(const ag::Var& lp_curr, const LossTokens& tokens, const LossConfig& config,
                    const Normalizers& norm, std::map<std::string, double>& metrics);

}  // namespace g4::rl

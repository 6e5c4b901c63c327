// Picks the next token of many sequences at once from their logits, on the device the logits are
// on (a CPU reference and a CUDA path that agree), and reports log-probabilities.
//
// Processing order (as transformers): temperature, then top-k, then top-p, then min-p; the token
// is drawn from what remains. temperature 0 is greedy (argmax; the lowest id on ties).
// With m the row's largest logit, the scaled logits are z = (logit - m) / temperature in fp32.
// - top-k keeps every token whose z is >= the k-th largest z (ties with the k-th are all kept, as
//   vLLM and transformers do); k = 0 or k >= V keeps all.
// - top-p keeps token t when the tokens strictly more likely than t (among those top-k kept)
//   hold less than top_p of their mass; tokens of equal probability are kept or cut together.
//   Masses are exp(z) in 40-bit fixed point summed exactly, so every device cuts alike.
// - min-p keeps z >= ln(min_p) (ln rounded to fp32), i.e. p >= min_p * p_max.
// The draw is an exponential race: the kept token with the largest z - ln(E) wins, E ~ Exp(1)
// from Philox keyed by the request's seed, its token index (`draw`) and the token id; this is an
// exact draw from softmax(z) over the kept tokens. Draws therefore depend only on the request's
// own seed, draw index and logits, never on the rest of the batch, and the CPU and the GPU pick the
// same token (their noise and cuts are computed bit for bit alike, generate/sampling_math.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace g4::gen {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = no top-k cut
  double top_p = 1.0;        // in (0, 1]; 1 = no nucleus cut
  double min_p = 0.0;        // in [0, 1]; keep tokens with p >= min_p * p_max
  uint64_t seed = 0;
};

// Which distribution reported log-probs come from: the model's ("raw", log_softmax of the
// logits as they are) or the one sampled from ("processed", after temperature and the filters;
// filtered tokens are -inf). Greedy rows report the raw ones in both modes.
enum class LogprobMode { kRaw, kProcessed };

// Most alternatives a row may ask for (OpenAI allows 20).
constexpr int64_t kMaxTopLogprobs = 64;

struct RowSampling {
  SamplingParams params;
  uint64_t draw = 0;              // the request's token index (0 for its first generated token)
  int64_t top_logprobs = 0;       // alternatives to report, 0 .. kMaxTopLogprobs
  LogprobMode logprob_mode = LogprobMode::kRaw;
};

struct SampledToken {
  int64_t token = 0;
  float logprob = 0;                 // of `token`, fp32, in the row's mode
  // The min(top_logprobs, V) largest logits' ids, largest first (lower id on ties; the order is
  // the same in both modes), and their log-probs in the row's mode (-inf for a filtered token).
  std::vector<int64_t> top_ids;
  std::vector<float> top_logprobs;
};

// How a validation error names an option: as the struct field ("top_k") for library callers, or
// as the flag ("--top-k") when the values came from the command line.
enum class OptionStyle { Field, Flag };
std::string option_name(const char* field, OptionStyle style);

// Checks one request's parameters; the error names the parameter and its allowed range: a
// temperature that is negative or not finite, a negative top_k, a top_p outside (0, 1], a min_p
// outside [0, 1].
void validate(const SamplingParams& p, OptionStyle style = OptionStyle::Field);

// logits [R, V] f32 (CPU or GPU, after the final softcap); rows.size() == R. Every row's
// parameters are validated. A row with a NaN or +inf logit, or no finite one, is an error naming
// the row. -inf logits are allowed (the token is never drawn).
std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows);

}  // namespace g4::gen

// Picks the next token of many sequences at once from their logits, on the device the logits are
// on (a CPU reference and a CUDA path that agree), and reports log-probabilities.
//
// Processing order (as vLLM and transformers): temperature, then top-k, then top-p, then min-p;
// the token is drawn from what remains. temperature 0 is greedy (argmax; the lowest id on ties).
// A request's draws come from Philox keyed by its seed and counted by its own token index, so a
// seeded request samples the same tokens whatever else is in the batch.
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

struct RowSampling {
  SamplingParams params;
  uint64_t draw = 0;              // the request's token index (0 for its first generated token)
  int64_t top_logprobs = 0;       // alternatives to report (the N most likely, in that mode)
  LogprobMode logprob_mode = LogprobMode::kRaw;
};

struct SampledToken {
  int64_t token = 0;
  float logprob = 0;                 // of `token`, fp32, in the row's mode
  std::vector<int64_t> top_ids;      // top_logprobs most likely ids, most likely first
  std::vector<float> top_logprobs;   // their log-probs, same mode
};

// How a validation error names an option: as the struct field ("top_k") for library callers, or
// as the flag ("--top-k") when the values came from the command line.
enum class OptionStyle { Field, Flag };
std::string option_name(const char* field, OptionStyle style);

// Checks one request's parameters; the error names the parameter and its allowed range.
void validate(const SamplingParams& p, OptionStyle style = OptionStyle::Field);

// logits [R, V] f32 (CPU or GPU, after the final softcap); rows.size() == R.
std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows);

}  // namespace g4::gen

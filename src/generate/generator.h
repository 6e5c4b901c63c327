// Autoregressive generation over the KV cache: one batched prefill of the prompts, then one
// token per step for every row.
#pragma once
#include <vector>

#include "generate/sampler.h"
#include "model/gemma4.h"

namespace g4::gen {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  std::vector<int64_t> stop_ids;  // a row stops after emitting one of these
};

// Throws a g4::Error naming the option when the sampling options are out of range, max_new_tokens
// is negative, or prompt_len + max_new_tokens exceeds `context_len` (the model's
// max_position_embeddings; 0 = not known, unchecked).
void validate(const GenerateOptions& opt, int64_t prompt_len, int64_t context_len,
              OptionStyle style = OptionStyle::Field);

// Prompts must have equal lengths (left padding is not supported yet). Returns each row's
// prompt followed by its generated tokens. The options are validated first.
std::vector<std::vector<int64_t>> generate(const model::Gemma4& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt);

}  // namespace g4::gen

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

// Prompts must have equal lengths (left padding is not supported yet). Returns each row's
// prompt followed by its generated tokens.
std::vector<std::vector<int64_t>> generate(const model::Gemma4& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt);

}  // namespace g4::gen

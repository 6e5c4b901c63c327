// Picks the next token from a row of logits: greedy, or temperature / top-k / top-p sampling
// with Philox draws so a seed reproduces a generation exactly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "generate/sampling.h"

namespace g4::gen {

struct SamplingOptions {
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;     // 0 = no top-k cut
  double top_p = 1.0;    // 1 = no nucleus cut
  uint64_t seed = 0;
};

// The checks of validate(SamplingParams) on the same values.
void validate(const SamplingOptions& opt, OptionStyle style = OptionStyle::Field);

// `opt` must have passed validate(). `draw` selects the random number (e.g. step * batch + row),
// so rows and steps never share one.
int64_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& opt, uint64_t draw);

}  // namespace g4::gen

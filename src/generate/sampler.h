// Picks the next token from a row of logits: greedy, or temperature / top-k / top-p sampling
// with Philox draws so a seed reproduces a generation exactly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace g4::gen {

struct SamplingOptions {
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;     // 0 = no top-k cut
  double top_p = 1.0;    // 1 = no nucleus cut
  uint64_t seed = 0;
};

// How a validation error names an option: as the struct field ("top_k") for library callers, or
// as the flag ("--top-k") when the values came from the command line.
enum class OptionStyle { Field, Flag };
std::string option_name(const char* field, OptionStyle style);

// Throws a g4::Error naming the option when a value is out of range: a temperature that is
// negative or not finite, a negative top_k, a top_p outside (0, 1].
void validate(const SamplingOptions& opt, OptionStyle style = OptionStyle::Field);

// `opt` must have passed validate(). `draw` selects the random number (e.g. step * batch + row),
// so rows and steps never share one.
int64_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& opt, uint64_t draw);

}  // namespace g4::gen

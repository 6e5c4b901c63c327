// Generation for callers that want whole continuations of a few prompts (the training report's
// samples, `g4 generate --prompt-ids`): a thin layer over gen::Engine.
#pragma once
#include <vector>

#include "generate/engine.h"
#include "generate/sampling.h"
#include "model/gemma4.h"

namespace g4::gen {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingParams sampling{.temperature = 0.0};  // greedy unless a temperature is set
  std::vector<int64_t> stop_ids;                // a row stops after emitting one of these
};

// Throws a g4::Error naming the option when the sampling options are out of range, max_new_tokens
// is negative, or prompt_len + max_new_tokens exceeds `context_len` (the model's
// max_position_embeddings; 0 = not known, unchecked).
void validate(const GenerateOptions& opt, int64_t prompt_len, int64_t context_len,
              OptionStyle style = OptionStyle::Field);

// Prompts of any lengths, run together by one Engine; sample row i with seed sampling.seed + i.
// Returns each row's prompt followed by its generated tokens (ending with a stop id when one was
// emitted; the model's end-of-sequence ids do not stop a row). The options are validated first.
// `media` (empty, or one per prompt) holds the images and clips of the prompts' placeholders.
std::vector<std::vector<int64_t>> generate(const model::Gemma4& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt, const std::vector<RequestMedia>& media = {});

}  // namespace g4::gen

#include "generate/generator.h"

#include <algorithm>

namespace g4::gen {

void validate(const GenerateOptions& opt, int64_t prompt_len, int64_t context_len, OptionStyle style) {
  validate(opt.sampling, style);
  const std::string max_new = option_name("max_new_tokens", style);
  G4_CHECK(opt.max_new_tokens >= 0, max_new, " must be >= 0, got ", opt.max_new_tokens);
  // Positions past the context length were never trained (and the KV cache would grow without
  // bound), so a request that long is refused rather than run.
  G4_CHECK(context_len <= 0 || opt.max_new_tokens <= context_len - prompt_len, max_new, " ", opt.max_new_tokens,
           " with a prompt of ", prompt_len, " tokens exceeds the model's context length (max_position_embeddings ",
           context_len, "): at most ", std::max<int64_t>(context_len - prompt_len, 0), " new tokens fit");
}

std::vector<std::vector<int64_t>> generate(const model::Gemma4& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt) {
  G4_CHECK(!prompts.empty(), "generate: no prompt");
  const int64_t B = static_cast<int64_t>(prompts.size());
  const int64_t S = static_cast<int64_t>(prompts[0].size());
  G4_CHECK(S > 0, "generate: empty prompt");
  for (const auto& p : prompts)
    G4_CHECK(static_cast<int64_t>(p.size()) == S, "generate: prompts of different lengths (", p.size(), " vs ", S,
             ") are not supported yet");
  validate(opt, S, model.config().max_position_embeddings);
  const int64_t V = model.config().vocab_size;

  std::vector<std::vector<int64_t>> out = prompts;
  std::vector<bool> done(static_cast<size_t>(B), false);
  model::KVCache cache = model.new_cache();
  Tensor ids = Tensor::empty({B, S}, DType::I64);
  for (int64_t b = 0; b < B; ++b) std::copy(prompts[b].begin(), prompts[b].end(), ids.data<int64_t>() + b * S);

  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    const Tensor logits = model.forward_cached(ids, cache);  // [B, n, V]
    const int64_t n = logits.size(1);
    Tensor next = Tensor::empty({B, 1}, DType::I64);
    for (int64_t b = 0; b < B; ++b) {
      const float* row = logits.data<float>() + (b * n + n - 1) * V;
      const int64_t tok = done[b] ? out[b].back() : sample_token(row, V, opt.sampling, static_cast<uint64_t>(step * B + b));
      next.data<int64_t>()[b] = tok;
      if (!done[b]) {
        out[b].push_back(tok);
        done[b] = std::find(opt.stop_ids.begin(), opt.stop_ids.end(), tok) != opt.stop_ids.end();
      }
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    ids = next;
  }
  return out;
}

}  // namespace g4::gen

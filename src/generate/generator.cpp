#include "generate/generator.h"

#include <algorithm>

#include "generate/engine.h"

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
                                           const GenerateOptions& opt, const std::vector<RequestMedia>& media) {
  G4_CHECK(!prompts.empty(), "generate: no prompt");
  G4_CHECK(media.empty() || media.size() == prompts.size(), "generate: media for ", media.size(), " of ",
           prompts.size(), " prompts");
  const io::ModelConfig& cfg = model.config();
  for (const auto& p : prompts) {
    G4_CHECK(!p.empty(), "generate: empty prompt");
    validate(opt, static_cast<int64_t>(p.size()), cfg.max_position_embeddings);
  }
  if (opt.max_new_tokens == 0) return prompts;

  // Pages for every row at its longest, plus a sliding window and a chunk, so nothing waits.
  EngineOptions eo;
  eo.max_running = static_cast<int64_t>(prompts.size());
  eo.max_step_tokens = 1024;
  // An image block is prefilled in one step: a prompt always fits one.
  for (const auto& p : prompts) eo.max_step_tokens = std::max<int64_t>(eo.max_step_tokens, static_cast<int64_t>(p.size()));
  const auto pages_of = [&](int64_t tokens) { return (tokens + eo.page_size - 1) / eo.page_size; };
  for (const auto& p : prompts) eo.num_pages += pages_of(static_cast<int64_t>(p.size()) + opt.max_new_tokens);
  eo.num_pages += pages_of(cfg.sliding_window + eo.max_step_tokens) + 2;
  Engine engine(model, eo);
  std::vector<Request> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = prompts[i];
    r.options.sampling = opt.sampling;
    r.options.sampling.seed = opt.sampling.seed + i;
    r.options.max_tokens = opt.max_new_tokens;
    r.options.stop_ids = opt.stop_ids;
    r.options.ignore_eos = true;
    if (!media.empty()) r.media = media[i];
    requests.push_back(std::move(r));
  }
  std::vector<std::vector<int64_t>> out = prompts;
  const std::vector<Completion> done = engine.generate(std::move(requests));
  for (size_t i = 0; i < done.size(); ++i)
    for (const GeneratedToken& t : done[i].tokens) out[i].push_back(t.id);
  return out;
}

}  // namespace g4::gen

// A prompt set for `g4 rl` (data.prompts: JSONL in the DAPO-Math or the plain layout): load_prompts
// without and with a system prompt, in both chat variants, then the check a countdown reward makes
// of each prompt's fields. Every prompt it accepts must have ids to generate from and a place
// (file:line) for later errors.
#include <cstdlib>

#include "fuzz_common.h"
#include "io/tokenizer.h"
#include "rl/prompts.h"
#include "rl/rewards.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<g4::io::Tokenizer> tok = g4::io::load_tokenizer(G4_FUZZ_TOKENIZER);
  const std::string path = g4::fuzz::write_scratch("prompts.jsonl", g4::fuzz::as_view(data, size));
  for (const auto variant : {g4::data::ChatVariant::Small, g4::data::ChatVariant::Large})
    for (const char* system : {"", "Answer briefly."})
      g4::fuzz::expect_g4_errors_only([&] {
        for (const g4::rl::PromptExample& p : g4::rl::load_prompts(path, *tok, system, variant)) {
          if (p.ids.empty() || p.where.empty()) std::abort();
          g4::fuzz::expect_g4_errors_only([&] { g4::rl::check_prompt_fields("countdown", p.extra, p.where); });
        }
      });
  return 0;
}

// An HTTP request body as `g4 serve` reads it (parse_json with the server's size limit, then
// serve::parse_request) for /v1/completions, /v1/chat/completions and a line of a prompts file,
// each against three models: a tokenizer with Gemma 4's chat tokens and a short context (the
// small chat template), the same tokenizer with no known context (the large template), and no
// tokenizer. A request it accepts must also be one the engine accepts (Engine::submit's checks),
// so that a client's mistake is always a 400 naming the field and never an engine error.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "fuzz_common.h"
#include "io/hf_config.h"
#include "io/hf_tokenizer.h"
#include "io/json_input.h"
#include "serve/request.h"

namespace {

using g4::serve::Api;
using g4::serve::ModelInfo;

// The test tokenizer (tests/data/tokenizers/plain.json: BPE, no byte fallback, <pad> <eos> <bos>
// <unk>) with the turn and channel markers the chat template writes, as special added tokens.
const g4::io::Tokenizer& tokenizer() {
  static const std::unique_ptr<g4::io::Tokenizer> tok = [] {
    nlohmann::json doc = g4::io::read_json_file(G4_FUZZ_TOKENIZER, "tokenizer", g4::io::kMaxTokenizerBytes);
    int64_t next = static_cast<int64_t>(doc["model"]["vocab"].size());
    for (const char* t : {"<|turn>", "<turn|>", "<|channel>", "<channel|>"})
      doc["added_tokens"].push_back({{"id", next++}, {"content", t}, {"normalized", false}, {"special", true}});
    auto t = std::make_unique<g4::io::HfTokenizer>(doc, G4_FUZZ_TOKENIZER);
    t->bos_id = *t->token_to_id("<bos>");
    t->eos_id = *t->token_to_id("<eos>");
    t->pad_id = *t->token_to_id("<pad>");
    return t;
  }();
  return *tok;
}

std::vector<ModelInfo> models() {
  // An E2B-like config (per-layer inputs: the small template) with embedding rows past the
  // tokenizer's ids, as Gemma's have.
  g4::io::ModelConfig small;
  small.vocab_size = tokenizer().vocab_size() + 8;
  small.max_position_embeddings = 96;
  small.hidden_size_per_layer_input = 8;
  g4::io::ModelConfig large = small;
  large.max_position_embeddings = 0;
  large.hidden_size_per_layer_input = 0;
  return {g4::serve::model_info(small, &tokenizer()), g4::serve::model_info(large, &tokenizer()),
          g4::serve::model_info(small, nullptr)};
}

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "parse_request accepted a request the engine refuses: %s\n", what);
  std::abort();
}

// Engine::submit's checks (generate/engine.cpp) and gen::validate's ranges, on what parse_request
// returned.
void check_accepted(const g4::serve::ParsedRequest& p, const ModelInfo& m) {
  const g4::gen::RequestOptions& o = p.request.options;
  const auto in_vocab = [&](int64_t id) { return id >= 0 && id < m.vocab_size; };
  const int64_t len = static_cast<int64_t>(p.request.prompt.size());
  if (len == 0) broken("empty prompt");
  for (int64_t id : p.request.prompt)
    if (!in_vocab(id)) broken("prompt id outside the vocabulary");
  for (int64_t id : o.stop_ids)
    if (!in_vocab(id)) broken("stop id outside the vocabulary");
  for (const std::string& s : o.stop_strings)
    if (s.empty() || !m.tokenizer) broken("empty stop string, or one without a tokenizer");
  if (o.max_tokens < 1) broken("max_tokens < 1");
  if (m.context_len > 0 && (len >= m.context_len || o.max_tokens > m.context_len - len))
    broken("prompt + max_tokens past the context");
  if (o.n < 1 || o.n > 128) broken("n outside [1, 128]");
  if (o.logprobs < -1 || o.logprobs > g4::gen::kMaxTopLogprobs) broken("logprobs outside [-1, 64]");
  const g4::gen::SamplingParams& s = o.sampling;
  if (!(s.temperature >= 0 && s.temperature <= 100) || s.top_k < 0 || !(s.top_p > 0 && s.top_p <= 1) ||
      !(s.min_p >= 0 && s.min_p <= 1))
    broken("sampling parameters outside their ranges");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<ModelInfo> infos = models();
  std::optional<nlohmann::json> body;
  g4::fuzz::expect_g4_errors_only([&] {  // the server's body limit (serve/server.cpp)
    body = g4::io::parse_json(g4::fuzz::as_view(data, size), "the request body", 64 * g4::io::kMiB);
  });
  if (!body) return 0;  // not JSON: the server answers 400 before parse_request
  for (const Api api : {Api::Completions, Api::Chat, Api::File}) {
    g4::serve::Defaults defaults = g4::serve::api_defaults(api);
    if (api == Api::File) defaults.random_seed = false;  // as `g4 generate --prompts` reads lines
    for (const ModelInfo& m : infos)
      g4::fuzz::expect_g4_errors_only([&] { check_accepted(g4::serve::parse_request(*body, api, m, defaults), m); });
  }
  return 0;
}

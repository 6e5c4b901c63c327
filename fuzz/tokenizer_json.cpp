// tokenizer.json: loaded with the limits HfTokenizer::load applies, then used: encode a few texts
// (special tokens, bytes outside the vocabulary, the input itself) and decode what came out and
// every id of a small vocabulary.
#include <algorithm>

#include "fuzz_common.h"
#include "io/hf_tokenizer.h"
#include "io/json_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::fuzz::expect_g4_errors_only([&] {
    const std::string source = "fuzz/tokenizer.json";
    const auto doc = g4::io::parse_json(g4::fuzz::as_view(data, size), "tokenizer " + source,
                                        g4::io::kMaxTokenizerBytes);
    const g4::io::HfTokenizer tok(doc, source);
    const std::string texts[] = {"", "Hello world", " <bos>a\n\n b\xC3\xA9\xF0\x9F\x98\x80 \xFF", "aaaaaaaa",
                                 std::string(g4::fuzz::as_view(data, std::min<size_t>(size, 256)))};
    for (const std::string& t : texts) {
      const std::vector<int32_t> ids = tok.encode(t);
      (void)tok.decode(ids);
      (void)tok.decode(ids, true);
    }
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(tok.vocab_size(), 512));
    for (int32_t id = 0; id < n; ++id) {  // ids a vocabulary leaves unused are errors
      g4::fuzz::expect_g4_errors_only([&] { (void)tok.token_to_id(tok.id_to_token(id)); });
      g4::fuzz::expect_g4_errors_only([&] { (void)tok.decode({id}); });
    }
    g4::fuzz::expect_g4_errors_only([&] { (void)tok.decode({-1}); });
    g4::fuzz::expect_g4_errors_only([&] { (void)tok.decode({n + 1000}); });
  });
  return 0;
}

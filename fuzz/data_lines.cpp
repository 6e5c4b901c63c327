// A training-data file (JSONL text or chat lines, or plain text) read in every format, tokenised
// by a byte tokenizer (the reader, not the tokenizer, is under test) and packed into rows.
#include "data/dataset.h"
#include "fuzz_common.h"

namespace {

// One id per byte, plus the special ids the chat template's strings would need: none, so chat
// markup is tokenised as bytes too.
class ByteTokenizer : public g4::io::Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(3 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool) const override {
    std::string s;
    for (int32_t id : ids) s += static_cast<char>(id - 3);
    return s;
  }
  int64_t vocab_size() const override { return 259; }
  std::optional<int32_t> token_to_id(const std::string&) const override { return std::nullopt; }
  std::string id_to_token(int32_t id) const override { return std::string(1, static_cast<char>(id - 3)); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ByteTokenizer tok;
  const auto bytes = g4::fuzz::as_view(data, size);
  const std::string jsonl = g4::fuzz::write_scratch("data.jsonl", bytes);
  const std::string text = g4::fuzz::write_scratch("data.txt", bytes);
  for (const char* format : {"auto", "jsonl", "chat", "text"}) {
    g4::fuzz::expect_g4_errors_only([&] {
      g4::data::DataOptions opt;
      opt.files = {std::string(format) == "text" ? text : jsonl};
      opt.format = format;
      opt.seq_len = 16;
      std::vector<g4::data::Document> docs = g4::data::load_documents(opt, tok);
      docs = g4::data::fit_documents(std::move(docs), opt);
      (void)g4::data::pack_documents(docs, opt.seq_len, tok.pad_id);
    });
  }
  return 0;
}

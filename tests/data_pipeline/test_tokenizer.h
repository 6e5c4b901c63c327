// A tiny deterministic tokenizer for the data-pipeline tests, independent of the real ones: every
// byte b is id b + 10, and Gemma 4's special strings are single ids. Optionally it merges "\nS" into
// one token, to test a merge across the chat template's "model\n" | reply boundary.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/tokenizer.h"

namespace g4::test {

class ByteTokenizer : public io::Tokenizer {
 public:
  static constexpr int32_t kTurnOpen = 3, kTurnClose = 4, kMergedNewlineS = 266;
  struct Options {
    bool gemma4_specials = true;  // <|turn>, <turn|>, <|channel>, <channel|>
    bool merge_newline_s = false;
  };
  ByteTokenizer() : ByteTokenizer(Options{}) {}
  explicit ByteTokenizer(Options o) : opt_(o) {
    specials_ = {{"<pad>", 0}, {"<eos>", 1}, {"<bos>", 2}};
    if (o.gemma4_specials) {
      specials_.insert(specials_.end(), {{"<|turn>", kTurnOpen}, {"<turn|>", kTurnClose}, {"<|channel>", 5},
                                         {"<channel|>", 6}});
    }
  }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < text.size();) {
      if (const auto s = special_at(text, i)) {
        ids.push_back(s->second);
        i += s->first.size();
      } else if (opt_.merge_newline_s && text.compare(i, 2, "\nS") == 0) {
        ids.push_back(kMergedNewlineS);
        i += 2;
      } else {
        ids.push_back(static_cast<unsigned char>(text[i++]) + 10);
      }
    }
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id >= 10 && id < 266) {
        out += static_cast<char>(id - 10);
      } else if (id == kMergedNewlineS) {
        out += "\nS";
      } else if (!skip_special) {
        out += id_to_token(id);
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return 267; }
  std::optional<int32_t> token_to_id(const std::string& token) const override {
    for (const auto& [s, id] : specials_)
      if (s == token) return id;
    if (token.size() == 1) return static_cast<unsigned char>(token[0]) + 10;
    return std::nullopt;
  }
  std::string id_to_token(int32_t id) const override {
    for (const auto& [s, sid] : specials_)
      if (sid == id) return s;
    if (id == kMergedNewlineS) return "\nS";
    return id >= 10 && id < 266 ? std::string(1, static_cast<char>(id - 10)) : "<unused>";
  }

 private:
  std::optional<std::pair<std::string, int32_t>> special_at(const std::string& text, size_t i) const {
    for (const auto& s : specials_)
      if (text.compare(i, s.first.size(), s.first) == 0) return s;
    return std::nullopt;
  }
  Options opt_;
  std::vector<std::pair<std::string, int32_t>> specials_;
};

}  // namespace g4::test

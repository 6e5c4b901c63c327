// Hugging Face tokenizer.json, as Gemma checkpoints ship it: a BPE model with byte fallback,
// added (special) tokens matched in the text first, a normalizer of Replace/Prepend steps, an
// optional Split pre-tokenizer and a Replace/ByteFallback/Fuse/Strip decoder. Every other
// component type (ByteLevel, WordPiece, Unigram, regex patterns, ...) is refused when loading,
// with the file and the JSON path of the component in the message, rather than tokenizing
// differently from Hugging Face's `tokenizers`.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/tokenizer.h"

namespace g4::io {

class HfTokenizer : public Tokenizer {
 public:
  // `source` names the file in error messages.
  HfTokenizer(const nlohmann::json& doc, const std::string& source);
  static std::unique_ptr<HfTokenizer> load(const std::string& tokenizer_json_path);

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  // One past the largest id (vocab ids and added-token ids), i.e. the embedding rows needed.
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int32_t> token_to_id(const std::string& token) const override;
  std::string id_to_token(int32_t id) const override;

  // The pipeline pieces, as read from the file.
  struct NormalizeStep {  // normalizer: Replace (pattern -> content) or Prepend (content)
    bool prepend = false;
    std::string pattern, content;
  };
  struct SplitStep {  // pre_tokenizer Split on a literal string
    enum Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
    std::string pattern;
    Behavior behavior = kRemoved;
  };
  struct DecodeStep {
    enum Kind { kReplace, kByteFallback, kFuse, kStrip } kind = kFuse;
    std::string pattern, content;  // Replace: pattern -> content; Strip: the character
    int start = 0, stop = 0;       // Strip: at most this many leading / trailing characters
  };

 private:
  // Hashing that accepts string_view lookups, so encoding does not allocate a key per character.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Vocab = std::unordered_map<std::string, int32_t, Hash, std::equal_to<>>;
  struct Merge {
    int32_t rank, merged_id;
  };
  // Byte trie over added-token strings, for leftmost-longest matching as `tokenizers` does.
  class Trie {
   public:
    void insert(std::string_view s, int32_t id);
    // Length of the longest token that starts at text[pos] (0 if none); its id goes to *id.
    size_t longest_at(std::string_view text, size_t pos, int32_t* id) const;
    bool empty() const { return ids_.size() == 1; }

   private:
    std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child node
    std::vector<int32_t> ids_{-1};                 // per node: token id ending there, or -1
  };

  std::string normalize(std::string text) const;
  std::vector<std::string> pre_tokenize(const std::string& normalized) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  // Encodes text that contains no raw-matched added token.
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
  enum Kind : uint8_t { kUnused, kNormal, kSpecial };  // what an id is; kSpecial: added, "special": true
  void add_token(const std::string& token, int32_t id, Kind kind);
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  std::string source_;
  Vocab vocab_;  // model.vocab: what BPE sees
  Vocab added_;  // added_tokens: content -> id
  // By id: the vocab token, or the added token (normalized, for "normalized": true ones).
  std::vector<std::string> id_to_token_;
  std::vector<Kind> kind_;                      // by id
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  int32_t byte_ids_[256];                       // id of "<0xNN>", -1 where absent or without byte fallback
  bool fuse_unk_ = false, ignore_merges_ = false;
  std::optional<int32_t> unk_id_;
  Trie raw_added_, normalized_added_;  // added tokens with "normalized": false / true
  std::vector<NormalizeStep> normalizer_;
  std::vector<SplitStep> pre_tokenizer_;
  std::optional<std::vector<DecodeStep>> decoder_;  // nullopt: no decoder, tokens joined by spaces
};

}  // namespace g4::io

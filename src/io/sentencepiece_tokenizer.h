// SentencePiece tokenizer.model through libsentencepiece, the library that defines the format.
// Control symbols (<bos>, <eos>, <pad>, ...) are never produced by SentencePiece from text; like
// Hugging Face's special tokens, g4 matches their strings in the text first and encodes the
// pieces between them with SentencePiece. User-defined symbols (<start_of_turn>, ...) are
// matched by SentencePiece itself. Decoding is SentencePiece's own (<unk> reads " ⁇ "), apart
// from the control symbols, which are written as their strings unless skipped.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace g4::io {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads a .model file; bos/eos/pad ids come from the model's trainer settings when it has them.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  int64_t vocab_size() const override;
  std::optional<int32_t> token_to_id(const std::string& token) const override;
  std::string id_to_token(int32_t id) const override;

 private:
  void check_id(int32_t id) const;

  std::string source_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::pair<std::string, int32_t>> controls_;  // control pieces, longest first
};

}  // namespace g4::io

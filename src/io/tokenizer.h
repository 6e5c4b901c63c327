// Tokenizers Gemma checkpoints ship: a SentencePiece model (tokenizer.model, through
// libsentencepiece) and a Hugging Face tokenizer.json (BPE with byte fallback, read by g4's own
// code). Both encode exactly as Hugging Face's tokenizers do.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace g4::io {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text -> ids, without special tokens (no BOS/EOS added). Special-token strings that appear in
  // the text (e.g. "<start_of_turn>") are encoded as their single special id.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Ids -> text; special tokens are rendered as their strings unless skip_special. An id outside
  // the vocabulary is an error (Hugging Face would drop it silently).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  virtual int64_t vocab_size() const = 0;
  // Id of a token string (special or normal), if the vocabulary has it.
  virtual std::optional<int32_t> token_to_id(const std::string& token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;

  // Set by load_tokenizer; Gemma's ids unless the tokenizer says otherwise.
  int32_t bos_id = 2, eos_id = 1, pad_id = 0;
};

// Loads tokenizer.json (preferred) or tokenizer.model from a model directory, or a file path
// (.json or .model). bos/eos/pad ids come from the tokenizer (<bos>/<eos>/<pad> tokens, or the
// SentencePiece model's settings), then tokenizer_config.json, then special_tokens_map.json next
// to the file, each overriding the one before (as in transformers). Errors name the file and what
// in it is not supported.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The files of a tokenizer folder that load_tokenizer reads, copied beside a model g4 writes.
inline const std::vector<std::string> kTokenizerFiles = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                         "special_tokens_map.json"};

}  // namespace g4::io

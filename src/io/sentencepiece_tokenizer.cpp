// SentencePiece through libsentencepiece; g4 adds only the handling of control symbols.
#include "io/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "core/error.h"
#include "io/json_input.h"
#include "io/utf8.h"

namespace g4::io {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : source_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  // Read by g4 (regular files only, size-limited), so a FIFO or directory is refused, not waited on.
  const auto status = sp_->LoadFromSerializedProto(read_regular_file(model_path, "tokenizer", kMaxTokenizerBytes));
  G4_CHECK(status.ok(), "tokenizer ", model_path, " is not a valid SentencePiece model (", status.ToString(), ")");
  for (int id = 0; id < sp_->GetPieceSize(); ++id)
    if (sp_->IsControl(id)) controls_.emplace_back(sp_->IdToPiece(id), id);
  std::stable_sort(controls_.begin(), controls_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  if (sp_->bos_id() >= 0) bos_id = sp_->bos_id();
  if (sp_->eos_id() >= 0) eos_id = sp_->eos_id();
  if (sp_->pad_id() >= 0) pad_id = sp_->pad_id();
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string& text) const {
  const size_t bad = utf8_error_offset(text);
  G4_CHECK(bad == text.size(), "tokenizer ", source_, ": text to encode is not valid UTF-8 (byte offset ", bad, ")");
  std::vector<int32_t> out;
  const auto encode_piece = [&](size_t begin, size_t end) {
    if (begin == end) return;
    std::vector<int> ids;
    const auto status = sp_->Encode(std::string_view(text).substr(begin, end - begin), &ids);
    G4_CHECK(status.ok(), "tokenizer ", source_, ": SentencePiece failed to encode (", status.ToString(), ")");
    out.insert(out.end(), ids.begin(), ids.end());
  };
  // Leftmost-longest match of control pieces (few: <pad>, <eos>, <bos>, ...).
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    auto hit = std::find_if(controls_.begin(), controls_.end(),
                            [&](const auto& c) { return text.compare(pos, c.first.size(), c.first) == 0; });
    if (hit == controls_.end()) {
      ++pos;
      continue;
    }
    encode_piece(start, pos);
    out.push_back(hit->second);
    pos += hit->first.size();
    start = pos;
  }
  encode_piece(start, text.size());
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  // SentencePiece renders control ids as nothing; g4, like Hugging Face, writes their strings
  // unless skip_special. Runs of other ids are decoded by SentencePiece as a whole, so that byte
  // pieces of one character are joined.
  std::string text;
  std::vector<int> run;
  const auto flush = [&] {
    std::string piece;
    const auto status = sp_->Decode(run, &piece);
    G4_CHECK(status.ok(), "tokenizer ", source_, ": SentencePiece failed to decode (", status.ToString(), ")");
    text += piece;
    run.clear();
  };
  for (int32_t id : ids) {
    check_id(id);
    if (!sp_->IsControl(id)) {
      run.push_back(id);
    } else if (!skip_special) {
      flush();
      text += sp_->IdToPiece(id);
    }
  }
  flush();
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}

std::optional<int32_t> SentencePieceTokenizer::token_to_id(const std::string& token) const {
  const int id = sp_->PieceToId(token);  // unknown pieces give unk_id
  if (id < 0 || (id == sp_->unk_id() && sp_->IdToPiece(id) != token)) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::id_to_token(int32_t id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

void SentencePieceTokenizer::check_id(int32_t id) const {
  G4_CHECK(id >= 0 && id < sp_->GetPieceSize(), "tokenizer ", source_, ": token id ", id, " is not in the vocabulary (",
           sp_->GetPieceSize(), " ids)");
}

}  // namespace g4::io

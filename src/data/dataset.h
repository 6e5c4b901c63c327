// Training data: documents read from plain text, JSONL `text` or JSONL chat `messages`, tokenised,
// packed into fixed-length rows whose documents never attend to each other, shuffled by seed, and
// split into training and validation sets. The loader's position is a small state that
// checkpoints save, so a resumed run sees exactly the batches the uninterrupted run would.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/tokenizer.h"

namespace g4::data {

// One tokenised document: ids and, per id, whether the loss counts it (assistant turns only
// for chat data; every token for plain text).
struct Document {
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;  // same length as ids
};

struct DataOptions {
  std::vector<std::string> files;  // .txt, .jsonl (text or messages), several allowed
  std::string format = "auto";     // "auto" | "text" | "jsonl" | "chat"
  std::string text_split = "paragraph";  // plain text: "paragraph" (blank lines) | "line" | "file"
  int64_t seq_len = 256;           // row length
  bool add_bos = true, add_eos = true;
  std::string overlong = "split";  // documents longer than seq_len: "split" | "truncate" | "error"
  double validation_fraction = 0.05;  // of documents, chosen by seed
  uint64_t seed = 0;
};

// A batch of packed rows: ids, labels (-100 where not trained and at document ends, as consumed
// by the model's shift-left loss) and per-document position ids (restart at 0).
struct Batch {
  Tensor input_ids;     // [B, S] i64
  Tensor labels;        // [B, S] i64
  Tensor position_ids;  // [B, S] i64
  int64_t trained_tokens = 0;
};

// Reads, tokenises and packs everything up front (the corpora g4 trains on from the CPU are
// small; the GPU backend streams).
class PackedDataset {
 public:
  PackedDataset(const DataOptions& opt, const io::Tokenizer& tok);

  int64_t train_rows() const;
  int64_t validation_rows() const;
  // Rows of an epoch in seeded shuffled order; batch `index` of the infinite stream of epochs.
  Batch train_batch(int64_t batch_size, int64_t index) const;
  // Validation batches in fixed order; `count` of them (all when count <= 0 or too large).
  std::vector<Batch> validation_batches(int64_t batch_size, int64_t count = 0) const;
  // Statistics for logs: documents, tokens, unigram entropy of the training tokens (nats).
  int64_t documents() const;
  int64_t tokens() const;
  double unigram_entropy() const;
};

// The Gemma 4 chat template: renders {role, content} messages exactly as the tokenizer config's
// template does (byte for byte), marking which characters belong to assistant replies.
struct ChatMessage {
  std::string role, content;
};
std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt = false);

}  // namespace g4::data

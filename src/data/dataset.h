// Training data: documents read from plain text, JSONL `text` or JSONL chat `messages`, tokenised,
// packed into fixed-length rows whose documents never attend to each other, shuffled by seed, and
// split into training and validation sets. The loader's position is a small state that
// checkpoints save, so a resumed run sees exactly the batches the uninterrupted run would.
//
// The pipeline, in order (each step is a function below, so tools and tests can run it piecewise):
//  1. load_documents: every file is read (format per DataOptions::format, "auto" by extension and
//     the first JSON line's keys) and each document tokenised. Plain text gets BOS/EOS per
//     add_bos/add_eos and every token is trained; chat is rendered with the Gemma 4 template (which
//     writes its own <bos>, so add_bos/add_eos do not apply) and only assistant replies and the
//     <turn|> closing each reply are trained. Empty documents, and conversations without an
//     assistant reply (nothing to learn), are skipped. A conversation with image, audio or video parts
//     is processed as Gemma 4's processor does it (io/image_processor.h, io/audio_features.h,
//     io/video_processor.h): its
//     placeholders expand to the soft-token counts (data/multimodal.h), which are never trained.
//     The counts come from the files' headers and lengths; the pixels and audio features are made
//     when a batch uses them (data/media.h), through a cache of media_cache_mb.
//  2. The validation split takes round(validation_fraction * documents) whole documents, chosen by
//     a permutation seeded by `seed` (at least one document always stays in training).
//  3. fit_documents: documents longer than seq_len are split into seq_len pieces (each its own
//     document, positions from 0), truncated to seq_len, or refused, per `overlong`; a multimodal
//     document longer than seq_len is always refused. A document or piece left with no trained
//     token after its first (a conversation cut before its reply) is dropped, with a note; no
//     trained training document at all is an error.
//  4. pack_documents: documents are placed whole into rows by best-fit decreasing (longest first,
//     each into the row whose free space fits it most tightly), as TRL's "bfd" packing does, so a
//     conversation is never cut from its prompt. Free space left in a row is padding.
//  5. Each epoch visits the training rows in a permutation seeded by (seed, epoch).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/media.h"
#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io/tokenizer.h"

namespace g4::data {

// A pixel value from its uint8 code as the image processor computes it: in f32, times float(1/255).
inline float pixel_value(uint8_t code) { return io::scaled_pixel(code, io::PixelScale::MultiplyByInverse); }

// One tokenised document: ids and, per id, whether the loss counts it (assistant turns only
// for chat data; every token for plain text).
struct Document {
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;  // same length as ids
  std::string source;            // "file:line" where the document starts, for messages
  // Multimodal documents only (empty / null for text): per id 0 text, 1 image, 2 video, 3 audio soft token
  // (mm_token_type_ids), and what rebuilds the media whose soft tokens the placeholders stand for
  // (data/media.h: processed when a batch uses them). Such a document is never split or
  // truncated: its placeholders must stay with their media.
  std::vector<uint8_t> mm_types{};
  std::shared_ptr<const DocumentMedia> media{};
};

struct DataOptions {
  std::vector<std::string> files;  // .txt, .jsonl (text or messages), several allowed
  std::string format = "auto";     // "auto" | "text" | "jsonl" | "chat"
  std::string text_split = "paragraph";  // plain text: "paragraph" (blank lines) | "line" | "file"
  int64_t seq_len = 256;           // row length
  bool add_bos = true, add_eos = true;  // plain-text documents only (chat has the template's)
  std::string overlong = "split";  // documents longer than seq_len: "split" | "truncate" | "error"
  double validation_fraction = 0.05;  // of documents, chosen by seed
  uint64_t seed = 0;
  // Images of chat data: the processor's options (set from the model directory by the caller) and
  // a soft-token budget over them (0: keep image_processor.max_soft_tokens).
  io::ImageProcessorOptions image_processor{};
  int64_t max_soft_tokens = 0;
  // Videos of chat data: the video processor's options (set from the model directory by the caller;
  // max_soft_tokens above does not apply to them).
  io::VideoProcessorOptions video_processor{};
  // Processed media (pixel codes, audio features) kept between batches, in MiB; 0 processes a
  // document's media each time a batch uses them. Batches are the same either way.
  int64_t media_cache_mb = 256;
  // How the caller's user sets seq_len and max_soft_tokens, for errors that advise changing them:
  // the recipe keys by default; `g4 eval` names its flag (and has no soft-token budget: empty).
  std::string seq_len_name = "data.seq_len", max_soft_tokens_name = "data.max_soft_tokens";
};

// Throws g4::Error naming the option whose value is not one of those above.
void check_options(const DataOptions& opt);

// A batch of packed rows: ids, labels (-100 where not trained and at document ends, as consumed
// by the model's shift-left loss) and per-document position ids (restart at 0).
// Multimodal rows add the media of their documents, under ForwardInputs' names, in row-major
// order of the placeholders; all of them are undefined when the batch has no media.
struct Batch {
  Tensor input_ids;     // [B, S] i64
  Tensor labels;        // [B, S] i64
  Tensor position_ids;  // [B, S] i64
  int64_t trained_tokens = 0;
  Tensor mm_token_type_ids{};                      // [B, S] i64
  Tensor pixel_values{}, image_position_ids{};     // [images, max_patches, 3*p*p], [images, max_patches, 2]
  Tensor input_features{}, input_features_mask{};  // [clips, max frames, 128], [clips, max frames]
  // [videos, frames, max_patches, 3*p*p] and [videos, frames, max_patches, 2]. Videos with different
  // frame counts come as one [1, all frames, ...]: the model runs videos x frames as one list of
  // frames, so the soft tokens are the same.
  Tensor pixel_values_videos{}, video_position_ids{};
};

// Rows of seq_len tokens, row-major. labels[t] is ids[t] where trained, else -100; the first token
// of every document is -100 too, because the model's loss makes label[t+1] the target of position t
// and a document's first token must not be learned from the end of the previous one. Padding
// (pad_id, label -100) fills the end of a row as one more document, its positions from 0.
struct PackedRows {
  int64_t seq_len = 0;
  std::vector<int32_t> ids, labels, positions;
  // When some document has media: the token types of every position (padding 0) and, per row,
  // the media of its documents in the order they sit in the row. Empty otherwise.
  std::vector<uint8_t> mm_types;
  std::vector<std::vector<std::shared_ptr<const DocumentMedia>>> row_media;
  int64_t rows() const { return seq_len > 0 ? static_cast<int64_t>(ids.size()) / seq_len : 0; }
};

// Steps 1, 3 and 4 of the pipeline (see the top of this file); errors name the file and line.
std::vector<Document> load_documents(const DataOptions& opt, const io::Tokenizer& tok);
std::vector<Document> fit_documents(std::vector<Document> docs, const DataOptions& opt);
PackedRows pack_documents(const std::vector<Document>& docs, int64_t seq_len, int32_t pad_id);

// A video part of a chat content list: {"type": "video", "frames": [FILE, ...], "fps": F} or
// {"type": "video", "path": DIR, "fps": F} (DIR's frame files sorted by name; fps, the frames' rate,
// may be left out: 24 is used), paths relative to `folder`. Every frame must exist now, so that a
// bad part is reported at once; errors start with `where`. (Also read by g4 generate's prompts files.)
io::VideoFrames read_video_part(const nlohmann::json& part, const std::string& where,
                                const std::filesystem::path& folder);
// The "fps" of a video part (or of a `g4 serve` request's video_url): a positive number, or 0 when
// absent or null (the processor then takes 24); anything else is an error starting with `where`.
double read_video_fps(const nlohmann::json& part, const std::string& where);

// Reads, tokenises and packs everything up front (the corpora g4 trains on from the CPU are
// small; the GPU backend streams).
class PackedDataset {
 public:
  PackedDataset(const DataOptions& opt, const io::Tokenizer& tok);

  int64_t train_rows() const;
  int64_t validation_rows() const;
  // Images, audio clips and videos of all documents (both splits).
  int64_t images() const { return images_; }
  int64_t audio_clips() const { return audio_clips_; }
  int64_t videos() const { return videos_; }
  // Rows of an epoch in seeded shuffled order; batch `index` of the infinite stream of epochs.
  // Batches run straight across epoch ends (row k of the stream is row k % R of epoch k / R), so
  // the batch is a pure function of (data, options, batch_size, index).
  Batch train_batch(int64_t batch_size, int64_t index) const;
  // Validation batches in fixed order; `count` of them (all when count <= 0 or too large). The
  // last one holds the remaining rows when they do not fill batch_size.
  std::vector<Batch> validation_batches(int64_t batch_size, int64_t count = 0) const;
  // Statistics for logs: documents and tokens kept (both splits; tokens after `overlong`, without
  // padding), and the unigram entropy (nats) of the trained target tokens of the training rows:
  // the loss of a model that knows only token frequencies, for comparison with the real loss.
  int64_t documents() const;
  int64_t tokens() const;
  double unigram_entropy() const;
  // A hash of both splits' rows (ids, labels, positions, token types, media hashes) and the shuffle seed: ranks of one
  // job compare it to find out that they read different data (a different copy of a file, say).
  uint64_t fingerprint() const;

 private:
  Batch make_batch(const PackedRows& rows, const std::vector<int64_t>& row_order) const;
  void add_media(const PackedRows& rows, const std::vector<int64_t>& row_order, Batch& batch) const;
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  uint64_t seed_ = 0;
  PackedRows train_, validation_;
  int64_t documents_ = 0, tokens_ = 0;
  double unigram_entropy_ = 0.0;
  int64_t images_ = 0, audio_clips_ = 0, videos_ = 0;
  // The documents' processed media, shared by the copies of this dataset (it serves the media of
  // the rows above, which live as long as it does).
  std::shared_ptr<MediaCache> media_cache_;
};

// The Gemma 4 chat template: renders {role, content} messages exactly as the tokenizer config's
// template does (byte for byte), marking which characters belong to assistant replies.
// Roles: "system", "user", "assistant" (rendered as "model"); "developer" only as the first message
// (the template treats it as the system prompt). Anything else throws g4::Error naming the message.
// A message's content is either the string `content` or, when `parts` is not empty, a list of
// parts as the template renders them: text trimmed (an assistant's thoughts stripped),
// "\n\n<|image|>\n\n" per image, "\n\n<|video|>\n\n" per video and "<|audio|>" per audio clip (the
// placeholders the processor expands, data/multimodal.h). The system message takes a string only.
struct ChatPart {
  enum class Kind { Text, Image, Audio, Video } kind = Kind::Text;
  std::string text;  // Text parts only
};
struct ChatMessage {
  std::string role, content;
  std::vector<ChatPart> parts{};
};

// Gemma 4 checkpoints ship two templates that differ only in the generation prompt (thinking off):
// E2B/E4B end it at "<|turn>model\n"; 26B-A4B and 31B add an empty thought channel after it.
enum class ChatVariant { Small, Large };
// The template a model's checkpoint ships: the small models are those with per-layer inputs.
inline ChatVariant chat_variant_for(int64_t hidden_size_per_layer_input) {
  return hidden_size_per_layer_input > 0 ? ChatVariant::Small : ChatVariant::Large;
}
// The id that closes a model turn ("<turn|>"), where the tokenizer has it as a token: generation
// of a chat reply stops there, as at the model's eos ids.
inline std::optional<int32_t> chat_end_of_turn_id(const io::Tokenizer& tok) { return tok.token_to_id("<turn|>"); }

// One rendered conversation; replies[i] locates assistant message i's turn: `header` is where
// "model\n" starts (right after <|turn>), [begin, end) is the reply and its closing <turn|>.
struct RenderedChat {
  struct Reply {
    size_t header = 0, begin = 0, end = 0;
  };
  std::string text;
  std::vector<Reply> replies;
};

RenderedChat render_chat_marked(const std::vector<ChatMessage>& messages, bool add_generation_prompt = false,
                                ChatVariant variant = ChatVariant::Small);
std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt = false,
                        ChatVariant variant = ChatVariant::Small);

// "" when `tok` encodes each of the chat template's special tokens ("<bos>", "<|turn>", "<turn|>") as
// that one token, else what is wrong ("has no '<|turn>' token"): such a tokenizer spells the template
// out character by character. Training data refuses it (chat_document); generation warns once per
// call of warn_chat_tokenizer, naming `whose` tokenizer, and goes on as transformers does.
std::string chat_tokenizer_problem(const io::Tokenizer& tok);
void warn_chat_tokenizer(const io::Tokenizer& tok, const std::string& whose);

// Tokenises a rendered conversation as Hugging Face tokenises the whole string, marking trained the
// tokens that overlap a reply (so a token merged across "model\n" and the reply counts as trained).
Document chat_document(const RenderedChat& chat, const io::Tokenizer& tok);

}  // namespace g4::data

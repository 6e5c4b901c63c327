// The text side of Gemma 4's processor (transformers' Gemma4Processor): each image placeholder of a
// rendered prompt becomes "<|image>" + "<|image|>" x n + "<image|>", each audio placeholder
// "<|audio>" + "<|audio|>" x m + "<audio|>" and each video placeholder, per sampled frame,
// "mm:ss <|image>" + "<|video|>" x k + "<image|>", the frames joined by " " (n, m, k the soft-token
// counts the image processor, the audio feature extractor and the video processor computed:
// io/image_processor.h, io/audio_features.h, io/video_processor.h); the expanded text is tokenised
// whole, and mm_token_type_ids marks the soft tokens. MULTIMODAL.md 4.1-4.2 and 5.3;
// docs/multimodal.md "Images" and "Video".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/image.h"
#include "io/image_processor.h"
#include "io/tokenizer.h"

namespace g4::data {

inline constexpr const char* kImagePlaceholder = "<|image|>";
inline constexpr const char* kAudioPlaceholder = "<|audio|>";
inline constexpr const char* kVideoPlaceholder = "<|video|>";

// What one video's placeholder expands to: a block of soft tokens per sampled frame, after the
// frame's timestamp.
struct VideoPlaceholder {
  int64_t soft_tokens_per_frame = 0;
  std::vector<std::string> timestamps;  // "mm:ss", one per sampled frame
};

// The soft-token counts of a prompt's media, each kind in placeholder order.
struct MediaSoftTokens {
  std::vector<int64_t> images, audio;
  std::vector<VideoPlaceholder> videos{};
};

// The i-th "<|image|>" of `text` (reading order) takes media.images[i], likewise for audio and
// videos. The number of placeholders must equal the number of counts (transformers checks it too);
// the error says which differs. `where` names the prompt in errors. `offsets` (optional) are byte
// offsets into `text`, none inside a placeholder; they are moved to the same places of the result.
std::string expand_media(const std::string& text, const MediaSoftTokens& media, const std::string& where = "prompt",
                         std::vector<size_t>* offsets = nullptr);

struct MultimodalIds {
  std::vector<int32_t> input_ids;
  std::vector<int64_t> mm_token_type_ids;  // 1 image soft token, 2 video, 3 audio, 0 otherwise
};

// expand_media, then the tokenizer on the whole text (no special tokens added: a
// rendered chat already starts with <bos>), then the token types. The tokenizer must know the
// placeholder and boundary tokens of the media present.
MultimodalIds tokenize_multimodal(const std::string& text, const MediaSoftTokens& media, const io::Tokenizer& tok,
                                  const std::string& where = "prompt");

// Throws g4::Error naming `where` when the tokenizer lacks a placeholder or boundary token of the
// media present (a Gemma 4 multimodal tokenizer has them all; video frames use the image bounds).
void check_media_tokens(const io::Tokenizer& tok, bool images, bool audio, const std::string& where,
                        bool videos = false);

// One prompt's images and 16 kHz clips through Gemma 4's processors, as the processor prepares
// that prompt alone (io::process_images with `opt`, io::extract_audio_features), under
// transformers' names; tensors undefined for a medium that is absent. `image_names` name the
// images in errors (may be empty).
struct PromptMedia {
  Tensor pixel_values, image_position_ids;
  Tensor input_features, input_features_mask;
  std::vector<int64_t> image_soft_tokens, audio_soft_tokens;
  std::vector<std::pair<int64_t, int64_t>> resized_hw;  // each image's size after the resize
};
PromptMedia process_prompt_media(const std::vector<io::RgbImage>& images, const std::vector<std::string>& image_names,
                                 const std::vector<std::vector<float>>& clips, const io::ImageProcessorOptions& opt);

// Throws g4::Error naming `where` when `text` holds, written out, a media token the tokenizer has as a
// special token: the placeholders <|image|>, <|audio|>, <|video|> (when `placeholders`) and the
// boundaries <|image>, <image|>, <|audio>, <audio|> (always). In training data media come only as
// content parts, which put these tokens themselves: written in the text, a placeholder with no
// medium behind it would train on the token's bare embedding where soft tokens belong, and a
// boundary would open a span the towers never fill.
void check_no_written_media_tokens(const std::string& text, const io::Tokenizer& tok, bool placeholders,
                                   const std::string& where);

// mm_token_type_ids for ids: the tokenizer's ids of "<|image|>", "<|video|>", "<|audio|>" give 1, 2, 3.
std::vector<int64_t> mm_token_types(const std::vector<int32_t>& ids, const io::Tokenizer& tok);

}  // namespace g4::data

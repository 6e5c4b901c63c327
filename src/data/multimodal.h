// The text side of Gemma 4's processor (transformers' Gemma4Processor): each image placeholder of a
// rendered prompt becomes "<|image>" + "<|image|>" x n + "<image|>" and each audio placeholder
// "<|audio>" + "<|audio|>" x m + "<audio|>", n and m the soft-token counts the image processor and
// the audio feature extractor computed (io/image_processor.h, io/audio_features.h); the expanded text
// is tokenised whole, and mm_token_type_ids marks the soft tokens. MULTIMODAL.md 4.1-4.2;
// docs/multimodal.md "Images".
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

// The i-th "<|image|>" of `text` (reading order) takes image_soft_tokens[i], likewise for audio.
// The number of placeholders must equal the number of counts (transformers checks it too); the
// error says which differs. `where` names the prompt in errors. `offsets` (optional) are byte
// offsets into `text`, none inside a placeholder; they are moved to the same places of the result.
std::string expand_media_placeholders(const std::string& text, const std::vector<int64_t>& image_soft_tokens,
                                      const std::vector<int64_t>& audio_soft_tokens,
                                      const std::string& where = "prompt", std::vector<size_t>* offsets = nullptr);

struct MultimodalIds {
  std::vector<int32_t> input_ids;
  std::vector<int64_t> mm_token_type_ids;  // 1 image soft token, 2 video, 3 audio, 0 otherwise
};

// expand_media_placeholders, then the tokenizer on the whole text (no special tokens added: a
// rendered chat already starts with <bos>), then the token types. The tokenizer must know the
// placeholder and boundary tokens of the media present.
MultimodalIds tokenize_multimodal(const std::string& text, const std::vector<int64_t>& image_soft_tokens,
                                  const std::vector<int64_t>& audio_soft_tokens, const io::Tokenizer& tok,
                                  const std::string& where = "prompt");

// Throws g4::Error naming `where` when the tokenizer lacks a placeholder or boundary token of the
// media present (a Gemma 4 multimodal tokenizer has them all).
void check_media_tokens(const io::Tokenizer& tok, bool images, bool audio, const std::string& where);

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

// mm_token_type_ids for ids: the tokenizer's ids of "<|image|>", "<|video|>", "<|audio|>" give 1, 2, 3.
std::vector<int64_t> mm_token_types(const std::vector<int32_t>& ids, const io::Tokenizer& tok);

}  // namespace g4::data

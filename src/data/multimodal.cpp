#include "data/multimodal.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "core/error.h"
#include "io/audio_features.h"

namespace g4::data {

namespace {

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

std::string repeat(const std::string& s, int64_t n) {
  std::string out;
  out.reserve(s.size() * size_t(n));
  for (int64_t i = 0; i < n; ++i) out += s;
  return out;
}

}  // namespace

std::string expand_media(const std::string& text, const MediaSoftTokens& media, const std::string& where,
                                      std::vector<size_t>* offsets) {
  const std::string image = kImagePlaceholder, audio = kAudioPlaceholder, video = kVideoPlaceholder;
  const size_t n_image = count_of(text, image), n_audio = count_of(text, audio), n_video = count_of(text, video);
  G4_CHECK(n_image == media.images.size(), where, " has ", n_image, " image placeholder(s) ", image, " for ",
           media.images.size(), " image(s): each image needs exactly one");
  G4_CHECK(n_audio == media.audio.size(), where, " has ", n_audio, " audio placeholder(s) ", audio, " for ",
           media.audio.size(), " audio clip(s): each clip needs exactly one");
  G4_CHECK(n_video == media.videos.size(), where, " has ", n_video, " video placeholder(s) ", video, " for ",
           media.videos.size(), " video(s): each video needs exactly one");
  for (int64_t n : media.images) G4_CHECK(n > 0, where, ": an image has ", n, " soft tokens");
  // transformers renders a clip of at most 160 samples as an empty <|audio><audio|> (its frames are
  // all invalid) and feeds the model nothing of it: a clip that silent is refused here instead.
  for (size_t i = 0; i < media.audio.size(); ++i)
    G4_CHECK(media.audio[i] > 0, where, ": audio clip ", i, " has ", media.audio[i],
             " soft tokens: a clip needs more than 160 samples (10 ms at 16 kHz) for one valid frame");
  for (const VideoPlaceholder& v : media.videos)
    G4_CHECK(v.soft_tokens_per_frame > 0 && !v.timestamps.empty(), where, ": a video has ", v.timestamps.size(),
             " frame(s) of ", v.soft_tokens_per_frame, " soft tokens");
  // One left-to-right scan; the placeholders cannot overlap each other.
  std::string out;
  std::vector<std::pair<size_t, size_t>> moved;  // (end of a placeholder in text, in out)
  size_t pos = 0, next_image = 0, next_audio = 0, next_video = 0;
  while (pos < text.size()) {
    const size_t i = text.find(image, pos), a = text.find(audio, pos), v = text.find(video, pos);
    const size_t at = std::min({i, a, v});
    if (at == std::string::npos) break;
    out.append(text, pos, at - pos);
    if (at == i) {
      out += "<|image>" + repeat(image, media.images[next_image++]) + "<image|>";
      pos = at + image.size();
    } else if (at == a) {
      out += "<|audio>" + repeat(audio, media.audio[next_audio++]) + "<audio|>";
      pos = at + audio.size();
    } else {
      // replace_video_token: " ".join(f"{mm:ss} <|image>{<|video|> * n}<image|>" per frame).
      const VideoPlaceholder& vp = media.videos[next_video++];
      const std::string frame = "<|image>" + repeat(video, vp.soft_tokens_per_frame) + "<image|>";
      for (size_t f = 0; f < vp.timestamps.size(); ++f) out += (f ? " " : "") + vp.timestamps[f] + " " + frame;
      pos = at + video.size();
    }
    moved.emplace_back(pos, out.size());
  }
  out.append(text, pos, std::string::npos);
  if (offsets) {
    for (size_t& o : *offsets) {
      G4_CHECK(o <= text.size(), where, ": offset ", o, " is past the end of the text (", text.size(), " bytes)");
      // The last placeholder ending at or before o decides the shift.
      const auto after = std::upper_bound(moved.begin(), moved.end(), std::make_pair(o, SIZE_MAX));
      if (after != moved.begin()) o = std::prev(after)->second + (o - std::prev(after)->first);
    }
  }
  return out;
}

std::vector<int64_t> mm_token_types(const std::vector<int32_t>& ids, const io::Tokenizer& tok) {
  const std::optional<int32_t> image = tok.token_to_id(kImagePlaceholder), video = tok.token_to_id(kVideoPlaceholder),
                               audio = tok.token_to_id(kAudioPlaceholder);
  std::vector<int64_t> types(ids.size(), 0);
  for (size_t t = 0; t < ids.size(); ++t) {
    if (image && ids[t] == *image) types[t] = 1;
    else if (video && ids[t] == *video) types[t] = 2;
    else if (audio && ids[t] == *audio) types[t] = 3;
  }
  return types;
}

void check_media_tokens(const io::Tokenizer& tok, bool images, bool audio, const std::string& where, bool videos) {
  const std::pair<const char*, bool> needed[] = {
      {"<|image>", images || videos}, {"<image|>", images || videos}, {kImagePlaceholder, images},
      {kVideoPlaceholder, videos},    {"<|audio>", audio},             {kAudioPlaceholder, audio},
      {"<audio|>", audio}};
  for (const auto& [token, used] : needed)
    G4_CHECK(!used || tok.token_to_id(token).has_value(), where, ": the tokenizer has no '", token,
             "' token (a Gemma 4 multimodal tokenizer has it)");
}

MultimodalIds tokenize_multimodal(const std::string& text, const MediaSoftTokens& media, const io::Tokenizer& tok,
                                  const std::string& where) {
  check_media_tokens(tok, !media.images.empty(), !media.audio.empty(), where, !media.videos.empty());
  MultimodalIds out;
  out.input_ids = tok.encode(expand_media(text, media, where));
  out.mm_token_type_ids = mm_token_types(out.input_ids, tok);
  return out;
}

void check_no_written_media_tokens(const std::string& text, const io::Tokenizer& tok, bool placeholders,
                                   const std::string& where) {
  static const char* const kPlaceholders[] = {kImagePlaceholder, kAudioPlaceholder, kVideoPlaceholder};
  static const char* const kBoundaries[] = {"<|image>", "<image|>", "<|audio>", "<audio|>"};
  const auto refuse = [&](const char* token, const char* what) {
    G4_CHECK(!tok.token_to_id(token) || text.find(token) == std::string::npos, where, ": the text holds ", token,
             ", ", what, R"( (media go in content parts, {"type": "image", "path": FILE}, which put their tokens)",
             " themselves)");
  };
  if (placeholders)
    for (const char* t : kPlaceholders) refuse(t, "a media placeholder with no media part behind it");
  for (const char* t : kBoundaries) refuse(t, "a media boundary token");
}

PromptMedia process_prompt_media(const std::vector<io::RgbImage>& images, const std::vector<std::string>& image_names,
                                 const std::vector<std::vector<float>>& clips, const io::ImageProcessorOptions& opt) {
  PromptMedia m;
  if (!images.empty()) {
    io::ProcessedImages p = io::process_images(images, opt, image_names);
    m.pixel_values = std::move(p.pixel_values);
    m.image_position_ids = std::move(p.image_position_ids);
    m.image_soft_tokens = std::move(p.num_soft_tokens);
    m.resized_hw = std::move(p.resized_hw);
  }
  if (!clips.empty()) {
    io::AudioFeatures a = io::extract_audio_features(clips);
    m.input_features = std::move(a.input_features);
    m.input_features_mask = std::move(a.input_features_mask);
    m.audio_soft_tokens = std::move(a.num_soft_tokens);
  }
  return m;
}

}  // namespace g4::data

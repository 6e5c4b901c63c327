#include "cli/media_prompt.h"

#include <filesystem>
#include <iostream>
#include <limits>

#include "cli/commands.h"
#include "data/dataset.h"
#include "data/multimodal.h"
#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io/wav.h"

namespace g4::cli {

namespace {

// The videos of p through the video processor of model_dir: pixel_values_videos and
// video_position_ids into fi; what each video's placeholder expands to.
std::vector<data::VideoPlaceholder> prompt_videos(const io::ModelConfig& cfg, const std::string& model_dir,
                                                  const MediaPromptOptions& p, model::ForwardInputs& fi) {
  G4_CHECK(cfg.vision.has_value(), "--video: the model in ", model_dir, " has no vision tower");
  io::VideoProcessorOptions opt = io::load_video_processor_options(model_dir);
  if (p.video_frames > 0) {
    opt.num_frames = p.video_frames;
    opt.sample_fps = 0;
  }
  G4_CHECK(opt.frame.patch_size == cfg.vision->patch_size &&
               opt.frame.pooling_kernel_size == cfg.vision->pooling_kernel_size,
           "the video processor of ", model_dir, " (patch_size ", opt.frame.patch_size, ", pooling_kernel_size ",
           opt.frame.pooling_kernel_size, ") does not match the model's vision_config");
  std::vector<io::ProcessedVideo> videos;
  std::vector<data::VideoPlaceholder> placeholders;
  for (const std::string& spec : p.videos) {
    io::VideoFrames frames{{}, p.video_fps};
    std::error_code ec;
    if (std::filesystem::is_directory(spec, ec)) {
      frames.files = io::list_video_frames(spec);
    } else {
      for (size_t at = 0; at <= spec.size();) {
        const size_t comma = std::min(spec.find(',', at), spec.size());
        G4_CHECK(comma > at, "--video ", spec, ": an empty frame name");
        frames.files.push_back(spec.substr(at, comma - at));
        at = comma + 1;
      }
    }
    videos.push_back(io::process_video(frames, opt, "--video " + spec));
    const io::ProcessedVideo& v = videos.back();
    std::cout << "video " << spec << ": " << v.frame_indices.size() << " of " << frames.files.size() << " frames, "
              << v.width << "x" << v.height << " -> " << v.resized_width << "x" << v.resized_height << ", "
              << v.soft_tokens_per_frame << " soft tokens per frame\n";
    placeholders.push_back({v.soft_tokens_per_frame, v.timestamps});
  }
  std::tie(fi.pixel_values_videos, fi.video_position_ids) = io::stack_videos(videos);
  return placeholders;
}

}  // namespace

void add_media_options(CLI::App* cmd, MediaPromptOptions& p, CLI::Option* prompt, bool videos) {
  cmd->add_option("--image", p.images, "JPEG or PNG image for --prompt (repeatable; each <|image|> takes the next)")
      ->needs(prompt);
  cmd->add_option("--audio", p.audio, "WAV clip for --prompt, resampled to 16 kHz as transformers does (repeatable; each <|audio|> takes the next)")
      ->needs(prompt);
  // Checked here: 0 is MediaPromptOptions' "not given", and a bad value found later would be blamed
  // on processor_config.json.
  cmd->add_option("--max-soft-tokens", p.max_soft_tokens,
                  "image token budget: 70, 140, 280, 560 or 1120 (default: processor_config.json, else 280)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            try {
              size_t used = 0;
              const int64_t n = std::stoll(v, &used);
              if (used == v.size() && io::is_soft_token_budget(n)) return "";
            } catch (const std::exception&) {
            }
            return "must be one of 70, 140, 280, 560, 1120 (as transformers requires), got " + v;
          },
          "70|140|280|560|1120"))
      ->needs(prompt);
  if (!videos) return;
  cmd->add_option("--video", p.videos,
                  "video for --prompt as its frames: F1.jpg,F2.jpg,... or a folder of frames (repeatable; each "
                  "<|video|> takes the next)")
      ->needs(prompt);
  // real_in and positive_integer rather than CLI::PositiveNumber, which took "010" frames as octal
  // 8, clamped 99999999999999999999 to 2^63 - 1 and printed inf's bound as a 300-digit number.
  cmd->add_option("--video-fps", p.video_fps, "frame rate of the --video frames (default 24, as transformers)")
      ->check(real_in(0, std::numeric_limits<double>::max(), /*lo_open=*/true))
      ->needs(prompt);
  cmd->add_option("--video-frames", p.video_frames,
                  "frames sampled from each --video (default: processor_config.json, else 32)")
      ->check(positive_integer())
      ->needs(prompt);
}

model::ForwardInputs media_prompt_inputs(const model::Gemma4& m, const std::string& model_dir,
                                         const io::Tokenizer& tok, const MediaPromptOptions& p) {
  const io::ModelConfig& cfg = m.config();
  std::vector<io::RgbImage> images;
  io::ImageProcessorOptions opt;
  if (!p.images.empty()) {
    G4_CHECK(cfg.vision.has_value(), "--image: the model in ", model_dir, " has no vision tower");
    opt = io::model_image_processor_options(model_dir, *cfg.vision, p.max_soft_tokens);
    for (const std::string& f : p.images) images.push_back(io::read_image(f));
  }
  std::vector<std::vector<float>> clips;
  if (!p.audio.empty()) {
    G4_CHECK(cfg.conditional && cfg.has_audio, "--audio: the model in ", model_dir, " has no audio tower");
    for (const std::string& f : p.audio) clips.push_back(io::read_wav_16k(f));
  }
  model::ForwardInputs fi;
  data::MediaSoftTokens soft_tokens;
  if (!p.videos.empty()) soft_tokens.videos = prompt_videos(cfg, model_dir, p, fi);
  const data::PromptMedia media = data::process_prompt_media(images, p.images, clips, opt);
  soft_tokens.images = media.image_soft_tokens;
  soft_tokens.audio = media.audio_soft_tokens;
  for (size_t i = 0; i < p.images.size(); ++i)
    std::cout << "image " << p.images[i] << ": " << images[i].width << "x" << images[i].height << " -> "
              << media.resized_hw[i].second << "x" << media.resized_hw[i].first << ", " << media.image_soft_tokens[i]
              << " soft tokens\n";
  for (size_t i = 0; i < p.audio.size(); ++i)
    std::cout << "audio " << p.audio[i] << ": " << clips[i].size() << " samples, " << media.audio_soft_tokens[i]
              << " soft tokens\n";

  std::string text;
  if (p.chat) {
    data::warn_chat_tokenizer(tok, "the tokenizer of --chat");
    // The turn puts every medium before the text as its own part; a placeholder in the text would be
    // one more, reported as a count the user never wrote.
    for (const char* placeholder : {data::kImagePlaceholder, data::kVideoPlaceholder, data::kAudioPlaceholder})
      G4_CHECK(p.text.find(placeholder) == std::string::npos, "--prompt holds ", placeholder,
               ", but with --chat the images, videos and clips go before the text as parts of their own: drop the "
               "placeholders, or leave out --chat to place them in the text");
    data::ChatMessage user{"user", "", {}};
    for (size_t i = 0; i < p.images.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Image, ""});
    for (size_t i = 0; i < p.videos.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Video, ""});
    for (size_t i = 0; i < p.audio.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Audio, ""});
    user.parts.push_back({data::ChatPart::Kind::Text, p.text});
    text = data::render_chat({user}, true, data::chat_variant_for(cfg.hidden_size_per_layer_input));
  } else {
    text = p.text;
    const auto put_first = [&](const char* placeholder, size_t n) {
      std::string all;
      if (text.find(placeholder) != std::string::npos) return all;
      for (size_t i = 0; i < n; ++i) all += placeholder;
      return all;
    };
    text.insert(0, put_first(data::kImagePlaceholder, p.images.size()) +
                       put_first(data::kVideoPlaceholder, p.videos.size()) +
                       put_first(data::kAudioPlaceholder, p.audio.size()));
    if (text.rfind("<bos>", 0) != 0) text.insert(0, "<bos>");
  }
  const data::MultimodalIds ids = data::tokenize_multimodal(text, soft_tokens, tok, "--prompt");
  const auto same_id = [&](const char* token, int64_t model_id) {
    const auto id = tok.token_to_id(token);
    G4_CHECK(id && *id == model_id, "the tokenizer's ", token, " is id ", id ? std::to_string(*id) : "(none)",
             " but the model's is ", model_id);
  };
  if (!p.images.empty()) same_id(data::kImagePlaceholder, cfg.vision->image_token_id);
  if (!p.videos.empty()) same_id(data::kVideoPlaceholder, cfg.vision->video_token_id);
  if (!p.audio.empty()) same_id(data::kAudioPlaceholder, cfg.audio_token_id);

  const int64_t S = static_cast<int64_t>(ids.input_ids.size());
  fi.input_ids = Tensor::from_vector(std::vector<int64_t>(ids.input_ids.begin(), ids.input_ids.end()), {1, S});
  fi.mm_token_type_ids = Tensor::from_vector(ids.mm_token_type_ids, {1, S});
  fi.pixel_values = media.pixel_values;
  fi.image_position_ids = media.image_position_ids;
  fi.input_features = media.input_features;
  fi.input_features_mask = media.input_features_mask;
  return fi;
}

}  // namespace g4::cli

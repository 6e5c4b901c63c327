#include "cli/media_prompt.h"

#include <iostream>

#include "data/dataset.h"
#include "data/multimodal.h"
#include "io/image_processor.h"
#include "io/wav.h"

namespace g4::cli {

void add_media_options(CLI::App* cmd, MediaPromptOptions& p, CLI::Option* prompt) {
  cmd->add_option("--image", p.images, "JPEG or PNG image for --prompt (repeatable; each <|image|> takes the next)")
      ->needs(prompt);
  cmd->add_option("--audio", p.audio, "16 kHz WAV clip for --prompt (repeatable; each <|audio|> takes the next)")
      ->needs(prompt);
  cmd->add_option("--max-soft-tokens", p.max_soft_tokens,
                  "image token budget: 70, 140, 280, 560 or 1120 (default: processor_config.json, else 280)")
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
  const data::PromptMedia media = data::process_prompt_media(images, p.images, clips, opt);
  for (size_t i = 0; i < p.images.size(); ++i)
    std::cout << "image " << p.images[i] << ": " << images[i].width << "x" << images[i].height << " -> "
              << media.resized_hw[i].second << "x" << media.resized_hw[i].first << ", " << media.image_soft_tokens[i]
              << " soft tokens\n";
  for (size_t i = 0; i < p.audio.size(); ++i)
    std::cout << "audio " << p.audio[i] << ": " << clips[i].size() << " samples, " << media.audio_soft_tokens[i]
              << " soft tokens\n";

  std::string text;
  if (p.chat) {
    data::ChatMessage user{"user", "", {}};
    for (size_t i = 0; i < p.images.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Image, ""});
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
                       put_first(data::kAudioPlaceholder, p.audio.size()));
    if (text.rfind("<bos>", 0) != 0) text.insert(0, "<bos>");
  }
  const data::MultimodalIds ids =
      data::tokenize_multimodal(text, media.image_soft_tokens, media.audio_soft_tokens, tok, "--prompt");
  const auto same_id = [&](const char* token, int64_t model_id) {
    const auto id = tok.token_to_id(token);
    G4_CHECK(id && *id == model_id, "the tokenizer's ", token, " is id ", id ? std::to_string(*id) : "(none)",
             " but the model's is ", model_id);
  };
  if (!p.images.empty()) same_id(data::kImagePlaceholder, cfg.vision->image_token_id);
  if (!p.audio.empty()) same_id(data::kAudioPlaceholder, cfg.audio_token_id);

  model::ForwardInputs fi;
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

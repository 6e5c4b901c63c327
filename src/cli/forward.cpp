// g4 forward MODEL_DIR --inputs IN.safetensors --out OUT.safetensors [--grads] [--overwrite]
// g4 forward MODEL_DIR --prompt TEXT [--image FILE]... [--video F1,F2,...|DIR]... [--video-fps F]
//           [--video-frames N] [--chat] [--max-soft-tokens N] --out OUT.safetensors
// Inputs: input_ids [B,S] and optional attention_mask, labels (-100 ignored; shifted inside),
// position_ids, for images pixel_values, image_position_ids, mm_token_type_ids, for videos
// pixel_values_videos, video_position_ids, and for audio input_features, input_features_mask. Outputs:
// logits [B,S,V] f32, loss [1] when labels are given, and with --grads grad.<HF name> for every
// parameter in Hugging Face layout.
// With --prompt the inputs are made as transformers' Gemma4Processor makes them: the images are
// decoded and processed (io/image_processor.h, the budget from the model directory's
// processor_config.json unless --max-soft-tokens), each "<|image|>" of the text expanded to the
// image's soft tokens (data/multimodal.h) and the text tokenised; the output file also holds the
// input_ids and mm_token_type_ids used. Without --chat the text is taken as it is (<bos> put first
// when missing; the images' placeholders put before it when it has none); with --chat it is one user
// turn of the Gemma 4 chat template, images first, then the generation prompt. A --video is its
// frames (image files, comma-separated, or a folder of them sorted by name) at --video-fps (24
// when not given), sampled and processed as Gemma4VideoProcessor does (io/video_processor.h);
// its placeholder "<|video|>" (put after the images' when the text has none) expands to each
// sampled frame's timestamp and soft tokens.
// A diffusion_gemma model runs one of two passes (docs/diffusion.md, "Commands"):
// - transformers' forward: decoder_input_ids (or canvas_ids) [B,C] and optional
//   self_conditioning_logits [B,C,V], self_conditioning_mask [B], decoder_attention_mask [B,S+C];
//   it writes the denoiser's logits [B,C,V] and encoder_logits [B,S,V]; labels give encoder_loss
//   (see forward_diffusion);
// - Automodel's training step, when the file has loss_mask (see forward_dllm_step).
#include <filesystem>
#include <iostream>
#include <optional>
#include <tuple>

#include "autograd/variable.h"
#include "cli/commands.h"
#include "data/dataset.h"
#include "data/multimodal.h"
#include "diffusion/model.h"
#include "diffusion/objective.h"
#include "io/image_processor.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "io/video_processor.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

namespace {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

Tensor optional_input(const io::SafetensorsReader& in, const std::string& name) {
  return in.has(name) ? in.get(name).clone() : Tensor();
}

void check_shape(const Tensor& t, const Shape& want, const char* name, const std::string& file) {
  if (t.defined())
    G4_CHECK(t.shape() == want, name, " in ", file, " must be ", shape_str(want), ", got ", t.describe());
}

// The block-diffusion forward as transformers' DiffusionGemmaForBlockDiffusion.forward: the causal
// encoder over input_ids fills the cache, the denoiser runs once over canvas_ids. With labels,
// encoder_loss is the encoder's next-token cross-entropy (labels shifted inside, -100 ignored: the
// autoregressive term of Automodel's training loss) and --grads differentiates it; the denoiser's
// logits are computed without a tape (the canvas loss and its gradients are forward_dllm_step's).
NamedTensors forward_diffusion(const model::Gemma4& m, const io::SafetensorsReader& in, const std::string& file,
                               bool grads) {
  const Tensor ids = in.get("input_ids").clone();
  // transformers' forward names the canvas decoder_input_ids; canvas_ids is g4's own name for it.
  G4_CHECK(in.has("decoder_input_ids") != in.has("canvas_ids"), "inputs file ", file,
           " must hold exactly one of 'decoder_input_ids' and 'canvas_ids' (", m.config().architecture,
           " denoises a canvas [B, C] after the context input_ids)");
  const char* canvas_name = in.has("decoder_input_ids") ? "decoder_input_ids" : "canvas_ids";
  const Tensor canvas = in.get(canvas_name).clone();
  G4_CHECK(!in.has("position_ids"), "position_ids in ", file, " are not taken by a diffusion model (the encoder's",
           " positions are 0..S-1 and the canvas's S..S+C-1, as in transformers)");
  const int64_t B = ids.size(0), S = ids.size(1);
  G4_CHECK(canvas.dim() == 2 && canvas.size(0) == B, canvas_name, " in ", file, " must be [", B, ", C], got ",
           canvas.describe());
  const int64_t C = canvas.size(1), V = m.config().vocab_size;
  const Tensor mask = optional_input(in, "attention_mask"), dec_mask = optional_input(in, "decoder_attention_mask");
  const Tensor sc = optional_input(in, "self_conditioning_logits"),
               sc_mask = optional_input(in, "self_conditioning_mask");
  const Tensor labels = optional_input(in, "labels");
  check_shape(mask, {B, S}, "attention_mask", file);
  check_shape(labels, {B, S}, "labels", file);
  check_shape(dec_mask, {B, S + C}, "decoder_attention_mask", file);
  check_shape(sc, {B, C, V}, "self_conditioning_logits", file);
  if (sc_mask.defined()) check_shape(sc_mask.reshape({sc_mask.numel()}), {B}, "self_conditioning_mask", file);
  G4_CHECK(!grads || labels.defined(), "--grads on a diffusion model needs 'labels' in ", file,
           " (the gradients of the encoder's next-token loss) or Automodel's batch with 'loss_mask' (the gradients of",
           " its training loss)");

  // The cache keeps one validity per encoded key, so the decoder's mask over the context keys must
  // be the encoder's; its last C columns mask canvas keys.
  Tensor canvas_valid;
  if (dec_mask.defined()) {
    canvas_valid = Tensor::empty({B, C}, DType::I64);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < S; ++j) {
        const int64_t want = mask.defined() ? element_as_int(mask, b * S + j) != 0 : 1;
        G4_CHECK((element_as_int(dec_mask, b * (S + C) + j) != 0) == want, "decoder_attention_mask in ", file,
                 " differs from attention_mask at [", b, ", ", j, "]: its first S columns must be the encoder's mask");
      }
      for (int64_t j = 0; j < C; ++j)
        canvas_valid.data<int64_t>()[b * C + j] = element_as_int(dec_mask, b * (S + C) + S + j) != 0;
    }
  }

  diffusion::EncoderCache cache;
  const Tensor encoder_logits = m.logits(diffusion::encode(m, ids, mask, cache)).value();
  const Tensor logits = diffusion::denoise(m, canvas, cache, sc, sc_mask, canvas_valid);
  NamedTensors out = {{"logits", logits}, {"encoder_logits", encoder_logits}};
  if (!labels.defined()) return out;

  std::optional<ag::NoGrad> no_grad;
  if (!grads) no_grad.emplace();
  model::ForwardInputs fi;
  fi.input_ids = ids.to(DType::I64).clone();
  for (int64_t i = 0; i < fi.input_ids.numel(); ++i)  // as the encoder embeds them
    if (fi.input_ids.data<int64_t>()[i] == m.config().image_token_id)
      fi.input_ids.data<int64_t>()[i] = m.config().pad_token_id;
  fi.attention_mask = mask;
  fi.labels = labels;
  fi.return_logits = false;
  const model::ForwardOutputs f = m.forward(fi);
  out.emplace_back("encoder_loss", f.loss.value().reshape({1}));
  std::cout << "encoder_loss " << f.loss.value().item() << " over " << f.counted_tokens << " tokens\n";
  if (grads) {
    ag::backward(f.loss);
    for (auto& [name, g] : model::hf_gradients(m)) out.emplace_back("grad." + name, g);
  }
  return out;
}

struct PromptOptions {
  std::string text, tokenizer;
  std::vector<std::string> images;
  std::vector<std::string> videos;  // each "F1,F2,..." or a folder of frames
  double video_fps = 0;             // the frames' rate (0: unknown)
  int64_t video_frames = 0;         // frames sampled per video (0: the processor's num_frames)
  bool chat = false;
  int64_t max_soft_tokens = 0;
};

// The --video inputs through the video processor of model_dir: pixel_values_videos and
// video_position_ids into fi, what the placeholders expand to into soft_tokens.
void process_prompt_videos(const model::Gemma4& m, const std::string& model_dir, const PromptOptions& p,
                           model::ForwardInputs& fi, data::MediaSoftTokens& soft_tokens) {
  G4_CHECK(m.config().vision.has_value(), "--video: the model in ", model_dir, " has no vision tower");
  io::VideoProcessorOptions opt = io::load_video_processor_options(model_dir);
  if (p.video_frames > 0) {
    opt.num_frames = p.video_frames;
    opt.sample_fps = 0;
  }
  G4_CHECK(opt.frame.patch_size == m.config().vision->patch_size &&
               opt.frame.pooling_kernel_size == m.config().vision->pooling_kernel_size,
           "the video processor of ", model_dir, " (patch_size ", opt.frame.patch_size, ", pooling_kernel_size ",
           opt.frame.pooling_kernel_size, ") does not match the model's vision_config");
  std::vector<io::ProcessedVideo> videos;
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
    std::cout << "video " << spec << ": " << v.frame_indices.size() << " of " << frames.files.size()
              << " frames, " << v.width << "x" << v.height << " -> " << v.resized_width << "x" << v.resized_height
              << ", " << v.soft_tokens_per_frame << " soft tokens per frame\n";
    soft_tokens.videos.push_back({v.soft_tokens_per_frame, v.timestamps});
  }
  std::tie(fi.pixel_values_videos, fi.video_position_ids) = io::stack_videos(videos);
}

// The model inputs for one prompt with images, as Gemma4Processor makes them (see the top of the
// file); `extra` gets the input_ids and mm_token_type_ids for the output file.
model::ForwardInputs prompt_inputs(const model::Gemma4& m, const std::string& model_dir, const PromptOptions& p,
                                   NamedTensors& extra) {
  const auto tok = io::load_tokenizer(p.tokenizer.empty() ? model_dir : p.tokenizer);
  model::ForwardInputs fi;
  data::MediaSoftTokens soft_tokens;
  if (!p.videos.empty()) process_prompt_videos(m, model_dir, p, fi, soft_tokens);
  if (!p.images.empty()) {
    G4_CHECK(m.config().vision.has_value(), "--image: the model in ", model_dir, " has no vision tower");
    const io::ImageProcessorOptions opt = io::load_image_processor_options(model_dir, p.max_soft_tokens);
    G4_CHECK(opt.patch_size == m.config().vision->patch_size &&
                 opt.pooling_kernel_size == m.config().vision->pooling_kernel_size,
             "the image processor of ", model_dir, " (patch_size ", opt.patch_size, ", pooling_kernel_size ",
             opt.pooling_kernel_size, ") does not match the model's vision_config (", m.config().vision->patch_size,
             ", ", m.config().vision->pooling_kernel_size, ")");
    std::vector<io::RgbImage> images;
    for (const std::string& f : p.images) images.push_back(io::read_image(f));
    io::ProcessedImages processed = io::process_images(images, opt, p.images);
    for (size_t i = 0; i < p.images.size(); ++i)
      std::cout << "image " << p.images[i] << ": " << images[i].width << "x" << images[i].height << " -> "
                << processed.resized_hw[i].second << "x" << processed.resized_hw[i].first << ", "
                << processed.num_soft_tokens[i] << " soft tokens\n";
    fi.pixel_values = processed.pixel_values;
    fi.image_position_ids = processed.image_position_ids;
    soft_tokens.images = processed.num_soft_tokens;
  }
  std::string text;
  if (p.chat) {
    data::ChatMessage user{"user", "", {}};
    for (size_t i = 0; i < p.images.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Image, ""});
    for (size_t i = 0; i < p.videos.size(); ++i) user.parts.push_back({data::ChatPart::Kind::Video, ""});
    user.parts.push_back({data::ChatPart::Kind::Text, p.text});
    text = data::render_chat({user}, true, data::chat_variant_for(m.config().hidden_size_per_layer_input));
  } else {
    text = p.text;
    if (text.find(data::kVideoPlaceholder) == std::string::npos)
      for (size_t i = 0; i < p.videos.size(); ++i) text.insert(0, data::kVideoPlaceholder);
    if (text.find(data::kImagePlaceholder) == std::string::npos)
      for (size_t i = 0; i < p.images.size(); ++i) text.insert(0, data::kImagePlaceholder);
    if (text.rfind("<bos>", 0) != 0) text.insert(0, "<bos>");
  }
  const data::MultimodalIds ids = data::tokenize_multimodal(text, soft_tokens, *tok, "--prompt");
  if (!p.images.empty())
    G4_CHECK(*tok->token_to_id(data::kImagePlaceholder) == m.config().vision->image_token_id, "the tokenizer's ",
             data::kImagePlaceholder, " is id ", *tok->token_to_id(data::kImagePlaceholder), " but the model's ",
             "image_token_id is ", m.config().vision->image_token_id);
  if (!p.videos.empty())
    G4_CHECK(*tok->token_to_id(data::kVideoPlaceholder) == m.config().vision->video_token_id, "the tokenizer's ",
             data::kVideoPlaceholder, " is id ", *tok->token_to_id(data::kVideoPlaceholder), " but the model's ",
             "video_token_id is ", m.config().vision->video_token_id);
  const int64_t S = static_cast<int64_t>(ids.input_ids.size());
  std::vector<int64_t> wide(ids.input_ids.begin(), ids.input_ids.end());
  fi.input_ids = Tensor::from_vector(wide, {1, S});
  fi.mm_token_type_ids = Tensor::from_vector(ids.mm_token_type_ids, {1, S});
  extra = {{"input_ids", fi.input_ids}, {"mm_token_type_ids", fi.mm_token_type_ids}};
  return fi;
}

// NeMo Automodel 0.7.0's block-diffusion step on a batch whose draws are given (DIFFUSION.md
// §D.4-D.7, diffusion::dllm_forward): the collated clean rows input_ids, attention_mask (optional:
// all attended) and loss_mask [B,S]; their corruption noisy_input_ids [B,S]; each row's scored
// block selected_block [B]; and the self-conditioning coins self_conditioning_mask [B] (optional:
// none). The block size is the model's canvas_length, the AR weight 1 (Automodel's defaults), the
// denominators this batch's own (one micro-batch on one rank). Writes loss (the total),
// diffusion_loss, ar_loss, the pass-2 logits [B,R,V], sc_logits (pass 1) and encoder_logits
// [B,S,V]; --grads differentiates the total, the router included (Automodel freezes it).
NamedTensors forward_dllm_step(const model::Gemma4& m, const io::SafetensorsReader& in, const std::string& file,
                               bool grads) {
  for (const char* other : {"decoder_input_ids", "canvas_ids", "self_conditioning_logits", "decoder_attention_mask",
                            "labels", "position_ids"})
    G4_CHECK(!in.has(other), "inputs file ", file, " has loss_mask (Automodel's training step) and '", other,
             "', which belongs to transformers' forward; give one or the other");
  for (const char* needed : {"noisy_input_ids", "selected_block"})
    G4_CHECK(in.has(needed), "inputs file ", file, " has loss_mask but no '", needed,
             "' (Automodel's step takes the corrupted rows and each row's scored block)");
  diffusion::DllmBatch batch;
  batch.input_ids = in.get("input_ids").to(DType::I64).clone();
  const int64_t B = batch.rows(), S = batch.length();
  // Masks may be floats, as Automodel's loss_mask is (nonzero: 1); token ids must be integers.
  auto rows = [&](const char* name, bool ids) {
    if (!ids && !in.has(name)) return Tensor::full({B, S}, 1.0, DType::I64);
    const Tensor t = in.get(name);
    check_shape(t, {B, S}, name, file);
    G4_CHECK(!ids || !is_floating(t.dtype()), name, " in ", file, " must hold token ids, got ", t.describe());
    Tensor r = Tensor::empty({B, S}, DType::I64);
    const Tensor host = ids ? t.to(DType::I64) : t.to(DType::F64);
    for (int64_t i = 0; i < B * S; ++i)
      r.data<int64_t>()[i] = ids ? host.data<int64_t>()[i] : host.data<double>()[i] != 0;
    return r;
  };
  batch.loss_mask = rows("loss_mask", false);
  batch.attention_mask = rows("attention_mask", false);
  const Tensor noisy = rows("noisy_input_ids", true);
  const Tensor selected = in.get("selected_block").clone();
  diffusion::DllmStep step{batch, diffusion::response_window_at(batch, noisy, m.config().canvas_length, selected),
                           Tensor::zeros({B}, DType::I64)};
  if (in.has("self_conditioning_mask")) {
    const Tensor coins = in.get("self_conditioning_mask");
    G4_CHECK(coins.numel() == B, "self_conditioning_mask in ", file, " must be [", B, "], got ", coins.describe());
    for (int64_t b = 0; b < B; ++b) step.coins.data<int64_t>()[b] = element_as_int(coins, b) != 0;
  }
  const double n_diff = std::max<int64_t>(1, step.window.scored()), n_ar = std::max<int64_t>(1, ar_count(batch));

  std::optional<ag::NoGrad> no_grad;
  if (!grads) no_grad.emplace();
  const diffusion::DllmForward f = diffusion::dllm_forward(m, step, n_diff, n_ar, 1.0, true, true);
  const double total = f.loss.value().to(DType::F64).item();
  std::cout << "loss " << total << " = diffusion " << f.diffusion << " over " << step.window.scored() << " tokens + ar "
            << f.ar << " over " << ar_count(batch) << " pairs\n";
  NamedTensors out = {{"loss", f.loss.value().to(DType::F32).reshape({1})},
                      {"diffusion_loss", Tensor::full({1}, f.diffusion, DType::F32)},
                      {"ar_loss", Tensor::full({1}, f.ar, DType::F32)},
                      {"logits", f.logits},
                      {"sc_logits", f.sc_logits},
                      {"encoder_logits", f.encoder_logits}};
  if (grads) {
    ag::backward(f.loss);
    for (auto& [name, g] : model::hf_gradients(m)) out.emplace_back("grad." + name, g);
  }
  return out;
}

}  // namespace

void add_forward(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("forward", "Run one forward (and backward) pass on given inputs");
  struct Opts {
    std::string model, inputs, out;
    bool grads = false, overwrite = false;
    PromptOptions prompt;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->model, "Hugging Face model directory")->required();
  auto* inputs_opt =
      cmd->add_option("--inputs", o->inputs,
                      "safetensors with input_ids [B,S] (+ attention_mask, labels, position_ids, pixel_values, "
                      "image_position_ids, pixel_values_videos, video_position_ids, mm_token_type_ids, "
                      "input_features, input_features_mask; diffusion "
                      "models: decoder_input_ids (or canvas_ids) [B,C] + self_conditioning_logits, "
                      "self_conditioning_mask, decoder_attention_mask; or Automodel's step: loss_mask, "
                      "noisy_input_ids, selected_block, self_conditioning_mask)");
  auto* prompt_opt = cmd->add_option("--prompt", o->prompt.text,
                                     "prompt text instead of --inputs; each <|image|> in it takes the next --image");
  inputs_opt->excludes(prompt_opt);
  cmd->add_option("--image", o->prompt.images, "JPEG or PNG image for --prompt (repeatable, in prompt order)")
      ->needs(prompt_opt);
  cmd->add_option("--video", o->prompt.videos,
                  "video for --prompt as its frames: F1.jpg,F2.jpg,... or a folder of frames (repeatable, in order)")
      ->needs(prompt_opt);
  cmd->add_option("--video-fps", o->prompt.video_fps, "frame rate of the --video frames (default 24, as transformers)")
      ->check(CLI::PositiveNumber)
      ->needs(prompt_opt);
  cmd->add_option("--video-frames", o->prompt.video_frames,
                  "frames sampled from each --video (default: processor_config.json, else 32)")
      ->check(CLI::PositiveNumber)
      ->needs(prompt_opt);
  cmd->add_flag("--chat", o->prompt.chat, "--prompt is one user turn of the Gemma 4 chat template (images first)")
      ->needs(prompt_opt);
  cmd->add_option("--max-soft-tokens", o->prompt.max_soft_tokens,
                  "image token budget: 70, 140, 280, 560 or 1120 (default: processor_config.json, else 280)")
      ->needs(prompt_opt);
  cmd->add_option("--tokenizer", o->prompt.tokenizer, "tokenizer for --prompt (default: the model directory)")
      ->needs(prompt_opt);

  cmd->add_option("--out", o->out, "safetensors to write logits (+ loss, grads) to")->required();
  cmd->add_flag("--grads", o->grads, "also write grad.<name> of the loss for every parameter (needs labels)");
  cmd->add_flag("--overwrite", o->overwrite, "replace --out even when it is a file in a model directory");
  cmd->callback([&action, o, prompt_opt] {
    const bool from_prompt = prompt_opt->count() > 0;  // an empty --prompt '' is still a prompt
    action = [o, from_prompt] {
      check_output_file(o->out, "--out", o->overwrite, o->model);
      G4_CHECK(!o->inputs.empty() || from_prompt, "g4 forward needs --inputs or --prompt");
      auto model = model::load_hf_model(o->model);
      model::ForwardInputs fi;
      NamedTensors prompt_tensors;
      if (!from_prompt) {
        const io::SafetensorsReader in = io::SafetensorsReader::open(o->inputs);
        G4_CHECK(in.has("input_ids"), "inputs file ", o->inputs, " has no 'input_ids' tensor");
        fi.input_ids = in.get("input_ids").clone();
        G4_CHECK(fi.input_ids.dim() == 2 && !is_floating(fi.input_ids.dtype()), "input_ids in ", o->inputs,
                 " must be an integer [B, S] tensor, got ", fi.input_ids.describe());
        if (model->config().diffusion) {
          const NamedTensors tensors = in.has("loss_mask") ? forward_dllm_step(*model, in, o->inputs, o->grads)
                                                           : forward_diffusion(*model, in, o->inputs, o->grads);
          io::save_safetensors(o->out, tensors);
          std::cout << "wrote " << tensors.size() << " tensors to " << o->out << "\n";
          return;
        }
        if (in.has("attention_mask")) fi.attention_mask = in.get("attention_mask").clone();
        if (in.has("labels")) fi.labels = in.get("labels").clone();
        if (in.has("position_ids")) fi.position_ids = in.get("position_ids").clone();
        // Images, under transformers' names (the model checks them).
        if (in.has("pixel_values")) fi.pixel_values = in.get("pixel_values").clone();
        if (in.has("image_position_ids")) fi.image_position_ids = in.get("image_position_ids").clone();
        if (in.has("mm_token_type_ids")) fi.mm_token_type_ids = in.get("mm_token_type_ids").clone();
        if (in.has("pixel_values_videos")) fi.pixel_values_videos = in.get("pixel_values_videos").clone();
        if (in.has("video_position_ids")) fi.video_position_ids = in.get("video_position_ids").clone();
        // Audio: the feature extractor's output (the model checks it).
        if (in.has("input_features")) fi.input_features = in.get("input_features").clone();
        if (in.has("input_features_mask")) fi.input_features_mask = in.get("input_features_mask").clone();
        G4_CHECK(!o->grads || fi.labels.defined(), "--grads needs 'labels' in ", o->inputs);
      } else {
        G4_CHECK(!model->config().diffusion, "--prompt: ", o->model, " is a diffusion model; give it --inputs");
        G4_CHECK(!o->grads, "--grads needs labels, which only --inputs provides");
        fi = prompt_inputs(*model, o->model, o->prompt, prompt_tensors);
      }

      std::optional<ag::NoGrad> no_grad;
      if (!o->grads) no_grad.emplace();
      model::ForwardOutputs out = model->forward(fi);
      std::vector<std::pair<std::string, Tensor>> tensors = {{"logits", out.logits.value()}};
      if (out.loss.defined()) {
        tensors.emplace_back("loss", out.loss.value().reshape({1}));
        std::cout << "loss " << out.loss.value().item() << " over " << out.counted_tokens << " tokens\n";
      }
      if (o->grads) {
        ag::backward(out.loss);
        for (auto& [name, g] : model::hf_gradients(*model)) tensors.emplace_back("grad." + name, g);
      }
      tensors.insert(tensors.end(), prompt_tensors.begin(), prompt_tensors.end());
      io::save_safetensors(o->out, tensors);
      std::cout << "wrote " << tensors.size() << " tensors to " << o->out << "\n";
    };
  });
}

}  // namespace g4::cli

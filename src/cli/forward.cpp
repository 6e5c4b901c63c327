// g4 forward MODEL_DIR --inputs IN.safetensors --out OUT.safetensors [--grads] [--overwrite]
// g4 forward MODEL_DIR --prompt TEXT [--image FILE]... [--video F1,F2,...|DIR]... [--video-fps F]
//            [--video-frames N] [--audio FILE.wav]... [--chat] [--max-soft-tokens N] --out OUT.safetensors
// Inputs: input_ids [B,S] and optional attention_mask, labels (-100 ignored; shifted inside),
// position_ids, for images pixel_values, image_position_ids, mm_token_type_ids, for videos
// pixel_values_videos, video_position_ids, and for audio input_features, input_features_mask. Outputs:
// logits [B,S,V] f32, loss [1] when labels are given, and with --grads grad.<HF name> for every
// parameter in Hugging Face layout.
// With --prompt the inputs are made as transformers' Gemma4Processor makes them (cli/media_prompt.h,
// shared with g4 generate): the images, videos and clips decoded and processed, each "<|image|>",
// "<|video|>" / "<|audio|>" of the text expanded to its medium's soft tokens (a video's: each sampled
// frame's timestamp and soft tokens) and the text tokenised; the output file also holds the
// input_ids and mm_token_type_ids used.
// A diffusion_gemma model runs one of two passes (docs/diffusion.md, "Commands"):
// - transformers' forward: decoder_input_ids (or canvas_ids) [B,C] and optional
//   self_conditioning_logits [B,C,V], self_conditioning_mask [B], decoder_attention_mask [B,S+C]
//   (the decoder's own mask over [context ; canvas]; without it the canvas sees every key);
//   it writes the denoiser's logits [B,C,V] and encoder_logits [B,S,V]; labels give encoder_loss
//   (see forward_diffusion);
// - Automodel's training step, when the file has loss_mask (see forward_dllm_step).
#include <filesystem>
#include <iostream>
#include <optional>
#include <tuple>

#include "autograd/variable.h"
#include "cli/commands.h"
#include "cli/media_prompt.h"
#include "diffusion/model.h"
#include "diffusion/objective.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

namespace {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The processed media of a forward under transformers' names: read from --inputs, and written to
// --out beside the logits with --prompt.
std::vector<std::pair<const char*, Tensor*>> media_tensors(model::ForwardInputs& fi) {
  return {{"pixel_values", &fi.pixel_values},         {"image_position_ids", &fi.image_position_ids},
          {"pixel_values_videos", &fi.pixel_values_videos}, {"video_position_ids", &fi.video_position_ids},
          {"input_features", &fi.input_features},     {"input_features_mask", &fi.input_features_mask}};
}

Tensor optional_input(const io::SafetensorsReader& in, const std::string& name) {
  return in.has(name) ? in.get(name).clone() : Tensor();
}

void check_shape(const Tensor& t, const Shape& want, const char* name, const std::string& file) {
  if (t.defined())
    G4_CHECK(t.shape() == want, name, " in ", file, " must be ", shape_str(want), ", got ", t.describe());
}

// Labels are token ids or -100 (ignored); one past the vocabulary would otherwise surface as the
// loss kernel's error, which names neither the tensor nor the file.
void check_labels(const Tensor& labels, int64_t vocab, const std::string& file) {
  if (!labels.defined()) return;
  G4_CHECK(!is_floating(labels.dtype()), "labels in ", file, " must hold token ids, got ", labels.describe());
  for (int64_t i = 0; i < labels.numel(); ++i) {
    const int64_t id = element_as_int(labels, i);
    G4_CHECK(id == -100 || (id >= 0 && id < vocab), "labels in ", file, " hold ", id, " at flat position ", i,
             ", outside the vocabulary [0, ", vocab, ") and not -100 (ignored)");
  }
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
  check_labels(labels, V, file);
  check_shape(dec_mask, {B, S + C}, "decoder_attention_mask", file);
  check_shape(sc, {B, C, V}, "self_conditioning_logits", file);
  if (sc_mask.defined()) check_shape(sc_mask.reshape({sc_mask.numel()}), {B}, "self_conditioning_mask", file);
  G4_CHECK(!grads || labels.defined(), "--grads on a diffusion model needs 'labels' in ", file,
           " (the gradients of the encoder's next-token loss) or Automodel's batch with 'loss_mask' (the gradients of",
           " its training loss)");

  // transformers' forward masks the decoder apart from the encoder: decoder_attention_mask covers
  // [context ; canvas] keys whatever attention_mask was, and without one the canvas attends to every
  // cached key, padding included (generate passes [attention_mask, 1...] itself).
  Tensor context_valid = Tensor::full({B, S}, 1.0, DType::I64), canvas_valid;
  if (dec_mask.defined()) {
    canvas_valid = Tensor::empty({B, C}, DType::I64);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < S; ++j)
        context_valid.data<int64_t>()[b * S + j] = element_as_int(dec_mask, b * (S + C) + j) != 0;
      for (int64_t j = 0; j < C; ++j)
        canvas_valid.data<int64_t>()[b * C + j] = element_as_int(dec_mask, b * (S + C) + S + j) != 0;
    }
  }

  diffusion::EncoderCache cache;
  const Tensor encoder_logits = m.logits(diffusion::encode(m, ids, mask, cache)).value();
  cache.set_key_valid(context_valid);
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
    // Named here: the sampler's own check would name its canvas_ids, a tensor the file does not have.
    const int64_t V = m.config().vocab_size;
    for (int64_t i = 0; ids && i < B * S; ++i)
      G4_CHECK(r.data<int64_t>()[i] >= 0 && r.data<int64_t>()[i] < V, name, " in ", file, " holds ",
               r.data<int64_t>()[i], " at flat position ", i, ", outside the vocabulary [0, ", V, ")");
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
    MediaPromptOptions prompt;
    std::string tokenizer;
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
  add_media_options(cmd, o->prompt, prompt_opt, /*videos=*/true);
  cmd->add_flag("--chat", o->prompt.chat, "--prompt is one user turn of the Gemma 4 chat template (media first)")
      ->needs(prompt_opt);
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer for --prompt (default: the model directory)")
      ->needs(prompt_opt);

  cmd->add_option("--out", o->out,
                  "safetensors to write logits (+ loss, grads) to; with --prompt also the inputs it made "
                  "(input_ids, mm_token_type_ids and the processed media under transformers' names)")
      ->required();
  cmd->add_flag("--grads", o->grads, "also write grad.<name> of the loss for every parameter (needs labels)");
  cmd->add_flag("--overwrite", o->overwrite, "replace --out even when it is a file in a model directory");
  cmd->callback([&action, o, prompt_opt] {
    const bool from_prompt = prompt_opt->count() > 0;  // an empty --prompt '' is still a prompt
    action = [o, from_prompt] {
      if (!runs_in_this_rank("g4 forward", "--out")) return;
      check_output_file(o->out, "--out", o->overwrite, o->model);
      check_output_not_input(o->out, "--out", o->inputs, "--inputs");
      check_output_not_input(o->out, "--out", o->tokenizer, "--tokenizer");
      G4_CHECK(!o->inputs.empty() || from_prompt, "g4 forward needs --inputs or --prompt");
      // Before the model loads (minutes for a large one).
      if (!from_prompt) io::check_regular_file(o->inputs, "--inputs file");
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
        check_labels(fi.labels, model->config().vocab_size, o->inputs);
        if (in.has("position_ids")) fi.position_ids = in.get("position_ids").clone();
        // Images, video and audio under transformers' names (the model checks them).
        if (in.has("mm_token_type_ids")) fi.mm_token_type_ids = in.get("mm_token_type_ids").clone();
        for (const auto& [name, t] : media_tensors(fi))
          if (in.has(name)) *t = in.get(name).clone();
        G4_CHECK(!o->grads || fi.labels.defined(), "--grads needs 'labels' in ", o->inputs);
      } else {
        G4_CHECK(!model->config().diffusion, "--prompt: ", o->model, " is a diffusion model; give it --inputs");
        G4_CHECK(!o->grads, "--grads needs labels, which only --inputs provides");
        const auto tok = io::load_tokenizer(o->tokenizer.empty() ? o->model : o->tokenizer);
        fi = media_prompt_inputs(*model, o->model, *tok, o->prompt);
        // The processed inputs go into --out beside the logits (under transformers' names, so the file
        // is also an --inputs file): what the processors made of the files is checkable on its own
        // (tools/probe_processors_vs_transformers.py compares it with transformers' processors).
        prompt_tensors = {{"input_ids", fi.input_ids}, {"mm_token_type_ids", fi.mm_token_type_ids}};
        for (const auto& [name, t] : media_tensors(fi))
          if (t->defined()) prompt_tensors.emplace_back(name, *t);
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

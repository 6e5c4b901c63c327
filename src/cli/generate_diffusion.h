// `g4 generate` on a diffusion_gemma checkpoint: transformers' block diffusion sampler
// (diffusion/sampler.h) with flags named like DiffusionGemmaGenerationConfig's fields, defaults
// from the checkpoint's generation_config.json (docs/diffusion.md, "Sampling").
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>

namespace g4::cli {

struct DiffusionGenerateOptions {
  // Flag text as given ("none" disables where transformers' None does); empty: not given.
  std::string max_denoising_steps, t_min, t_max, entropy_bound, stability_threshold, confidence_threshold, eos_token_id,
      pad_token_id;
  std::string rng = "philox";  // philox | torch-cpu
  // The first block's seeds (transformers' decoder_input_ids and self_conditioning_logits): a comma
  // list of C ids (every row) or B * C ids (row by row); a safetensors file holding
  // self_conditioning_logits [B, C, V].
  std::string decoder_input_ids, self_conditioning_logits;
  // Shared with the autoregressive command's options.
  std::string model, tokenizer, prompt_ids, prompt, prompts, out;
  std::string device = "cpu";  // cpu (f32) | cuda (bf16)
  bool overwrite = false;
  std::optional<int64_t> max_new_tokens;
  uint64_t seed = 0;
};

// Registers the diffusion-only flags on `generate` (they are refused for other models).
std::shared_ptr<DiffusionGenerateOptions> add_diffusion_generate_options(CLI::App* generate);
// Whether `model_dir`'s config.json is a diffusion_gemma one (false when it cannot be read: the
// autoregressive path reports that).
bool is_diffusion_model(const std::string& model_dir);
// Throws CLI::ValidationError when a flag of the other kind of model was given.
void check_generate_flags(const CLI::App* generate, bool diffusion);
void run_diffusion_generate(const DiffusionGenerateOptions& o);

}  // namespace g4::cli

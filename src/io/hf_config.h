// Hugging Face config.json -> ModelConfig for Gemma 4 text decoders. Accepts the flat
// Gemma4TextConfig (Gemma4ForCausalLM), the nested Gemma4Config (text_config inside,
// Gemma4ForConditionalGeneration) and DiffusionGemmaConfig (block diffusion, text_config inside),
// and both dialects for full-attention layers: published
// `global_head_dim` / `num_global_key_value_heads`, and transformers 5.x `per_layer_config`.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace g4::io {

struct RopeSpec {
  std::string type = "default";  // "default" | "proportional" | "linear"
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;
  double factor = 1.0;  // linear / proportional: inv_freq is divided by it
  bool operator==(const RopeSpec&) const = default;
};

// Everything one decoder layer needs, resolved from the config.
struct LayerSpec {
  bool sliding = true;          // layer_types[l] == "sliding_attention"
  int64_t head_dim = 0;         // d(l)
  int64_t num_kv_heads = 0;     // nKV(l)
  bool k_eq_v = false;          // attention_k_eq_v on a full layer: no v_proj, V from raw K
  bool kv_shared = false;       // l >= L - num_kv_shared_layers: owns no k/v weights
  int64_t kv_source = -1;       // layer whose K/V a shared layer uses (-1 if not shared)
  int64_t intermediate = 0;     // dense MLP width (doubled on shared layers with use_double_wide_mlp)
  bool moe = false;             // routed experts beside the dense MLP
  RopeSpec rope;
  bool operator==(const LayerSpec&) const = default;
};

// A per_layer_config entry that departs from what the scalar fields give (0 = not overridden).
struct LayerOverride {
  int64_t head_dim = 0;
  int64_t num_kv_heads = 0;
  bool operator==(const LayerOverride&) const = default;
};

// Gemma4AudioConfig (audio_config of a gemma4 config; MULTIMODAL.md 7.1), defaults as transformers'.
struct AudioConfig {
  int64_t hidden_size = 1024, num_layers = 12, num_heads = 8;
  int64_t conv_channels0 = 128, conv_channels1 = 32;  // subsampling_conv_channels
  int64_t conv_kernel_size = 5;
  int64_t chunk_size = 12, context_left = 13;  // attention_chunk_size, attention_context_left
  double logit_cap = 50.0, invalid_logit = -1e9, residual_weight = 0.5;
  double rms_norm_eps = 1e-6, gradient_clipping = 1e10;
  bool use_clipped_linears = true;
  int64_t output_proj_dims = 1536;
  bool operator==(const AudioConfig&) const = default;
};

// Gemma4VisionConfig (the vision_config of a gemma4 config) and the image token ids of the
// enclosing Gemma4Config: what the vision tower and the soft-token merge need.
struct VisionConfig {
  int64_t hidden_size = 768, intermediate_size = 3072, num_layers = 16, num_heads = 12, head_dim = 64;
  int64_t patch_size = 16, pooling_kernel_size = 3, position_embedding_size = 10240;
  double rope_theta = 100.0;
  double rms_norm_eps = 1e-6;
  bool use_clipped_linears = false;  // every q/k/v/o/gate/up/down clamps its input and output
  bool standardize = false;          // (h - std_bias) * std_scale after pooling
  int64_t image_token_id = 258880, video_token_id = 258884;
  int64_t patch_dim() const { return 3 * patch_size * patch_size; }
  bool operator==(const VisionConfig&) const = default;
};

struct ModelConfig {
  std::string architecture;      // "Gemma4ForCausalLM", "Gemma4ForConditionalGeneration", ...
  bool conditional = false;      // text weights live under model.language_model.*
  // A DiffusionGemmaForBlockDiffusion (model_type diffusion_gemma): one MoE stack run as a causal
  // encoder and a bidirectional denoiser (docs/diffusion.md); text weights under model.decoder.*.
  bool diffusion = false;
  int64_t canvas_length = 0;     // diffusion: the denoised block's length C
  int64_t image_token_id = -1;   // diffusion: replaced by pad_token_id before the encoder's embedding
  bool has_vision = false, has_audio = false;
  AudioConfig audio;  // meaningful when has_audio
  // gemma4 (not diffusion) configs with a vision_config: the tower g4 runs.
  std::optional<VisionConfig> vision;
  int64_t audio_token_id = 258881;  // gemma4 with an audio_config: the audio soft-token placeholder

  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t global_head_dim = 0, num_global_kv_heads = 0;  // 0 = not given
  int64_t hidden_size_per_layer_input = 0, vocab_size_per_layer_input = 0;
  int64_t num_kv_shared_layers = 0;
  bool use_double_wide_mlp = false, attention_k_eq_v = false;
  bool enable_moe_block = false;
  int64_t num_experts = 0, top_k_experts = 0, moe_intermediate_size = 0;
  int64_t sliding_window = 0;
  double rms_norm_eps = 1e-6;
  std::optional<double> final_logit_softcapping;
  bool tie_word_embeddings = true;
  std::string bidirectional;     // "" (causal), "vision" or "all"
  int64_t pad_token_id = 0, bos_token_id = 2;
  std::vector<int64_t> eos_token_ids;
  std::vector<std::string> layer_types;
  int64_t max_position_embeddings = 0;  // 0 = not given

  // Inputs of resolve_layers beyond the scalars above.
  std::vector<int64_t> intermediate_sizes;  // per layer when the config lists them, else empty
  RopeSpec rope_sliding{"default", 10000.0, 1.0, 1.0};
  RopeSpec rope_full{"proportional", 1000000.0, 0.25, 1.0};
  // per_layer_config entries, keyed by layer, kept only where they change the resolved value
  // (an entry repeating global_head_dim etc. is dropped), so both dialects compare equal.
  std::map<int64_t, LayerOverride> layer_overrides;

  std::vector<LayerSpec> layers;  // one per decoder layer, resolved
  nlohmann::json raw;             // the file as read, written back on export
  // Diffusion models: generation_config.json as read beside config.json (null: none), written back
  // on export; the sampler takes its defaults from it (diffusion/generation_config.h).
  nlohmann::json generation_config;

  int64_t first_kv_shared_layer() const { return num_layers - num_kv_shared_layers; }
  bool operator==(const ModelConfig&) const = default;  // compares raw too; clear it to compare models
};

// Parses and validates. Unsupported values (activation other than gelu_pytorch_tanh,
// attention_bias, unknown rope_type or layer type, inconsistent sizes) are errors naming
// `source` and the key.
// `text_keys_read` (optional) receives every key of the text decoder's config the parser looks up
// (present or not): a key outside it is one g4 ignores.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source,
                               std::set<std::string>* text_keys_read = nullptr);
ModelConfig load_model_config(const std::string& config_json_path);  // or the directory holding it
// Re-derives `layers` from the scalar fields (after a built-in config is edited by hand).
void resolve_layers(ModelConfig& c, const std::string& source);
// A config.json for this model: `raw` when the config was read from a file, else a
// Gemma4TextConfig-style document built from the fields (nested in a text_config when
// `conditional`; for `diffusion` a DiffusionGemmaConfig with a stub vision_config, so that
// transformers can build the model) that parse_model_config reads back to an equal ModelConfig
// (has_vision then true for a diffusion one).
nlohmann::json model_config_to_json(const ModelConfig& c);

}  // namespace g4::io

#include "diffusion/from_autoregressive.h"

#include <string>

#include "core/log.h"
#include "core/random.h"

namespace g4::diffusion {

namespace {

using nlohmann::json;

// Why ar cannot become a DiffusionGemma, or nullptr when it can.
const char* refusal(const io::ModelConfig& ar) {
  if (ar.diffusion) return "it already is a diffusion_gemma model";
  if (!ar.enable_moe_block) return "its layers have no routed experts (every DiffusionGemma layer is MoE)";
  if (ar.hidden_size_per_layer_input > 0) return "it has per-layer inputs, which DiffusionGemma lacks";
  if (ar.num_kv_shared_layers > 0) return "it shares K/V between layers, which DiffusionGemma does not";
  if (!ar.tie_word_embeddings) return "its LM head is not tied to the embedding (DiffusionGemma ties them)";
  if (!ar.final_logit_softcapping) return "it has no final logit softcap (DiffusionGemma always applies one)";
  if (ar.bidirectional == "all") return "its attention is bidirectional over all tokens (the encoder is causal)";
  for (int64_t w : ar.intermediate_sizes)
    if (w != ar.intermediate_sizes.front()) return "its layers have different MLP widths (DiffusionGemma has one)";
  return nullptr;
}

// A token id list as transformers writes it: one id as an int, several as a list, none as null.
json ids_json(const std::vector<int64_t>& ids) {
  if (ids.empty()) return nullptr;
  return ids.size() == 1 ? json(ids[0]) : json(ids);
}

}  // namespace

io::ModelConfig diffusion_config_from(const io::ModelConfig& ar, int64_t canvas_length) {
  if (const char* why = refusal(ar)) G4_FAIL("cannot adapt ", ar.architecture, " into a diffusion_gemma model: ", why);
  G4_CHECK(canvas_length > 0, "--canvas-length must be positive, got ", canvas_length);
  // A canvas longer than the context could never be denoised (a prompt and one block must fit).
  G4_CHECK(ar.max_position_embeddings <= 0 || canvas_length < ar.max_position_embeddings, "--canvas-length ",
           canvas_length, " does not fit the model's context length (max_position_embeddings ",
           ar.max_position_embeddings, ") with a prompt before it");
  io::ModelConfig c = ar;
  c.raw = json();
  c.generation_config = json();
  c.architecture = "DiffusionGemmaForBlockDiffusion";
  c.conditional = false;
  c.diffusion = true;
  c.canvas_length = canvas_length;
  c.image_token_id = 258880;  // DiffusionGemmaConfig's default
  if (ar.raw.is_object() && ar.raw.contains("image_token_id") && ar.raw["image_token_id"].is_number_integer())
    c.image_token_id = ar.raw["image_token_id"].get<int64_t>();
  // model_config_to_json writes a stub vision_config (transformers needs one), which reads back as this.
  c.has_vision = true;
  c.has_audio = false;
  if (!c.intermediate_sizes.empty()) c.intermediate_size = c.intermediate_sizes.front();
  c.intermediate_sizes.clear();
  c.use_double_wide_mlp = false;
  c.attention_k_eq_v = true;
  // Every layer keeps its source shape, spelt as per_layer_config entries (transformers' dialect).
  c.global_head_dim = 0;
  c.num_global_kv_heads = 0;
  c.layer_overrides.clear();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const io::LayerSpec& s = ar.layers[static_cast<size_t>(l)];
    io::LayerOverride o;
    if (!s.sliding && s.head_dim != c.head_dim) o.head_dim = s.head_dim;
    if (s.num_kv_heads != c.num_kv_heads) o.num_kv_heads = s.num_kv_heads;
    if (o.head_dim != 0 || o.num_kv_heads != 0) c.layer_overrides[l] = o;
  }
  io::resolve_layers(c, "the adapted diffusion_gemma config");
  return c;
}

json adapted_generation_config(const io::ModelConfig& ar, const json& ar_generation) {
  auto id = [&](const char* key, json fallback) {
    if (ar_generation.is_object() && ar_generation.contains(key) && !ar_generation[key].is_null())
      return ar_generation[key];
    return fallback;
  };
  // The fields transformers 5.17 writes for DiffusionGemmaGenerationConfig's global defaults
  // (DIFFUSION.md §A.4); eos_token_id is not inherited from config.json at sampling time, so it is
  // written here.
  return {{"bos_token_id", id("bos_token_id", ar.bos_token_id)},
          {"eos_token_id", id("eos_token_id", ids_json(ar.eos_token_ids))},
          {"pad_token_id", id("pad_token_id", ar.pad_token_id)},
          {"max_denoising_steps", 48},
          {"sampler_config", {{"_cls_name", "EntropyBoundSamplerConfig"}, {"entropy_bound", 0.1}}},
          {"t_min", 0.4},
          {"t_max", 0.8},
          {"stability_threshold", 1},
          {"confidence_threshold", 0.005},
          {"return_dict_in_generate", true}};
}

std::unique_ptr<model::Gemma4> adapt_autoregressive(const model::Gemma4& ar, int64_t canvas_length, uint64_t seed,
                                                    const json& ar_generation) {
  io::ModelConfig cfg = diffusion_config_from(ar.config(), canvas_length);
  cfg.generation_config = adapted_generation_config(ar.config(), ar_generation);
  G4_CHECK(ar.experts().count == ar.config().num_experts, "adapt_autoregressive needs every expert of the source");
  auto m = std::make_unique<model::Gemma4>(cfg, model::ExpertRange{}, ar.dtype(), ar.device());
  model::ParamStore& dst = m->params();
  for (const std::string& name : dst.order)
    if (ar.params().has(name)) dst.at(name).mutable_value().copy_from(ar.params().at(name).value());
  int64_t dropped = 0;
  for (const std::string& name : ar.params().order) {
    if (dst.has(name)) continue;
    const std::string v = ".self_attn.v_proj.weight";
    G4_CHECK(name.size() > v.size() && name.compare(name.size() - v.size(), v.size(), v) == 0,
             "adapt_autoregressive: the source's parameter ", name, " has no place in the diffusion model");
    ++dropped;
  }
  if (dropped > 0)
    G4_LOG("adapting to diffusion_gemma: dropped v_proj of ", dropped,
           " full-attention layers (DiffusionGemma's full layers take their values from k_proj; "
           "the adapted encoder is not the source model until fine-tuning adapts it)");

  // Zero down_proj makes the self-conditioning term exactly 0 whatever its input, so the adapted
  // denoiser starts as the stack over the normalised canvas embedding. gate/up are random so that
  // down_proj's gradient (activations x output gradient) is not 0; with them 0 too, no gradient
  // would ever reach any of the three. pre_norm ones: transformers' RMSNorm initialisation.
  const char* gate = "model.self_conditioning.gate_proj.weight";
  const char* up = "model.self_conditioning.up_proj.weight";
  fill_philox_normal(dst.at(gate).mutable_value(), seed, 0, 0.02);
  fill_philox_normal(dst.at(up).mutable_value(), seed, 1, 0.02);
  dst.at("model.self_conditioning.down_proj.weight").mutable_value().fill(0.0);
  dst.at("model.self_conditioning.pre_norm.weight").mutable_value().fill(1.0);

  for (const auto& [name, b] : ar.params().buffers)
    if (b.kind == model::ParamKind::kPerExpertScale) dst.set_buffer(name, b.kind, b.value.clone());
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const Tensor& s = ar.params().buffer(model::layer_prefix(l) + "layer_scalar");
    dst.set_buffer(model::layer_prefix(l) + "layer_scalar", model::ParamKind::kLayerScalar, s.clone());
    dst.set_buffer(model::encoder_layer_scalar_name(l), model::ParamKind::kLayerScalar, s.clone());
  }
  return m;
}

}  // namespace g4::diffusion

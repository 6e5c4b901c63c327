#include "model/params.h"

#include <iterator>

namespace g4::model {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }
std::string encoder_layer_scalar_name(int64_t layer) { return layer_prefix(layer) + "encoder_layer_scalar"; }

namespace {
// Indexed by ParamKind.
constexpr const char* kKindNames[] = {
    "token_embedding",
    "per_layer_embedding",
    "per_layer_model_projection",
    "per_layer_input",
    "norm",
    "attention",
    "mlp",
    "router",
    "router_scale",
    "expert_gate_up",
    "expert_down",
    "lm_head",
    "self_conditioning",
    "lora_a",
    "lora_b",
    "expert_lora_a",
    "expert_lora_b",
    "vision_tower",
    "vision_embedding",
    "audio_tower",
    "audio_embedding",
    "layer_scalar",
    "per_expert_scale",
    "pass_through",
    "vision_clip",
    "vision_standardize",
    "audio_clip",
};
static_assert(std::size(kKindNames) == std::size(kAllParamKinds), "one name per kind");
}  // namespace

const char* param_kind_name(ParamKind kind) {
  const auto i = static_cast<size_t>(kind);
  G4_CHECK(i < std::size(kKindNames), "unknown parameter kind ", i);
  return kKindNames[i];
}

bool split_by_expert(ParamKind kind) {
  return kind == ParamKind::kExpertGateUp || kind == ParamKind::kExpertDown || kind == ParamKind::kPerExpertScale ||
         kind == ParamKind::kExpertLoraA || kind == ParamKind::kExpertLoraB;
}

bool is_embedding(ParamKind kind) {
  return kind == ParamKind::kTokenEmbedding || kind == ParamKind::kPerLayerEmbedding;
}

bool is_lora(ParamKind kind) {
  return kind == ParamKind::kLoraA || kind == ParamKind::kLoraB || kind == ParamKind::kExpertLoraA ||
         kind == ParamKind::kExpertLoraB;
}

bool is_tower_buffer(ParamKind kind) {
  return kind == ParamKind::kVisionClip || kind == ParamKind::kVisionStandardize || kind == ParamKind::kAudioClip;
}

std::vector<ParamSpec> native_param_specs(const io::ModelConfig& c, ExpertRange experts) {
  std::vector<ParamSpec> s;
  const int64_t H = c.hidden_size, L = c.num_layers, P = c.hidden_size_per_layer_input;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, ParamKind::kTokenEmbedding});
  if (P > 0) {
    s.push_back(
        {"model.embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, L * P}, ParamKind::kPerLayerEmbedding});
    s.push_back({"model.per_layer_model_projection.weight", {L * P, H}, ParamKind::kPerLayerModelProjection});
    s.push_back({"model.per_layer_projection_norm.weight", {P}, ParamKind::kNorm});
  }
  const int64_t E = experts.count > 0 ? experts.count : c.num_experts;
  for (int64_t l = 0; l < L; ++l) {
    const io::LayerSpec& ls = c.layers[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    const int64_t d = ls.head_dim, nkv = ls.num_kv_heads;
    s.push_back({p + "input_layernorm.weight", {H}, ParamKind::kNorm});
    s.push_back({p + "self_attn.q_proj.weight", {c.num_heads * d, H}, ParamKind::kAttention});
    s.push_back({p + "self_attn.q_norm.weight", {d}, ParamKind::kNorm});
    if (!ls.kv_shared) {
      s.push_back({p + "self_attn.k_proj.weight", {nkv * d, H}, ParamKind::kAttention});
      if (!ls.k_eq_v) s.push_back({p + "self_attn.v_proj.weight", {nkv * d, H}, ParamKind::kAttention});
      s.push_back({p + "self_attn.k_norm.weight", {d}, ParamKind::kNorm});
    }
    s.push_back({p + "self_attn.o_proj.weight", {H, c.num_heads * d}, ParamKind::kAttention});
    s.push_back({p + "post_attention_layernorm.weight", {H}, ParamKind::kNorm});
    s.push_back({p + "pre_feedforward_layernorm.weight", {H}, ParamKind::kNorm});
    s.push_back({p + "mlp.gate_proj.weight", {ls.intermediate, H}, ParamKind::kMlp});
    s.push_back({p + "mlp.up_proj.weight", {ls.intermediate, H}, ParamKind::kMlp});
    s.push_back({p + "mlp.down_proj.weight", {H, ls.intermediate}, ParamKind::kMlp});
    s.push_back({p + "post_feedforward_layernorm.weight", {H}, ParamKind::kNorm});
    if (ls.moe) {
      const int64_t I = c.moe_intermediate_size;
      s.push_back({p + "post_feedforward_layernorm_1.weight", {H}, ParamKind::kNorm});
      s.push_back({p + "post_feedforward_layernorm_2.weight", {H}, ParamKind::kNorm});
      s.push_back({p + "pre_feedforward_layernorm_2.weight", {H}, ParamKind::kNorm});
      s.push_back({p + "moe.gate.proj.weight", {c.num_experts, H}, ParamKind::kRouter});
      s.push_back({p + "moe.gate.scale", {H}, ParamKind::kRouterScale});
      s.push_back({p + "moe.experts.gate_and_up_projs", {E, H, 2 * I}, ParamKind::kExpertGateUp});
      s.push_back({p + "moe.experts.down_projs", {E, I, H}, ParamKind::kExpertDown});
    }
    if (P > 0) {
      s.push_back({p + "per_layer_input_gate.weight", {P, H}, ParamKind::kPerLayerInput});
      s.push_back({p + "per_layer_projection.weight", {H, P}, ParamKind::kPerLayerInput});
      s.push_back({p + "post_per_layer_input_norm.weight", {H}, ParamKind::kNorm});
    }
  }
  s.push_back({"model.norm.weight", {H}, ParamKind::kNorm});
  if (c.diffusion) {
    // The denoiser's input MLP over the expected embedding of the previous step's logits.
    const int64_t I = c.intermediate_size;
    s.push_back({"model.self_conditioning.pre_norm.weight", {H}, ParamKind::kNorm});
    s.push_back({"model.self_conditioning.gate_proj.weight", {I, H}, ParamKind::kSelfConditioning});
    s.push_back({"model.self_conditioning.up_proj.weight", {I, H}, ParamKind::kSelfConditioning});
    s.push_back({"model.self_conditioning.down_proj.weight", {H, I}, ParamKind::kSelfConditioning});
  }
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, H}, ParamKind::kLmHead});
  if (c.vision) {
    const std::vector<ParamSpec> v = vision_param_specs(*c.vision, H);
    s.insert(s.end(), v.begin(), v.end());
  }
  // A gemma4 checkpoint's audio tower (a diffusion model's config never keeps one).
  if (c.has_audio && !c.diffusion) {
    const std::vector<ParamSpec> a = audio_param_specs(c.audio, H);
    s.insert(s.end(), a.begin(), a.end());
  }
  return s;
}

std::string vision_layer_prefix(int64_t layer) {
  return kVisionPrefix + "encoder.layers." + std::to_string(layer) + ".";
}

std::vector<std::string> vision_clipped_linears(const io::VisionConfig& v) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < v.num_layers; ++l)
    for (const char* m : {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "self_attn.o_proj.",
                          "mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj."})
      out.push_back(vision_layer_prefix(l) + m);
  return out;
}

std::vector<ParamSpec> vision_param_specs(const io::VisionConfig& v, int64_t text_hidden) {
  const int64_t Hv = v.hidden_size, Iv = v.intermediate_size, d = v.head_dim, HD = v.num_heads * v.head_dim;
  std::vector<ParamSpec> s;
  s.push_back({kVisionPrefix + "patch_embedder.input_proj.weight", {Hv, v.patch_dim()}, ParamKind::kVisionTower});
  s.push_back({kVisionPrefix + "patch_embedder.position_embedding_table", {2, v.position_embedding_size, Hv},
               ParamKind::kVisionTower});
  for (int64_t l = 0; l < v.num_layers; ++l) {
    const std::string p = vision_layer_prefix(l);
    for (const char* n : {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                          "post_feedforward_layernorm"})
      s.push_back({p + n + ".weight", {Hv}, ParamKind::kNorm});
    s.push_back({p + "self_attn.q_proj.linear.weight", {HD, Hv}, ParamKind::kVisionTower});
    s.push_back({p + "self_attn.k_proj.linear.weight", {HD, Hv}, ParamKind::kVisionTower});
    s.push_back({p + "self_attn.v_proj.linear.weight", {HD, Hv}, ParamKind::kVisionTower});
    s.push_back({p + "self_attn.o_proj.linear.weight", {Hv, HD}, ParamKind::kVisionTower});
    s.push_back({p + "self_attn.q_norm.weight", {d}, ParamKind::kNorm});
    s.push_back({p + "self_attn.k_norm.weight", {d}, ParamKind::kNorm});
    s.push_back({p + "mlp.gate_proj.linear.weight", {Iv, Hv}, ParamKind::kVisionTower});
    s.push_back({p + "mlp.up_proj.linear.weight", {Iv, Hv}, ParamKind::kVisionTower});
    s.push_back({p + "mlp.down_proj.linear.weight", {Hv, Iv}, ParamKind::kVisionTower});
  }
  s.push_back({kVisionEmbedPrefix + "embedding_projection.weight", {text_hidden, Hv}, ParamKind::kVisionEmbedding});
  return s;
}

std::vector<std::string> audio_clipped_linears(const io::AudioConfig& a) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < a.num_layers; ++l) {
    const std::string L = kAudioPrefix + "layers." + std::to_string(l) + ".";
    for (const char* m : {"feed_forward1.ffw_layer_1.", "feed_forward1.ffw_layer_2.", "feed_forward2.ffw_layer_1.",
                          "feed_forward2.ffw_layer_2.", "self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.",
                          "self_attn.post.", "lconv1d.linear_start.", "lconv1d.linear_end."})
      out.push_back(L + m);
  }
  return out;
}

std::vector<ParamSpec> audio_param_specs(const io::AudioConfig& a, int64_t text_hidden) {
  const int64_t H = a.hidden_size, D = H / a.num_heads, C0 = a.conv_channels0, C1 = a.conv_channels1;
  std::vector<ParamSpec> s;
  auto tower = [&](const std::string& name, const Shape& shape) {
    s.push_back({kAudioPrefix + name, shape, ParamKind::kAudioTower});
  };
  auto norm = [&](const std::string& name, int64_t n) { s.push_back({kAudioPrefix + name, {n}, ParamKind::kNorm}); };
  const std::string sub = "subsample_conv_projection.";
  tower(sub + "layer0.conv.weight", {C0, 1, 3, 3});
  norm(sub + "layer0.norm.weight", C0);
  tower(sub + "layer1.conv.weight", {C1, C0, 3, 3});
  norm(sub + "layer1.norm.weight", C1);
  // The two stride-2 convolutions leave ceil(ceil(128 / 2) / 2) = 32 mel columns of C1 channels.
  tower(sub + "input_proj_linear.weight", {H, C0 / 4 * C1});
  for (int64_t l = 0; l < a.num_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    for (const char* ff : {"feed_forward1.", "feed_forward2."}) {
      tower(L + ff + "ffw_layer_1.linear.weight", {4 * H, H});
      tower(L + ff + "ffw_layer_2.linear.weight", {H, 4 * H});
      norm(L + ff + "pre_layer_norm.weight", H);
      norm(L + ff + "post_layer_norm.weight", H);
    }
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "post"})
      tower(L + "self_attn." + proj + ".linear.weight", {H, H});
    tower(L + "self_attn.relative_k_proj.weight", {H, H});
    tower(L + "self_attn.per_dim_scale", {D});
    tower(L + "lconv1d.linear_start.linear.weight", {2 * H, H});
    tower(L + "lconv1d.linear_end.linear.weight", {H, H});
    tower(L + "lconv1d.depthwise_conv1d.weight", {H, 1, a.conv_kernel_size});
    norm(L + "lconv1d.pre_layer_norm.weight", H);
    norm(L + "lconv1d.conv_norm.weight", H);
    for (const char* n : {"norm_pre_attn", "norm_post_attn", "norm_out"}) norm(L + n + ".weight", H);
  }
  tower("output_proj.weight", {a.output_proj_dims, H});
  tower("output_proj.bias", {a.output_proj_dims});
  s.push_back({kAudioEmbedPrefix + "embedding_projection.weight", {text_hidden, a.output_proj_dims},
               ParamKind::kAudioEmbedding});
  return s;
}

ag::Var& ParamStore::at(const std::string& name) {
  auto it = params.find(name);
  G4_CHECK(it != params.end(), "no parameter named ", name);
  return it->second;
}

const ag::Var& ParamStore::at(const std::string& name) const {
  auto it = params.find(name);
  G4_CHECK(it != params.end(), "no parameter named ", name);
  return it->second;
}

void ParamStore::add(const std::string& name, ParamKind kind, Tensor value) {
  G4_CHECK(!params.count(name), "parameter ", name, " added twice");
  order.push_back(name);
  kinds_[name] = kind;
  const bool bf16 = value.dtype() == DType::BF16;
  auto it = params.emplace(name, ag::Var(std::move(value), true)).first;
  it->second.impl()->fp32_grad = bf16;
}

void ParamStore::set_buffer(const std::string& name, ParamKind kind, Tensor value) {
  G4_CHECK(!params.count(name), "buffer ", name, " has the name of a parameter");
  buffers.insert_or_assign(name, Buffer{std::move(value), kind});
}

const Tensor& ParamStore::buffer(const std::string& name) const {
  auto it = buffers.find(name);
  G4_CHECK(it != buffers.end(), "no buffer named ", name);
  return it->second.value;
}

ParamKind ParamStore::kind(const std::string& name) const {
  if (auto it = kinds_.find(name); it != kinds_.end()) return it->second;
  auto b = buffers.find(name);
  G4_CHECK(b != buffers.end(), "no parameter or buffer named ", name);
  return b->second.kind;
}

int64_t ParamStore::numel() const {
  int64_t n = 0;
  for (const auto& [name, v] : params) n += v.value().numel();
  return n;
}

void ParamStore::zero_grad() {
  for (auto& [name, v] : params) v.zero_grad();
}

}  // namespace g4::model

#include "model/params.h"

namespace g4::model {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

bool is_expert_parameter(const std::string& native_name) {
  return native_name.find(".moe.experts.") != std::string::npos;
}

std::vector<ParamSpec> native_param_specs(const io::ModelConfig& c, ExpertRange experts) {
  std::vector<ParamSpec> s;
  const int64_t H = c.hidden_size, L = c.num_layers, P = c.hidden_size_per_layer_input;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, ParamSpec::kEmbedding});
  if (P > 0) {
    s.push_back({"model.embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, L * P}, ParamSpec::kEmbedding});
    s.push_back({"model.per_layer_model_projection.weight", {L * P, H}, ParamSpec::kMatrix});
    s.push_back({"model.per_layer_projection_norm.weight", {P}, ParamSpec::kNormWeight});
  }
  const int64_t E = experts.count > 0 ? experts.count : c.num_experts;
  for (int64_t l = 0; l < L; ++l) {
    const io::LayerSpec& ls = c.layers[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    const int64_t d = ls.head_dim, nkv = ls.num_kv_heads;
    s.push_back({p + "input_layernorm.weight", {H}, ParamSpec::kNormWeight});
    s.push_back({p + "self_attn.q_proj.weight", {c.num_heads * d, H}, ParamSpec::kMatrix});
    s.push_back({p + "self_attn.q_norm.weight", {d}, ParamSpec::kNormWeight});
    if (!ls.kv_shared) {
      s.push_back({p + "self_attn.k_proj.weight", {nkv * d, H}, ParamSpec::kMatrix});
      if (!ls.k_eq_v) s.push_back({p + "self_attn.v_proj.weight", {nkv * d, H}, ParamSpec::kMatrix});
      s.push_back({p + "self_attn.k_norm.weight", {d}, ParamSpec::kNormWeight});
    }
    s.push_back({p + "self_attn.o_proj.weight", {H, c.num_heads * d}, ParamSpec::kMatrix});
    s.push_back({p + "post_attention_layernorm.weight", {H}, ParamSpec::kNormWeight});
    s.push_back({p + "pre_feedforward_layernorm.weight", {H}, ParamSpec::kNormWeight});
    s.push_back({p + "mlp.gate_proj.weight", {ls.intermediate, H}, ParamSpec::kMatrix});
    s.push_back({p + "mlp.up_proj.weight", {ls.intermediate, H}, ParamSpec::kMatrix});
    s.push_back({p + "mlp.down_proj.weight", {H, ls.intermediate}, ParamSpec::kMatrix});
    s.push_back({p + "post_feedforward_layernorm.weight", {H}, ParamSpec::kNormWeight});
    if (ls.moe) {
      const int64_t I = c.moe_intermediate_size;
      s.push_back({p + "post_feedforward_layernorm_1.weight", {H}, ParamSpec::kNormWeight});
      s.push_back({p + "post_feedforward_layernorm_2.weight", {H}, ParamSpec::kNormWeight});
      s.push_back({p + "pre_feedforward_layernorm_2.weight", {H}, ParamSpec::kNormWeight});
      s.push_back({p + "moe.gate.proj.weight", {c.num_experts, H}, ParamSpec::kMatrix});
      s.push_back({p + "moe.gate.scale", {H}, ParamSpec::kScale});
      s.push_back({p + "moe.experts.gate_and_up_projs", {E, H, 2 * I}, ParamSpec::kExperts});
      s.push_back({p + "moe.experts.down_projs", {E, I, H}, ParamSpec::kExperts});
    }
    if (P > 0) {
      s.push_back({p + "per_layer_input_gate.weight", {P, H}, ParamSpec::kMatrix});
      s.push_back({p + "per_layer_projection.weight", {H, P}, ParamSpec::kMatrix});
      s.push_back({p + "post_per_layer_input_norm.weight", {H}, ParamSpec::kNormWeight});
    }
  }
  s.push_back({"model.norm.weight", {H}, ParamSpec::kNormWeight});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, H}, ParamSpec::kMatrix});
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

void ParamStore::add(const std::string& name, Tensor value) {
  G4_CHECK(!params.count(name), "parameter ", name, " added twice");
  order.push_back(name);
  const bool bf16 = value.dtype() == DType::BF16;
  auto it = params.emplace(name, ag::Var(std::move(value), true)).first;
  it->second.impl()->fp32_grad = bf16;
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

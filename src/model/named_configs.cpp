#include "model/named_configs.h"

#include "core/error.h"

namespace g4::model {

namespace {
nlohmann::json base(int64_t vocab) {
  return {
      {"architectures", {"Gemma4ForCausalLM"}},
      {"model_type", "gemma4_text"},
      {"vocab_size", vocab},
      {"vocab_size_per_layer_input", vocab},
      {"hidden_size", 128},
      {"intermediate_size", 256},
      {"num_hidden_layers", 4},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"head_dim", 32},
      {"global_head_dim", 64},
      {"num_global_key_value_heads", 1},
      {"sliding_window", 64},
      {"layer_types", {"sliding_attention", "sliding_attention", "sliding_attention", "full_attention"}},
      {"rms_norm_eps", 1e-6},
      {"final_logit_softcapping", 30.0},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"hidden_size_per_layer_input", 0},
      {"num_kv_shared_layers", 0},
      {"attention_k_eq_v", false},
      {"enable_moe_block", false},
      {"tie_word_embeddings", true},
      {"pad_token_id", 0},
      {"eos_token_id", 1},
      {"bos_token_id", 2},
      {"max_position_embeddings", 4096},
      {"initializer_range", 0.02},
      {"rope_parameters",
       {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
        {"full_attention", {{"rope_type", "proportional"}, {"rope_theta", 1000000.0}, {"partial_rotary_factor", 0.25}}}}},
  };
}
}  // namespace

std::vector<std::string> named_config_names() { return {"tiny-dense", "tiny-moe"}; }

nlohmann::json named_config(const std::string& name, const nlohmann::json& overrides) {
  nlohmann::json j = base(2048);
  if (name == "tiny-moe") {
    // 26B-A4B in miniature: dense MLP beside routed experts, K=V on full layers.
    j["enable_moe_block"] = true;
    j["num_experts"] = 8;
    j["top_k_experts"] = 2;
    j["moe_intermediate_size"] = 64;
    j["intermediate_size"] = 128;
    j["attention_k_eq_v"] = true;
  } else if (name != "tiny-dense") {
    std::string known;
    for (const auto& n : named_config_names()) known += (known.empty() ? "" : ", ") + n;
    G4_FAIL("unknown built-in model '", name, "' (known: ", known, ")");
  }
  G4_CHECK(overrides.is_object(), "model.config overrides must be a mapping of config.json keys");
  for (auto it = overrides.begin(); it != overrides.end(); ++it) j[it.key()] = it.value();
  if (overrides.contains("num_hidden_layers") && !overrides.contains("layer_types")) {
    // Gemma 4's pattern: full attention every fourth layer and always last.
    const int64_t L = j["num_hidden_layers"].get<int64_t>();
    nlohmann::json types = nlohmann::json::array();
    for (int64_t l = 0; l < L; ++l)
      types.push_back((l % 4 == 3 || l == L - 1) ? "full_attention" : "sliding_attention");
    j["layer_types"] = types;
  }
  return j;
}

}  // namespace g4::model

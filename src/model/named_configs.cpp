#include "model/named_configs.h"

#include "core/error.h"
#include "io/json_input.h"

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

// The released models' text widths (config.json of google/gemma-4-26B-A4B, gemma-4-E4B and
// gemma-4-31B), for benchmarks and training from scratch at real size; num_hidden_layers is
// usually overridden. Each model's keys over what all three share.
nlohmann::json real_shape(const std::string& name) {
  nlohmann::json j = base(262144);
  j.update({{"max_position_embeddings", 131072}, {"head_dim", 256}, {"global_head_dim", 512},
            {"num_global_key_value_heads", 2}});
  using W = nlohmann::json;
  if (name == "gemma-4-26b-a4b")
    j.update(W{{"hidden_size", 2816}, {"intermediate_size", 2112}, {"num_hidden_layers", 30},
               {"num_attention_heads", 16}, {"num_key_value_heads", 8}, {"sliding_window", 1024},
               {"attention_k_eq_v", true}, {"enable_moe_block", true}, {"num_experts", 128},
               {"top_k_experts", 8}, {"moe_intermediate_size", 704}});
  else if (name == "gemma-4-31b")
    j.update(W{{"hidden_size", 5376}, {"intermediate_size", 21504}, {"num_hidden_layers", 60},
               {"num_attention_heads", 32}, {"num_key_value_heads", 16}, {"num_global_key_value_heads", 4},
               {"sliding_window", 1024}, {"attention_k_eq_v", true}});
  else  // gemma-4-e4b
    j.update(W{{"hidden_size", 2560}, {"intermediate_size", 10240}, {"num_hidden_layers", 42},
               {"num_attention_heads", 8}, {"num_key_value_heads", 2}, {"sliding_window", 512},
               {"hidden_size_per_layer_input", 256}, {"num_kv_shared_layers", 18}});
  return j;
}

bool is_real_shape(const std::string& name) {
  return name == "gemma-4-26b-a4b" || name == "gemma-4-e4b" || name == "gemma-4-31b";
}
std::vector<std::string> named_config_names() {
  return {"tiny-dense", "tiny-moe", "gemma-4-26b-a4b", "gemma-4-e4b", "gemma-4-31b", "diffusiongemma-26b-a4b"};
}

namespace {
// DiffusionGemma 26B-A4B (DIFFUSION.md §A): the 26B-A4B text stack as a diffusion_gemma_text config
// with a 256-token canvas. The overrides apply to the text config.
nlohmann::json diffusion_26b_a4b(const nlohmann::json& overrides) {
  nlohmann::json text = named_config("gemma-4-26b-a4b", overrides);
  for (const char* k : {"architectures", "enable_moe_block", "attention_k_eq_v", "hidden_size_per_layer_input",
                        "vocab_size_per_layer_input", "num_kv_shared_layers"})
    text.erase(k);
  text["model_type"] = "diffusion_gemma_text";
  return {{"architectures", {"DiffusionGemmaForBlockDiffusion"}},
          {"model_type", "diffusion_gemma"},
          {"canvas_length", 256},
          {"tie_word_embeddings", true},
          {"text_config", text}};
}
}  // namespace

int64_t named_config_depth(const std::string& name) {
  if (name == "diffusiongemma-26b-a4b") return named_config_depth("gemma-4-26b-a4b");
  return is_real_shape(name) ? real_shape(name).at("num_hidden_layers").get<int64_t>() : 0;
}

nlohmann::json named_config(const std::string& name, const nlohmann::json& overrides) {
  if (name == "diffusiongemma-26b-a4b") return diffusion_26b_a4b(overrides);
  nlohmann::json j = is_real_shape(name) ? real_shape(name) : base(2048);
  if (is_real_shape(name)) {
  } else if (name == "tiny-moe") {
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
  if (is_real_shape(name) || (overrides.contains("num_hidden_layers") && !overrides.contains("layer_types"))) {
    // Gemma 4's pattern: full attention every sixth layer (every fourth in the tiny shapes) and
    // always last, so a short stack still has a full-attention (head dim 512) layer.
    const int64_t L = io::json_int(j, "num_hidden_layers", "model.config");
    const int64_t every = is_real_shape(name) ? 6 : 4;
    nlohmann::json types = nlohmann::json::array();
    for (int64_t l = 0; l < L; ++l)
      types.push_back((l % every == every - 1 || l == L - 1) ? "full_attention" : "sliding_attention");
    j["layer_types"] = types;
    // E4B's last 18 of 42 layers reuse earlier K/V; a shorter stack (benchmarks) shares none.
    if (name == "gemma-4-e4b" && !overrides.contains("num_kv_shared_layers"))
      j["num_kv_shared_layers"] = L >= 42 ? 18 : 0;
  }
  return j;
}

nlohmann::json named_multimodal_config(const std::string& name, const nlohmann::json& overrides) {
  G4_CHECK(is_real_shape(name), "built-in model '", name, "' has no multimodal form (gemma-4-e4b, gemma-4-26b-a4b and ",
           "gemma-4-31b have)");
  nlohmann::json text = named_config(name, overrides);
  text.erase("architectures");
  const bool small = name == "gemma-4-e4b";  // E2B/E4B's tower; 26B-A4B and 31B share the larger one
  // Only 26B-A4B and 31B let an image's tokens see each other on sliding layers.
  if (!small) text["use_bidirectional_attention"] = "vision";
  const int64_t heads = small ? 12 : 16;
  const nlohmann::json vision = {{"model_type", "gemma4_vision"},
                                 {"hidden_size", small ? 768 : 1152},
                                 {"intermediate_size", small ? 3072 : 4304},
                                 {"num_hidden_layers", small ? 16 : 27},
                                 {"num_attention_heads", heads},
                                 {"num_key_value_heads", heads},
                                 {"head_dim", small ? 64 : 72},
                                 {"patch_size", 16},
                                 {"pooling_kernel_size", 3},
                                 {"position_embedding_size", 10240},
                                 {"default_output_length", 280},
                                 {"use_clipped_linears", small},
                                 {"standardize", !small},
                                 {"hidden_activation", "gelu_pytorch_tanh"},
                                 {"rms_norm_eps", 1e-6},
                                 {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 100.0}}}};
  nlohmann::json audio = nullptr;
  if (small)
    audio = {{"model_type", "gemma4_audio"},
             {"hidden_size", 1024},
             {"num_hidden_layers", 12},
             {"num_attention_heads", 8},
             {"subsampling_conv_channels", {128, 32}},
             {"conv_kernel_size", 5},
             {"attention_chunk_size", 12},
             {"attention_context_left", 13},
             {"attention_context_right", 0},
             {"attention_logit_cap", 50.0},
             {"attention_invalid_logits_value", -1e9},
             {"residual_weight", 0.5},
             {"hidden_act", "silu"},
             {"gradient_clipping", 1e10},
             {"output_proj_dims", 1536},
             {"use_clipped_linears", true},
             {"rms_norm_eps", 1e-6}};
  return {{"architectures", {"Gemma4ForConditionalGeneration"}},
          {"model_type", "gemma4"},
          {"text_config", text},
          {"vision_config", vision},
          {"audio_config", audio},
          {"image_token_id", 258880},
          {"boi_token_id", 255999},
          {"eoi_token_id", 258882},
          {"video_token_id", 258884},
          {"audio_token_id", 258881},
          {"boa_token_id", 256000},
          {"eoa_token_id", 258883},
          {"eoa_token_index", 258883},
          {"tie_word_embeddings", true}};
}

}  // namespace g4::model

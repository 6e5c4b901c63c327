// Configs g4 must refuse: each error names the config file and the offending key.
#include "io/hf_config.h"
#include "io/io_test_util.h"

namespace g4::io {
namespace {

using nlohmann::json;

json flat() {
  return json::parse(test::read_bytes(test::fixture_dir("tiny-dense-keqv") + "/config.json"));
}
json nested() {
  return json::parse(test::read_bytes(test::fixture_dir("tiny-moe") + "/config.json"));
}

const char* kSrc = "some/dir/config.json";

TEST(HfConfigErrors, MissingRequiredKeys) {
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "intermediate_size"}) {
    json j = flat();
    j.erase(key);
    EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, std::string("'") + key + "'", "missing");
    json n = nested();  // nested keys are named with their path
    n["text_config"][key] = nullptr;
    EXPECT_G4_ERROR(parse_model_config(n, kSrc), kSrc, std::string("'text_config.") + key + "'", "missing");
  }
}

TEST(HfConfigErrors, NonPositiveAndMistypedSizes) {
  for (const char* key : {"vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                          "intermediate_size", "sliding_window"}) {
    json j = flat();
    j[key] = 0;
    EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, std::string("'") + key + "'", "positive");
  }
  json j = flat();
  j["hidden_size"] = "64";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'hidden_size'", "integer");
  j = flat();
  j["num_hidden_layers"] = 0;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'num_hidden_layers'", "positive");
  j = flat();
  j["intermediate_size"] = {96, 96};
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'intermediate_size'", "num_hidden_layers is 6");
  j = flat();
  j["per_layer_config"]["2"]["head_dim"] = -32;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'per_layer_config.2.head_dim'", "positive");
}

TEST(HfConfigErrors, HeadsNotDivisibleByKvHeads) {
  json j = flat();
  j["per_layer_config"]["5"]["num_key_value_heads"] = 3;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "num_attention_heads", "3 key/value heads of layer 5");
  j = flat();
  j["num_key_value_heads"] = 3;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "num_attention_heads", "layer 0");
}

TEST(HfConfigErrors, UnsupportedFeatures) {
  json j = flat();
  j["hidden_activation"] = "gelu";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'hidden_activation'", "gelu_pytorch_tanh");
  j = flat();
  j.erase("hidden_activation");
  j["hidden_act"] = "silu";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'hidden_act'", "silu");
  j = flat();
  j["attention_bias"] = true;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'attention_bias'", "not supported");
  j = flat();
  j["use_bidirectional_attention"] = "some";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'use_bidirectional_attention'", "some");
  j = flat();
  j["per_layer_config"]["2"]["sliding_window"] = 4;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'per_layer_config.2.sliding_window'", "not supported");
  j = flat();
  j["per_layer_config"]["9"] = {{"head_dim", 32}};
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'per_layer_config.9'");
}

TEST(HfConfigErrors, RopeTypes) {
  for (const char* type : {"yarn", "llama3", "dynamic", "longrope"}) {
    json j = flat();
    j["rope_parameters"]["full_attention"]["rope_type"] = type;
    EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'rope_parameters.full_attention.rope_type'",
                    "unsupported rope_type", type);
  }
  json j = flat();
  j["rope_parameters"].erase("sliding_attention");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'rope_parameters.sliding_attention'", "missing");
  j = nested();
  j["text_config"]["rope_parameters"]["sliding_attention"]["rope_theta"] = -1;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.rope_parameters.sliding_attention.rope_theta'");
  j = flat();
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"rope_type", "yarn"}};
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'rope_scaling'", "unsupported rope_type");
}

TEST(HfConfigErrors, LayerTypes) {
  json j = flat();
  j["layer_types"].push_back("full_attention");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'layer_types'", "7 entries", "num_hidden_layers is 6");
  j = flat();
  j["layer_types"][1] = "chunked_attention";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'layer_types'", "chunked_attention");
  j = flat();
  j.erase("layer_types");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'layer_types'", "sliding_window_pattern");
}

TEST(HfConfigErrors, ModelType) {
  json j = flat();
  j["model_type"] = "gemma3_text";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "not a Gemma 4 config", "gemma3_text");
  j.erase("model_type");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "not a Gemma 4 config");
  j = nested();
  j.erase("text_config");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config'");
  EXPECT_G4_ERROR(parse_model_config(json::array(), kSrc), kSrc, "not a JSON object");
}

TEST(HfConfigErrors, MoeSettings) {
  json j = nested();
  j["text_config"]["top_k_experts"] = 9;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.top_k_experts'", "num_experts");
  j = nested();
  j["text_config"]["num_experts"] = nullptr;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.num_experts'");
  j = nested();
  j["text_config"]["moe_intermediate_size"] = 0;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.moe_intermediate_size'");
}

TEST(HfConfigErrors, KvSharingWithoutSource) {
  json j = flat();
  j["num_kv_shared_layers"] = 6;  // first shared layer 0: nothing earlier to share from
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'num_kv_shared_layers'", "layer 0");
  j["num_kv_shared_layers"] = 4;  // layers 2..5 shared; layer 2 (full) has no full layer before it
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'num_kv_shared_layers'", "layer 2", "full_attention");
  j["num_kv_shared_layers"] = 7;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'num_kv_shared_layers'");
}

// Found by fuzz/model_config.cpp: sizes that used to run away (a layer table of 10^12 entries from
// sliding_window_pattern), overflow (a doubled MLP width past INT64_MAX) or reach an undefined
// double -> int64 cast (1e300) are errors naming the key.
TEST(HfConfigErrors, AbsurdSizesAreRefusedBeforeUse) {
  json j = flat();
  j["vocab_size"] = 1e300;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'vocab_size'", "must be an integer, got 1e+300");
  j = flat();
  j["hidden_size"] = 18446744073709551615ull;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'hidden_size'", "more than the largest integer");
  j = flat();
  j.erase("layer_types");
  j["sliding_window_pattern"] = 2;
  j["num_hidden_layers"] = 1000000000000;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'num_hidden_layers'", "more than g4 supports (4096)");
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "head_dim", "sliding_window",
                          "global_head_dim"}) {
    j = flat();
    j[key] = int64_t(1) << 62;
    EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, std::string("'") + key + "'", "more than g4 supports");
  }
  j = flat();
  j["per_layer_config"]["2"]["head_dim"] = int64_t(1) << 40;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'per_layer_config.2.head_dim'", "more than g4 supports");
  // tools/probe_cli.py: a negative context length was read as "none given", turning the context
  // checks off; 0 keeps meaning that.
  j = flat();
  j["max_position_embeddings"] = -1;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'max_position_embeddings'", "must be positive, got -1");
  j["max_position_embeddings"] = 0;
  EXPECT_EQ(parse_model_config(j, kSrc).max_position_embeddings, 0);
}

json diffusion() {
  return json::parse(test::read_bytes(test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a/config.json"));
}

// What DiffusionGemma fixes (DIFFUSION.md §A): keys that say otherwise are refused by name.
TEST(HfConfigErrors, DiffusionGemma) {
  json j = diffusion();
  j["tie_word_embeddings"] = false;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'tie_word_embeddings'", "is false");
  j = diffusion();
  j["text_config"]["tie_word_embeddings"] = false;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "tie_word_embeddings", "is false");
  j = diffusion();
  j["text_config"]["attention_k_eq_v"] = false;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.attention_k_eq_v'", "no v_proj");
  for (const char* key : {"num_experts", "top_k_experts", "moe_intermediate_size"}) {
    j = diffusion();
    j["text_config"].erase(key);
    EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, std::string("'text_config.") + key + "'", "missing");
  }
  j = diffusion();
  j["text_config"]["model_type"] = "gemma4_text";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.model_type'", "gemma4_text", "diffusion_gemma_text");
  j = diffusion();
  j["model_type"] = "gemma4";  // a Gemma 4 config must not hold a diffusion text config either
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.model_type'", "diffusion_gemma_text");
  j = diffusion();
  j.erase("text_config");
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config'", "diffusion_gemma");
  j = diffusion();
  j["canvas_length"] = 0;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'canvas_length'", "got 0");
  j = diffusion();
  j["text_config"]["hidden_size_per_layer_input"] = 16;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.hidden_size_per_layer_input'", "per-layer");
  j = diffusion();
  j["text_config"]["num_kv_shared_layers"] = 2;
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.num_kv_shared_layers'", "shares no K/V");
  j = diffusion();
  j["text_config"]["use_bidirectional_attention"] = "all";
  EXPECT_G4_ERROR(parse_model_config(j, kSrc), kSrc, "'text_config.use_bidirectional_attention'", "\"all\"");
}

TEST(HfConfigErrors, Files) {
  test::TempDir tmp;
  EXPECT_G4_ERROR(load_model_config(tmp / "config.json"), tmp / "config.json", "cannot open");
  test::write_text(tmp / "config.json", "{\"model_type\": ");
  EXPECT_G4_ERROR(load_model_config(tmp / "config.json"), tmp / "config.json", "not valid JSON");
  json j = flat();
  j["attention_bias"] = true;
  test::write_text(tmp / "config.json", j.dump());
  EXPECT_G4_ERROR(load_model_config(tmp.str()), tmp / "config.json", "'attention_bias'");
}

}  // namespace
}  // namespace g4::io

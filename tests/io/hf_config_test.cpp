// Config parsing: the resolved layer tables of the fixtures, the two dialects, legacy keys,
// and the export/import round trip.
#include "io/hf_config.h"

#include <functional>

#include "io/io_test_util.h"

namespace g4::io {
namespace {

using nlohmann::json;
using test::fixture_dir;

json fixture_json(const std::string& name) {
  return json::parse(test::read_bytes(fixture_dir(name) + "/config.json"));
}

void expect_proportional_full_rope(const RopeSpec& r) {
  EXPECT_EQ(r.type, "proportional");
  EXPECT_EQ(r.theta, 1e6);
  EXPECT_EQ(r.partial_rotary_factor, 0.25);
  EXPECT_EQ(r.factor, 1.0);
}

void expect_default_sliding_rope(const RopeSpec& r) {
  EXPECT_EQ(r.type, "default");
  EXPECT_EQ(r.theta, 1e4);
  EXPECT_EQ(r.partial_rotary_factor, 1.0);
}

TEST(HfConfig, DensePle) {
  const ModelConfig c = load_model_config(fixture_dir("tiny-dense-ple") + "/config.json");
  EXPECT_FALSE(c.conditional);
  EXPECT_EQ(c.architecture, "Gemma4ForCausalLM");
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.hidden_size_per_layer_input, 8);
  EXPECT_EQ(c.vocab_size_per_layer_input, 256);
  EXPECT_EQ(c.sliding_window, 8);
  EXPECT_EQ(c.final_logit_softcapping, 30.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bidirectional, "");
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.first_kv_shared_layer(), 4);
  EXPECT_EQ(c.raw, fixture_json("tiny-dense-ple"));

  ASSERT_EQ(c.layers.size(), 6u);
  const bool sliding[] = {true, true, false, true, true, false};
  for (int l = 0; l < 6; ++l) {
    SCOPED_TRACE(l);
    const LayerSpec& s = c.layers[l];
    EXPECT_EQ(s.sliding, sliding[l]);
    EXPECT_EQ(s.head_dim, sliding[l] ? 16 : 32);
    EXPECT_EQ(s.num_kv_heads, 2);
    EXPECT_FALSE(s.k_eq_v);
    EXPECT_EQ(s.kv_shared, l >= 4);
    EXPECT_EQ(s.intermediate, l >= 4 ? 192 : 96);  // double-wide on shared layers
    EXPECT_FALSE(s.moe);
    if (sliding[l])
      expect_default_sliding_rope(s.rope);
    else
      expect_proportional_full_rope(s.rope);
  }
  EXPECT_EQ(c.layers[4].kv_source, 3);  // last sliding layer before 4
  EXPECT_EQ(c.layers[5].kv_source, 2);  // last full layer before 4
  EXPECT_EQ(c.layers[3].kv_source, -1);
}

TEST(HfConfig, DenseKeqV) {
  const ModelConfig c = load_model_config(fixture_dir("tiny-dense-keqv"));  // directory works too
  EXPECT_TRUE(c.attention_k_eq_v);
  EXPECT_EQ(c.num_kv_shared_layers, 0);
  for (int l = 0; l < 6; ++l) {
    SCOPED_TRACE(l);
    const LayerSpec& s = c.layers[l];
    const bool full = l == 2 || l == 5;
    EXPECT_EQ(s.head_dim, full ? 32 : 16);
    EXPECT_EQ(s.num_kv_heads, full ? 1 : 2);
    EXPECT_EQ(s.k_eq_v, full);
    EXPECT_FALSE(s.kv_shared);
    EXPECT_EQ(s.intermediate, 96);
  }
}

TEST(HfConfig, MoeConditional) {
  const ModelConfig c = load_model_config(fixture_dir("tiny-moe") + "/config.json");
  EXPECT_TRUE(c.conditional);
  EXPECT_FALSE(c.has_vision);  // vision_config: null
  EXPECT_FALSE(c.has_audio);
  EXPECT_EQ(c.architecture, "Gemma4ForConditionalGeneration");
  EXPECT_TRUE(c.enable_moe_block);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.top_k_experts, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.raw, fixture_json("tiny-moe"));  // the whole nested document
  for (const LayerSpec& s : c.layers) {
    EXPECT_TRUE(s.moe);
    EXPECT_EQ(s.intermediate, 96);
    EXPECT_EQ(s.k_eq_v, !s.sliding);
    EXPECT_EQ(s.num_kv_heads, s.sliding ? 2 : 1);
  }
}

json diffusion_json(const std::string& name) {
  return json::parse(test::read_bytes(test::data_dir() + "/hf-diffusion-gemma/" + name + "/config.json"));
}

TEST(HfConfig, DiffusionGemma) {
  const ModelConfig c = parse_model_config(diffusion_json("tiny-dg-a"), "dg.json");
  EXPECT_TRUE(c.diffusion);
  EXPECT_FALSE(c.conditional);
  EXPECT_TRUE(c.has_vision);
  EXPECT_EQ(c.architecture, "DiffusionGemmaForBlockDiffusion");
  EXPECT_EQ(c.canvas_length, 8);
  EXPECT_EQ(c.image_token_id, 258880);
  EXPECT_EQ(c.final_logit_softcapping, 30.0);  // a class attribute: absent from the file at 30
  EXPECT_EQ(c.bidirectional, "vision");
  for (const LayerSpec& s : c.layers) {
    EXPECT_TRUE(s.moe);
    EXPECT_EQ(s.k_eq_v, !s.sliding);
    EXPECT_EQ(s.head_dim, s.sliding ? 16 : 32);
    EXPECT_EQ(s.num_kv_heads, s.sliding ? 2 : 1);
  }
  const ModelConfig b = parse_model_config(diffusion_json("tiny-dg-b"), "dg.json");
  EXPECT_EQ(b.final_logit_softcapping, 20.0);
  EXPECT_EQ(b.layers[1].head_dim, 32);
  EXPECT_EQ(b.layers[1].num_kv_heads, 2);  // no num_global_key_value_heads: num_key_value_heads
}

// DiffusionGemmaTextConfig.__post_init__ (transformers 5.17): without a per_layer_config key,
// global_head_dim (default 512) and num_global_key_value_heads become the full layers' entries;
// with one, even null, both keys are dropped and unlisted full layers keep head_dim.
TEST(HfConfig, DiffusionHeadDimDialects) {
  const json a = diffusion_json("tiny-dg-a");
  const ModelConfig want = parse_model_config(a, "dg.json");
  auto layers_of = [](json j, const std::function<void(json&)>& edit) {
    edit(j["text_config"]);
    return parse_model_config(j, "dg.json").layers;
  };
  EXPECT_EQ(layers_of(a,
                      [](json& t) {
                        t.erase("per_layer_config");
                        t["global_head_dim"] = 32;
                        t["num_global_key_value_heads"] = 1;
                      }),
            want.layers);
  const auto neither = layers_of(a, [](json& t) { t.erase("per_layer_config"); });
  for (int64_t l : {2, 4}) {
    EXPECT_EQ(neither[l].head_dim, 512);
    EXPECT_EQ(neither[l].num_kv_heads, 2);
  }
  EXPECT_EQ(neither[0].head_dim, 16);
  EXPECT_EQ(layers_of(a,
                      [](json& t) {
                        t["global_head_dim"] = 64;
                        t["num_global_key_value_heads"] = 2;
                      }),
            want.layers);
  const auto partial = layers_of(a, [](json& t) {
    t["per_layer_config"].erase("4");
    t["global_head_dim"] = 64;
  });
  EXPECT_EQ(partial[2].head_dim, 32);
  EXPECT_EQ(partial[4].head_dim, 16);
  EXPECT_EQ(partial[4].num_kv_heads, 2);
  const auto null = layers_of(a, [](json& t) {
    t["per_layer_config"] = nullptr;
    t["global_head_dim"] = 64;
  });
  EXPECT_EQ(null[2].head_dim, 16);
  EXPECT_EQ(null[4].head_dim, 16);
}

TEST(HfConfig, DiffusionExportRoundTrip) {
  for (const char* name : {"tiny-dg-a", "tiny-dg-b"}) {
    SCOPED_TRACE(name);
    ModelConfig c = parse_model_config(diffusion_json(name), "dg.json");
    EXPECT_EQ(model_config_to_json(c), diffusion_json(name));  // read from a file: written back verbatim
    c.raw = json();
    const json j = model_config_to_json(c);
    EXPECT_EQ(j["model_type"], "diffusion_gemma");
    EXPECT_EQ(j["architectures"], json({"DiffusionGemmaForBlockDiffusion"}));
    EXPECT_EQ(j["text_config"]["model_type"], "diffusion_gemma_text");
    EXPECT_EQ(j["canvas_length"], c.canvas_length);
    EXPECT_EQ(j["vision_config"]["model_type"], "gemma4_vision");
    for (const char* gemma4_only : {"attention_k_eq_v", "enable_moe_block", "num_kv_shared_layers",
                                    "hidden_size_per_layer_input", "global_head_dim"})
      EXPECT_FALSE(j["text_config"].contains(gemma4_only)) << gemma4_only;
    ModelConfig back = parse_model_config(j, "export.json");
    back.raw = json();
    EXPECT_TRUE(back == c) << j.dump(2);
  }
}

TEST(HfConfig, NestedFlagsAndTopLevelTie) {
  json j = fixture_json("tiny-moe");
  j["vision_config"] = {{"model_type", "gemma4_vision"}};
  j["text_config"].erase("tie_word_embeddings");
  j["tie_word_embeddings"] = false;
  const ModelConfig c = parse_model_config(j, "nested.json");
  EXPECT_TRUE(c.has_vision);
  EXPECT_FALSE(c.has_audio);
  EXPECT_FALSE(c.tie_word_embeddings);
  j.erase("architectures");
  EXPECT_EQ(parse_model_config(j, "nested.json").architecture, "Gemma4ForConditionalGeneration");
  // Gemma4ForConditionalGeneration ties by the top-level flag alone (default true), whatever
  // text_config says (transformers 5.17; found by tools/probe_towers_vs_transformers.py: with the
  // top flag true and the text one false, transformers saves no lm_head.weight).
  for (const bool top : {true, false}) {
    j["tie_word_embeddings"] = top;
    j["text_config"]["tie_word_embeddings"] = !top;
    EXPECT_EQ(parse_model_config(j, "nested.json").tie_word_embeddings, top);
  }
  j.erase("tie_word_embeddings");
  EXPECT_TRUE(parse_model_config(j, "nested.json").tie_word_embeddings);
}

TEST(HfConfig, GlobalHeadDimDialectMatchesPerLayerConfig) {
  for (const char* name : {"tiny-dense-keqv", "tiny-moe", "tiny-dense-ple"}) {
    SCOPED_TRACE(name);
    const json j = fixture_json(name);
    const ModelConfig a = parse_model_config(j, "a.json");

    json k = j;
    json& t = k.contains("text_config") ? k["text_config"] : k;
    // The published dialect: one global head dim and global KV head count, no per-layer table.
    t["global_head_dim"] = 32;
    if (t["attention_k_eq_v"].get<bool>()) t["num_global_key_value_heads"] = 1;
    t.erase("per_layer_config");
    const ModelConfig b = parse_model_config(k, "b.json");
    EXPECT_EQ(a.layers, b.layers);

    // Both dialects at once (what transformers 5.x writes for published models): redundant
    // per_layer_config entries are dropped, so the whole config equals the published one.
    t["per_layer_config"] = j.contains("text_config") ? j["text_config"]["per_layer_config"] : j["per_layer_config"];
    ModelConfig both = parse_model_config(k, "b.json");
    EXPECT_TRUE(both.layer_overrides.empty());
    both.raw = b.raw;
    EXPECT_TRUE(both == b);
  }
}

TEST(HfConfig, PerLayerConfigPartialEntries) {
  json j = fixture_json("tiny-dense-keqv");
  j["per_layer_config"] = {{"5", {{"num_key_value_heads", 4}}}, {"1", {{"num_key_value_heads", 1}}}};
  const ModelConfig c = parse_model_config(j, "p.json");
  EXPECT_EQ(c.layers[2].head_dim, 16);  // no entry, no global_head_dim: head_dim
  EXPECT_EQ(c.layers[2].num_kv_heads, 2);
  EXPECT_EQ(c.layers[5].head_dim, 16);
  EXPECT_EQ(c.layers[5].num_kv_heads, 4);
  EXPECT_EQ(c.layers[1].num_kv_heads, 1);  // sliding layers take the KV count too
  EXPECT_EQ(c.layers[0].num_kv_heads, 2);
}

TEST(HfConfig, LegacyRopeKeysAndSlidingPattern) {
  json j = fixture_json("tiny-dense-keqv");
  j.erase("rope_parameters");
  j.erase("layer_types");
  j["num_hidden_layers"] = 7;
  j["sliding_window_pattern"] = 3;
  j["rope_theta"] = 500000.0;
  j["rope_local_base_freq"] = 20000.0;
  j.erase("per_layer_config");
  const ModelConfig c = parse_model_config(j, "legacy.json");
  const std::vector<std::string> want = {"sliding_attention", "sliding_attention", "full_attention",
                                         "sliding_attention", "sliding_attention", "full_attention",
                                         "full_attention"};  // last layer forced full
  EXPECT_EQ(c.layer_types, want);
  EXPECT_EQ(c.layers[0].rope.type, "default");
  EXPECT_EQ(c.layers[0].rope.theta, 20000.0);
  EXPECT_EQ(c.layers[2].rope.type, "proportional");
  EXPECT_EQ(c.layers[2].rope.theta, 500000.0);
  EXPECT_EQ(c.layers[2].rope.partial_rotary_factor, 0.25);

  j.erase("rope_theta");
  j.erase("rope_local_base_freq");
  j["partial_rotary_factor"] = 0.5;
  const ModelConfig d = parse_model_config(j, "legacy.json");
  expect_default_sliding_rope(d.layers[0].rope);
  EXPECT_EQ(d.layers[6].rope.theta, 1e6);
  EXPECT_EQ(d.layers[6].rope.partial_rotary_factor, 0.5);
}

TEST(HfConfig, LinearRopeAndOptionalFields) {
  json j = fixture_json("tiny-dense-keqv");
  j["rope_parameters"]["full_attention"] = {{"rope_type", "linear"}, {"rope_theta", 1e6}, {"factor", 8.0}};
  j["final_logit_softcapping"] = nullptr;
  j["use_bidirectional_attention"] = "vision";
  j["eos_token_id"] = {1, 106};
  j.erase("rms_norm_eps");
  j.erase("tie_word_embeddings");
  j.erase("vocab_size_per_layer_input");
  j["hidden_size_per_layer_input"] = nullptr;
  j["intermediate_size"] = {96, 96, 128, 96, 96, 128};
  const ModelConfig c = parse_model_config(j, "o.json");
  EXPECT_EQ(c.layers[5].rope.type, "linear");
  EXPECT_EQ(c.layers[5].rope.factor, 8.0);
  EXPECT_EQ(c.layers[5].rope.partial_rotary_factor, 1.0);
  EXPECT_FALSE(c.final_logit_softcapping.has_value());
  EXPECT_EQ(c.bidirectional, "vision");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.vocab_size_per_layer_input, 256);
  EXPECT_EQ(c.hidden_size_per_layer_input, 0);
  EXPECT_EQ(c.layers[2].intermediate, 128);
  EXPECT_EQ(c.layers[1].intermediate, 96);

  j.erase("hidden_activation");
  j["hidden_act"] = "gelu_pytorch_tanh";  // the older key
  EXPECT_NO_THROW(parse_model_config(j, "o.json"));
}

// Export without `raw` and read back: the same ModelConfig, field for field.
TEST(HfConfig, ExportRoundTrip) {
  std::vector<ModelConfig> configs;
  for (const char* name : {"tiny-dense-ple", "tiny-dense-keqv", "tiny-moe"})
    configs.push_back(load_model_config(fixture_dir(name) + "/config.json"));
  // A hand-edited config exercising the remaining fields.
  ModelConfig edited = configs[1];
  edited.global_head_dim = 64;
  edited.num_global_kv_heads = 2;
  edited.layer_overrides.clear();
  edited.layer_overrides[1] = {0, 1};  // a sliding layer with its own KV head count
  edited.intermediate_sizes = {96, 96, 128, 96, 96, 128};
  edited.bidirectional = "all";
  edited.final_logit_softcapping.reset();
  edited.eos_token_ids = {1, 106};
  edited.rope_full = {"linear", 123456.0, 1.0, 4.0};
  edited.num_kv_shared_layers = 2;
  edited.use_double_wide_mlp = true;
  resolve_layers(edited, "edited");
  EXPECT_EQ(edited.layers[2].head_dim, 64);
  configs.push_back(edited);

  for (ModelConfig c : configs) {
    SCOPED_TRACE(c.architecture);
    const json with_raw = model_config_to_json(c);
    EXPECT_EQ(with_raw, c.raw);  // read from a file: written back verbatim
    c.raw = json();
    const json j = model_config_to_json(c);
    EXPECT_EQ(j["model_type"], c.conditional ? "gemma4" : "gemma4_text");
    ModelConfig back = parse_model_config(j, "export.json");
    back.raw = json();
    EXPECT_TRUE(back == c) << j.dump(2);
    EXPECT_EQ(back.layers, c.layers);
  }
}

TEST(HfConfig, ExportFlatIsCausalLmWithPerLayerConfig) {
  ModelConfig c = load_model_config(fixture_dir("tiny-dense-keqv") + "/config.json");
  c.raw = json();
  const json j = model_config_to_json(c);
  EXPECT_EQ(j["architectures"], json({"Gemma4ForCausalLM"}));
  EXPECT_EQ(j["per_layer_config"]["2"]["head_dim"], 32);
  EXPECT_EQ(j["per_layer_config"]["5"]["num_key_value_heads"], 1);
  EXPECT_FALSE(j["per_layer_config"].contains("0"));
  EXPECT_EQ(j["rope_parameters"]["full_attention"]["rope_type"], "proportional");
}

}  // namespace
}  // namespace g4::io

// Parameter kinds: every parameter and buffer of every fixture and built-in config has the kind its
// name says, and what expert parallelism splits is what the name rule used to pick.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <regex>
#include <set>

#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/hf_fixtures.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using model::ParamKind;

// The kind a Gemma 4 parameter or buffer has, read off its native name (the rule the code used
// before kinds were stored).
ParamKind kind_from_name(const std::string& n) {
  const std::pair<const char*, ParamKind> rules[] = {
      {R"(model\.embed_tokens\.weight)", ParamKind::kTokenEmbedding},
      {R"(model\.embed_tokens_per_layer\.weight)", ParamKind::kPerLayerEmbedding},
      {R"(model\.per_layer_model_projection\.weight)", ParamKind::kPerLayerModelProjection},
      {R"(model\.layers\.\d+\.(per_layer_input_gate|per_layer_projection)\.weight)", ParamKind::kPerLayerInput},
      {R"(model\.(norm|per_layer_projection_norm)\.weight)", ParamKind::kNorm},
      {R"(model\.layers\.\d+\.(\w+_layernorm(_\d)?|post_per_layer_input_norm|self_attn\.[qk]_norm)\.weight)",
       ParamKind::kNorm},
      {R"(model\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight)", ParamKind::kAttention},
      {R"(model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight)", ParamKind::kMlp},
      {R"(model\.layers\.\d+\.moe\.gate\.proj\.weight)", ParamKind::kRouter},
      {R"(model\.layers\.\d+\.moe\.gate\.scale)", ParamKind::kRouterScale},
      {R"(model\.layers\.\d+\.moe\.experts\.gate_and_up_projs)", ParamKind::kExpertGateUp},
      {R"(model\.layers\.\d+\.moe\.experts\.down_projs)", ParamKind::kExpertDown},
      {R"(lm_head\.weight)", ParamKind::kLmHead},
      {R"(model\.layers\.\d+\.(encoder_)?layer_scalar)", ParamKind::kLayerScalar},
      {R"(model\.layers\.\d+\.router\.per_expert_scale)", ParamKind::kPerExpertScale},
      {R"(model\.self_conditioning\.pre_norm\.weight)", ParamKind::kNorm},
      {R"(model\.self_conditioning\.(gate|up|down)_proj\.weight)", ParamKind::kSelfConditioning},
      {R"(model\.encoder\.(vision_tower|embed_vision)\..*)", ParamKind::kPassThrough},
      {R"(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.lora_A\.weight)", ParamKind::kLoraA},
      {R"(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.lora_B\.weight)", ParamKind::kLoraB},
      {R"(model\.layers\.\d+\.moe\.experts\.(gate_and_up_projs|down_projs)\.lora_A\.weight)", ParamKind::kExpertLoraA},
      {R"(model\.layers\.\d+\.moe\.experts\.(gate_and_up_projs|down_projs)\.lora_B\.weight)", ParamKind::kExpertLoraB},
      {R"(model\.audio_tower\.(subsample_conv_projection\.layer\d\.norm|layers\.\d+\.(feed_forward\d\.(pre|post)_layer_norm|lconv1d\.(pre_layer_norm|conv_norm)|norm_(pre_attn|post_attn|out)))\.weight)",
       ParamKind::kNorm},
      {R"(model\.audio_tower\.layers\.\d+\.(feed_forward\d\.ffw_layer_\d|self_attn\.(q_proj|k_proj|v_proj|post)|lconv1d\.linear_(start|end))\.(in|out)put_(min|max))",
       ParamKind::kAudioClip},
      {R"(model\.audio_tower\..*)", ParamKind::kAudioTower},
      {R"(model\.embed_audio\.embedding_projection\.weight)", ParamKind::kAudioEmbedding},
      {R"(model\.vision_tower\.encoder\.layers\.\d+\.(\w+_layernorm|self_attn\.[qk]_norm)\.weight)", ParamKind::kNorm},
      {R"(model\.vision_tower\.encoder\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.linear\.weight)",
       ParamKind::kVisionTower},
      {R"(model\.vision_tower\.patch_embedder\.(input_proj\.weight|position_embedding_table))", ParamKind::kVisionTower},
      {R"(model\.embed_vision\.embedding_projection\.weight)", ParamKind::kVisionEmbedding},
      {R"(model\.vision_tower\.encoder\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.(in|out)put_(min|max))",
       ParamKind::kVisionClip},
      {R"(model\.vision_tower\.std_(bias|scale))", ParamKind::kVisionStandardize},
  };
  for (const auto& [pattern, kind] : rules)
    if (std::regex_match(n, std::regex(pattern))) return kind;
  ADD_FAILURE() << "no rule for " << n;
  return ParamKind::kNorm;
}

// Every fixture model directory (autoregressive and diffusion).
std::vector<std::string> fixture_dirs() {
  std::vector<std::string> out;
  for (const char* sub : {"/hf-gemma4", "/hf-gemma4-varied", "/hf-diffusion-gemma", "/hf-gemma4-mm"})
    for (const auto& e : fs::directory_iterator(test::data_dir() + sub))
      if (fs::exists(e.path() / "config.json")) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

io::ModelConfig named(const std::string& name) {
  return io::parse_model_config(model::named_config(name), "named config " + name);
}

TEST(ParamKinds, EveryKindHasItsOwnName) {
  std::set<std::string> names;
  for (size_t i = 0; i < std::size(model::kAllParamKinds); ++i) {
    EXPECT_EQ(static_cast<size_t>(model::kAllParamKinds[i]), i);  // in the enum's order
    EXPECT_TRUE(names.insert(model::param_kind_name(model::kAllParamKinds[i])).second);
  }
  EXPECT_EQ(std::string(model::param_kind_name(ParamKind::kTokenEmbedding)), "token_embedding");
  EXPECT_EQ(std::string(model::param_kind_name(ParamKind::kExpertDown)), "expert_down");
}

// Every parameter and buffer of every fixture (loaded, with every expert and with LoRA adapters,
// and with half of the experts) and of every built-in config has a kind, the one its name says;
// every kind occurs somewhere.
TEST(ParamKinds, EveryParameterOfEveryConfigHasTheKindItsNameSays) {
  std::set<ParamKind> seen;
  const std::vector<std::string> fixtures = fixture_dirs();
  ASSERT_GE(fixtures.size(), 6u);
  for (const std::string& f : fixtures) {
    SCOPED_TRACE(f);
    const io::ModelConfig cfg = io::load_model_config(f);
    for (const int64_t ep_size : {int64_t{1}, int64_t{2}}) {
      if (ep_size > 1 && !cfg.enable_moe_block) continue;
      // The second half of the experts, as the last of ep_size ranks holds them.
      const int64_t share = cfg.num_experts / ep_size;
      const auto m = model::load_hf_model(f, model::ExpertRange{(ep_size - 1) * share, share});
      // Adapters on the dense projections, and on an MoE model's expert weights (split by expert
      // like them on the expert-parallel slice).
      model::LoraConfig lora;
      lora.rank = 2;
      if (cfg.enable_moe_block)
        lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                        "experts.gate_up_proj", "experts.down_proj"};
      if (ep_size == 1 || cfg.enable_moe_block) m->enable_lora(lora);
      const model::ParamStore& p = m->params();
      for (const std::string& n : p.order) {
        EXPECT_EQ(p.kind(n), kind_from_name(n)) << n;
        seen.insert(p.kind(n));
      }
      for (const auto& [n, b] : p.buffers) {
        EXPECT_EQ(p.kind(n), kind_from_name(n)) << n;
        EXPECT_EQ(b.kind, p.kind(n)) << n;
        seen.insert(b.kind);
      }
    }
  }
  for (const std::string& name : model::named_config_names()) {
    SCOPED_TRACE(name);
    for (const model::ParamSpec& s : model::native_param_specs(named(name))) {
      EXPECT_EQ(s.kind, kind_from_name(s.name)) << s.name;
      seen.insert(s.kind);
    }
  }
  for (ParamKind k : model::kAllParamKinds) EXPECT_TRUE(seen.count(k)) << model::param_kind_name(k) << " never occurs";
}

TEST(ParamKinds, KnownNamesHaveTheirKinds) {
  const auto moe = model::load_hf_model(test::hf_fixture_dir("tiny-moe"));
  const auto ple = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  const struct {
    const model::Gemma4& model;
    const char* name;
    ParamKind kind;
  } known[] = {
      {*moe, "model.embed_tokens.weight", ParamKind::kTokenEmbedding},
      {*moe, "model.norm.weight", ParamKind::kNorm},
      {*moe, "model.layers.0.self_attn.q_norm.weight", ParamKind::kNorm},
      {*moe, "model.layers.0.post_feedforward_layernorm_2.weight", ParamKind::kNorm},
      {*moe, "model.layers.0.self_attn.o_proj.weight", ParamKind::kAttention},
      {*moe, "model.layers.0.mlp.down_proj.weight", ParamKind::kMlp},
      {*moe, "model.layers.1.moe.gate.proj.weight", ParamKind::kRouter},
      {*moe, "model.layers.1.moe.gate.scale", ParamKind::kRouterScale},
      {*moe, "model.layers.1.moe.experts.gate_and_up_projs", ParamKind::kExpertGateUp},
      {*moe, "model.layers.1.moe.experts.down_projs", ParamKind::kExpertDown},
      {*moe, "model.layers.1.router.per_expert_scale", ParamKind::kPerExpertScale},
      {*moe, "model.layers.1.layer_scalar", ParamKind::kLayerScalar},
      {*ple, "model.embed_tokens_per_layer.weight", ParamKind::kPerLayerEmbedding},
      {*ple, "model.per_layer_model_projection.weight", ParamKind::kPerLayerModelProjection},
      {*ple, "model.per_layer_projection_norm.weight", ParamKind::kNorm},
      {*ple, "model.layers.2.per_layer_input_gate.weight", ParamKind::kPerLayerInput},
      {*ple, "model.layers.2.per_layer_projection.weight", ParamKind::kPerLayerInput},
      {*ple, "model.layers.2.post_per_layer_input_norm.weight", ParamKind::kNorm},
  };
  for (const auto& k : known) EXPECT_EQ(k.model.params().kind(k.name), k.kind) << k.name;

  EXPECT_EQ(model::native_param_specs(io::load_model_config(test::hf_fixture_dir("var-moe-untied"))).back().kind,
            ParamKind::kLmHead);
}

// Expert parallelism splits the kinds that index experts: exactly the names the old rule picked
// (".moe.experts." among parameters, "per_expert_scale" among buffers).
TEST(ParamKinds, SplitByExpertIsWhatTheNameRulePicked) {
  for (const std::string& f : fixture_dirs()) {
    SCOPED_TRACE(f);
    const auto m = model::load_hf_model(f);
    const model::ParamStore& p = m->params();
    for (const std::string& n : p.order)
      EXPECT_EQ(model::split_by_expert(p.kind(n)), n.find(".moe.experts.") != std::string::npos) << n;
    for (const auto& [n, b] : p.buffers)
      EXPECT_EQ(model::split_by_expert(b.kind), n.find("per_expert_scale") != std::string::npos) << n;
  }
}

TEST(ParamKinds, StoreErrorsNameTheParameter) {
  model::ParamStore s;
  s.add("w", ParamKind::kMlp, Tensor::zeros({2, 3}, DType::F32));
  s.set_buffer("b", ParamKind::kLayerScalar, Tensor::full({1}, 1.0));
  EXPECT_EQ(s.kind("w"), ParamKind::kMlp);
  EXPECT_EQ(s.kind("b"), ParamKind::kLayerScalar);
  s.set_buffer("b", ParamKind::kLayerScalar, Tensor::full({1}, 2.0));  // replaces
  EXPECT_EQ(s.buffer("b").item(), 2.0);
  EXPECT_NE(test::error_of([&] { s.kind("nope"); }).find("no parameter or buffer named nope"), std::string::npos);
  EXPECT_NE(test::error_of([&] { s.buffer("w"); }).find("no buffer named w"), std::string::npos);
  EXPECT_NE(test::error_of([&] {
              s.add("w", ParamKind::kMlp, Tensor::zeros({1}, DType::F32));
            }).find("parameter w added twice"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              s.set_buffer("w", ParamKind::kNorm, Tensor::zeros({1}, DType::F32));
            }).find("buffer w has the name of a parameter"),
            std::string::npos);
}

}  // namespace
}  // namespace g4

// diffusion_gemma checkpoints: the round trip through g4 (every key and value of the source back,
// the scale folded into the experts' down projection, the vision tower verbatim, the encoder layer
// scalars written), checkpoints without the encoder layer scalars (as Automodel exports them), bad
// checkpoints, and an autoregressive Gemma 4 MoE adapted into a diffusion model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/random.h"
#include "diffusion/from_autoregressive.h"
#include "diffusion/model.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture(const std::string& name) {
  return test::data_dir() + "/hf-diffusion-gemma/" + name;
}
json read_json(const fs::path& p) {
  return io::read_json_file(p.string(), "test json", 1 << 20);
}
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

using test::max_diff;

// down [E, H, I] times scale [E] per expert, in f32 as the loader folds it.
Tensor scaled_down(const Tensor& down, const Tensor& scale) {
  Tensor out = down.to(DType::F32).clone();
  const int64_t E = out.size(0), per = out.numel() / E;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < per; ++i) out.data<float>()[e * per + i] *= scale.data<float>()[e];
  return out;
}

// Random token ids in [1, V) (never the pad id 0).
Tensor random_ids(int64_t B, int64_t S, int64_t V, uint64_t seed) {
  return randint({B, S}, seed, 1, V);
}

// A copy of a checkpoint directory with `edit` applied to its tensors.
void write_edited_copy(const std::string& src, const fs::path& dst,
                       const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  fs::create_directories(dst);
  for (const char* f : {"config.json", "generation_config.json"}) fs::copy_file(fs::path(src) / f, dst / f);
  const io::SafetensorsReader r = io::SafetensorsReader::open(src);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : r.names()) tensors.emplace_back(name, r.get(name).clone());
  edit(tensors);
  io::save_safetensors((dst / "model.safetensors").string(), tensors);
}

class DiffusionCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(DiffusionCheckpoint, RoundTripKeepsEveryTensorAndConfig) {
  const std::string src = fixture(GetParam());
  const fs::path out = test::scratch_dir("dg_roundtrip_" + GetParam());
  const auto m = model::load_hf_model(src);
  model::save_hf_checkpoint(*m, out.string());

  const io::SafetensorsReader a = io::SafetensorsReader::open(src), b = io::SafetensorsReader::open(out.string());
  const std::vector<std::string> names = a.names();
  EXPECT_EQ(b.names(), names);
  int64_t vision = 0, encoder_scalars = 0, downs = 0;
  for (const std::string& key : names) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(b.has(key));
    if (ends_with(key, "router.per_expert_scale")) {
      const Tensor ones = b.get_f32(key, a.get(key).shape());
      for (int64_t e = 0; e < ones.numel(); ++e) EXPECT_EQ(ones.data<float>()[e], 1.0f);
    } else if (ends_with(key, "experts.down_proj")) {
      // The scale lives in down_proj after the round trip: down · scale is what is kept.
      const std::string scale = key.substr(0, key.size() - 17) + "router.per_expert_scale";
      const Tensor want = scaled_down(a.get(key), a.get_f32(scale, {a.get(key).size(0)}));
      EXPECT_EQ(max_diff(b.get(key), want), 0.0);
      ++downs;
    } else {
      EXPECT_EQ(b.get(key).dtype(), a.get(key).dtype());
      EXPECT_EQ(max_diff(b.get(key), a.get(key)), 0.0);
    }
    vision += key.rfind("model.encoder.vision_tower.", 0) == 0 || key.rfind("model.encoder.embed_vision.", 0) == 0;
    encoder_scalars += key.rfind("model.encoder.language_model.", 0) == 0;
  }
  EXPECT_GT(vision, 0);
  EXPECT_EQ(encoder_scalars, m->config().num_layers);
  EXPECT_EQ(downs, m->config().num_layers);
  EXPECT_EQ(read_json(out / "config.json"), read_json(fs::path(src) / "config.json"));
  EXPECT_EQ(read_json(out / "generation_config.json"), read_json(fs::path(src) / "generation_config.json"));

  // And it loads again into the same model.
  const auto back = model::load_hf_model(out.string());
  const Tensor ids = random_ids(2, 11, m->config().vocab_size, 5);
  diffusion::EncoderCache c1, c2;
  EXPECT_EQ(max_diff(m->logits(diffusion::encode(*m, ids, {}, c1)).value(),
                     back->logits(diffusion::encode(*back, ids, {}, c2)).value()),
            0.0);
  fs::remove_all(out);
}

TEST_P(DiffusionCheckpoint, MissingEncoderLayerScalarsTakeTheDecoders) {
  const std::string src = fixture(GetParam());
  const fs::path dir = test::scratch_dir("dg_no_encoder_scalars_" + GetParam());
  // Automodel's exporter writes no model.encoder.* key; make the decoder's scalars differ from
  // the encoder's first, so that where the loaded values come from shows.
  write_edited_copy(src, dir / "in", [](std::vector<std::pair<std::string, Tensor>>& t) {
    std::erase_if(t, [](const auto& kv) { return kv.first.rfind("model.encoder.language_model.", 0) == 0; });
    for (auto& [name, v] : t)
      if (name.rfind("model.decoder.layers.", 0) == 0 && ends_with(name, ".layer_scalar")) v.fill(0.75);
  });
  ::testing::internal::CaptureStderr();
  const auto m = model::load_hf_model((dir / "in").string());
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("model.encoder.language_model.layers.0.layer_scalar"), std::string::npos) << log;
  EXPECT_NE(log.find("decoder's"), std::string::npos) << log;
  for (int64_t l = 0; l < m->config().num_layers; ++l)
    EXPECT_EQ(m->params().buffer(model::encoder_layer_scalar_name(l)).item(), 0.75);

  // Written back, the checkpoint holds them (transformers would run its encoder uninitialised).
  model::save_hf_checkpoint(*m, (dir / "out").string());
  const io::SafetensorsReader r = io::SafetensorsReader::open((dir / "out").string());
  for (int64_t l = 0; l < m->config().num_layers; ++l)
    EXPECT_EQ(r.get_f32("model.encoder.language_model.layers." + std::to_string(l) + ".layer_scalar", {1}).item(),
              0.75);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DiffusionCheckpoint, ::testing::Values("tiny-dg-a", "tiny-dg-b"));

TEST(DiffusionCheckpointErrors, MissingKeyAndWrongShapeNameTheTensor) {
  const std::string src = fixture("tiny-dg-a");
  const fs::path dir = test::scratch_dir("dg_bad_checkpoint");
  const std::string key = "model.decoder.self_conditioning.down_proj.weight";
  write_edited_copy(src, dir / "missing", [&](std::vector<std::pair<std::string, Tensor>>& t) {
    std::erase_if(t, [&](const auto& kv) { return kv.first == key; });
  });
  std::string e = test::error_of([&] { model::load_hf_model((dir / "missing").string()); });
  EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << e;
  EXPECT_NE(e.find((dir / "missing").string()), std::string::npos) << e;

  write_edited_copy(src, dir / "shape", [&](std::vector<std::pair<std::string, Tensor>>& t) {
    for (auto& [name, v] : t)
      if (name == key) v = randn({64, 31}, 3);
  });
  e = test::error_of([&] { model::load_hf_model((dir / "shape").string()); });
  EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << e;
  EXPECT_NE(e.find("[64, 31]"), std::string::npos) << e;
  EXPECT_NE(e.find("[64, 32]"), std::string::npos) << e;

  const std::string scalar = "model.decoder.layers.3.layer_scalar";
  write_edited_copy(src, dir / "scalar", [&](std::vector<std::pair<std::string, Tensor>>& t) {
    std::erase_if(t, [&](const auto& kv) { return kv.first == scalar; });
  });
  e = test::error_of([&] { model::load_hf_model((dir / "scalar").string()); });
  EXPECT_NE(e.find("'" + scalar + "'"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(DiffusionCheckpointErrors, ConfigNotFromAFileCannotDescribeAKeptVisionTower) {
  auto m = model::load_hf_model(fixture("tiny-dg-b"));
  io::ModelConfig cfg = m->config();
  cfg.raw = json();
  model::Gemma4 rebuilt(cfg);
  for (const auto& [name, b] : m->params().buffers) rebuilt.params().set_buffer(name, b.kind, b.value);
  const fs::path dir = test::scratch_dir("dg_no_raw");
  const std::string e = test::error_of([&] { model::save_hf_checkpoint(rebuilt, dir.string()); });
  EXPECT_NE(e.find("model.encoder."), std::string::npos) << e;
  EXPECT_NE(e.find("vision_config"), std::string::npos) << e;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// An autoregressive Gemma 4 MoE adapted into a diffusion model.

std::string ar_fixture(const std::string& name) {
  return test::data_dir() + "/hf-gemma4/" + name;
}

TEST(AdaptAutoregressive, EncoderIsTheSourceModelAndTheDenoiserRuns) {
  // tiny-moe: every layer MoE, K=V full layers (no v_proj to drop), no per-layer inputs or KV sharing.
  const auto ar = model::load_hf_model(ar_fixture("tiny-moe"));
  ASSERT_TRUE(ar->config().enable_moe_block && ar->config().attention_k_eq_v);
  const json ar_generation = read_json(fs::path(ar_fixture("tiny-moe")) / "generation_config.json");
  const auto dg = diffusion::adapt_autoregressive(*ar, 8, 11, ar_generation);
  ASSERT_TRUE(dg->config().diffusion);
  EXPECT_EQ(dg->config().canvas_length, 8);
  EXPECT_EQ(dg->config().layers, ar->config().layers);

  const int64_t B = 2, S = 13, V = ar->config().vocab_size;
  const Tensor ids = random_ids(B, S, V, 7);
  ag::NoGrad no_grad;
  model::ForwardInputs fi;
  fi.input_ids = ids;
  const Tensor want = ar->forward(fi).logits.value();
  diffusion::EncoderCache cache;
  const Tensor got = dg->logits(diffusion::encode(*dg, ids, {}, cache)).value();
  EXPECT_LT(max_diff(got, want), 1e-5);

  // Saved and loaded back, it denoises; the self-conditioning MLP starts at exactly 0.
  const fs::path dir = test::scratch_dir("dg_adapted");
  model::save_hf_checkpoint(*dg, dir.string());
  const auto back = model::load_hf_model(dir.string());
  EXPECT_EQ(read_json(dir / "config.json")["model_type"], "diffusion_gemma");
  const json gen = read_json(dir / "generation_config.json");
  EXPECT_EQ(gen["eos_token_id"], ar_generation["eos_token_id"]);
  EXPECT_EQ(gen["pad_token_id"], ar_generation["pad_token_id"]);
  EXPECT_EQ(gen["max_denoising_steps"], 48);
  EXPECT_EQ(gen["sampler_config"]["entropy_bound"], 0.1);
  diffusion::EncoderCache c2;
  diffusion::encode(*back, ids, {}, c2);
  const Tensor canvas = random_ids(B, 8, V, 8);
  const Tensor plain = diffusion::denoise(*back, canvas, c2);
  EXPECT_EQ(plain.shape(), Shape({B, 8, V}));
  for (int64_t i = 0; i < plain.numel(); ++i) ASSERT_TRUE(std::isfinite(plain.data<float>()[i]));
  const Tensor sc = randn({B, 8, V}, 9, DType::F32, 3.0);
  EXPECT_EQ(max_diff(diffusion::denoise(*back, canvas, c2, sc), plain), 0.0);
  fs::remove_all(dir);
}

TEST(AdaptAutoregressive, TheKjvJobsShapeAdaptsWhole) {
  // recipes/tiny-moe-kjv.yaml trains the built-in tiny-moe: every layer MoE and K=V full layers, so
  // nothing is dropped and the adapted encoder is that model.
  model::Gemma4 ar(io::parse_model_config(model::named_config("tiny-moe"), "tiny-moe"));
  ar.init_weights(2);
  ::testing::internal::CaptureStderr();
  const auto dg = diffusion::adapt_autoregressive(ar, 16, 3);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  const Tensor ids = random_ids(1, 20, ar.config().vocab_size, 12);
  ag::NoGrad no_grad;
  model::ForwardInputs fi;
  fi.input_ids = ids;
  diffusion::EncoderCache cache;
  EXPECT_LT(max_diff(dg->logits(diffusion::encode(*dg, ids, {}, cache)).value(), ar.forward(fi).logits.value()), 1e-5);
}

TEST(AdaptAutoregressive, FullLayersVProjIsDropped) {
  // A tiny all-MoE autoregressive model whose full layers have their own v_proj.
  json j = read_json(fs::path(ar_fixture("tiny-moe")) / "config.json");
  j["text_config"]["attention_k_eq_v"] = false;
  model::Gemma4 ar(io::parse_model_config(j, "tiny-moe-with-v_proj"));
  ar.init_weights(4);
  ASSERT_TRUE(ar.params().has("model.layers.2.self_attn.v_proj.weight"));
  ::testing::internal::CaptureStderr();
  const auto dg = diffusion::adapt_autoregressive(ar, 4, 1);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("v_proj of 2 full-attention layers"), std::string::npos) << log;
  EXPECT_FALSE(dg->params().has("model.layers.2.self_attn.v_proj.weight"));
  EXPECT_TRUE(dg->params().has("model.layers.1.self_attn.v_proj.weight"));  // sliding layers keep theirs
  for (const std::string& name : dg->params().order) {
    if (!ar.params().has(name)) continue;
    EXPECT_EQ(max_diff(dg->params().at(name).value(), ar.params().at(name).value()), 0.0) << name;
  }
  EXPECT_EQ(dg->config().layers[2].num_kv_heads, ar.config().layers[2].num_kv_heads);
}

TEST(AdaptAutoregressive, RefusesWhatDiffusionGemmaCannotExpress) {
  const json moe = read_json(fs::path(ar_fixture("tiny-moe")) / "config.json");
  // `edit` changes text_config, or with `top_level` the whole config (transformers ties the LM head by
  // the top-level tie_word_embeddings of a nested config alone).
  const auto refused = [&](const std::function<void(json&)>& edit, const std::string& why, bool top_level = false) {
    json j = moe;
    edit(top_level ? j : j["text_config"]);
    const io::ModelConfig c = io::parse_model_config(j, "ar.json");
    const std::string e = test::error_of([&] { diffusion::diffusion_config_from(c, 8); });
    EXPECT_NE(e.find(why), std::string::npos) << e;
  };
  refused([](json& t) { t["enable_moe_block"] = false; }, "no routed experts");
  refused([](json& t) { t["hidden_size_per_layer_input"] = 8; }, "per-layer inputs");
  refused([](json& t) { t["num_kv_shared_layers"] = 2; }, "shares K/V");
  refused([](json& t) { t["tie_word_embeddings"] = false; }, "not tied", /*top_level=*/true);
  refused([](json& t) { t["final_logit_softcapping"] = nullptr; }, "softcap");
  refused([](json& t) { t["intermediate_size"] = {96, 96, 96, 96, 96, 64}; }, "MLP widths");
  const io::ModelConfig dense = io::load_model_config(ar_fixture("tiny-dense-keqv"));
  EXPECT_NE(test::error_of([&] { diffusion::diffusion_config_from(dense, 8); }).find("no routed experts"),
            std::string::npos);
  const io::ModelConfig dg = io::load_model_config(fixture("tiny-dg-a"));
  EXPECT_NE(test::error_of([&] { diffusion::diffusion_config_from(dg, 8); }).find("already"), std::string::npos);
}

TEST(AdaptAutoregressive, ConfigRoundTripsThroughItsJson) {
  const io::ModelConfig c = diffusion::diffusion_config_from(io::load_model_config(ar_fixture("tiny-moe")), 16);
  const json j = io::model_config_to_json(c);
  EXPECT_EQ(j["model_type"], "diffusion_gemma");
  EXPECT_EQ(j["text_config"]["model_type"], "diffusion_gemma_text");
  EXPECT_EQ(j["vision_config"]["model_type"], "gemma4_vision");
  EXPECT_EQ(j["canvas_length"], 16);
  EXPECT_FALSE(j["text_config"].contains("attention_k_eq_v"));
  io::ModelConfig back = io::parse_model_config(j, "adapted.json");
  back.raw = json();
  EXPECT_TRUE(back == c) << j.dump(2);
}

}  // namespace
}  // namespace g4

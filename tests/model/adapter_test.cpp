// State-dict adapter: layouts, folding of per_expert_scale, expert-range loading, export round
// trips and the errors a bad checkpoint produces.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "autograd/variable.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
const std::string kMoe = test::data_dir() + "/hf-gemma4/tiny-moe";
const std::string kPle = test::data_dir() + "/hf-gemma4/tiny-dense-ple";

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("g4_adapter_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

Tensor logits_of(const model::Gemma4& m) {
  ag::NoGrad ng;
  model::ForwardInputs in;
  in.input_ids = Tensor::empty({1, 11}, DType::I64);
  for (int64_t i = 0; i < 11; ++i) in.input_ids.data<int64_t>()[i] = 5 + 17 * i;
  return m.forward(in).logits.value();
}

TEST(Adapter, ExpertsAreTransposedAndScaleFolded) {
  auto m = model::load_hf_model(kMoe);
  const io::SafetensorsReader r = io::SafetensorsReader::open(kMoe);
  const std::string p = "model.language_model.layers.1.";
  const Tensor gu = r.get_f32(p + "experts.gate_up_proj", {8, 64, 64});       // [E, 2I, H]
  const Tensor down = r.get_f32(p + "experts.down_proj", {8, 64, 32});        // [E, H, I]
  const Tensor s = r.get_f32(p + "router.per_expert_scale", {8});
  const Tensor& ngu = m->params().at("model.layers.1.moe.experts.gate_and_up_projs").value();  // [E, H, 2I]
  const Tensor& nd = m->params().at("model.layers.1.moe.experts.down_projs").value();          // [E, I, H]
  ASSERT_EQ(ngu.shape(), (Shape{8, 64, 64}));
  ASSERT_EQ(nd.shape(), (Shape{8, 32, 64}));
  for (int64_t e : {0, 5})
    for (int64_t h : {0, 7, 63})
      for (int64_t j : {0, 31, 32, 63}) {
        EXPECT_EQ(ngu.data<float>()[(e * 64 + h) * 64 + j], gu.data<float>()[(e * 64 + j) * 64 + h]);
        if (j < 32) {
          EXPECT_FLOAT_EQ(nd.data<float>()[(e * 32 + j) * 64 + h],
                          down.data<float>()[(e * 64 + h) * 32 + j] * s.data<float>()[e]);
        }
      }
}

TEST(Adapter, ExportRoundTripReloadsWithIdenticalLogits) {
  for (const std::string& src : {kMoe, kPle}) {
    auto m = model::load_hf_model(src);
    const fs::path out = temp_dir("roundtrip");
    model::save_hf_checkpoint(*m, out.string(), 64 << 10);  // tiny shards: exercises the index
    EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
    auto back = model::load_hf_model(out.string());
    const Tensor a = logits_of(*m), b = logits_of(*back);
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]);
    // Exported per_expert_scale is ones: the scale lives in down_proj now.
    const io::SafetensorsReader r = io::SafetensorsReader::open(out.string());
    if (r.has("model.language_model.layers.0.router.per_expert_scale")) {
      const Tensor s = r.get_f32("model.language_model.layers.0.router.per_expert_scale", {8});
      for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(s.data<float>()[i], 1.0f);
    }
    fs::remove_all(out);
  }
}

TEST(Adapter, ExpertParallelRankLoadsOnlyItsSlice) {
  auto full = model::load_hf_model(kMoe);
  auto part = model::load_hf_model(kMoe, model::ExpertRange{2, 2});
  EXPECT_EQ(part->experts().begin, 2);
  EXPECT_EQ(part->experts().count, 2);
  const Tensor& a = full->params().at("model.layers.3.moe.experts.down_projs").value();
  const Tensor& b = part->params().at("model.layers.3.moe.experts.down_projs").value();
  ASSERT_EQ(b.shape(), (Shape{2, 32, 64}));
  const int64_t per = 32 * 64;
  for (int64_t i = 0; i < 2 * per; ++i) ASSERT_EQ(b.data<float>()[i], a.data<float>()[2 * per + i]);
  EXPECT_THROW(model::load_hf_model(kMoe, model::ExpertRange{6, 3}), Error);  // experts 6..8 of 0..7
}

TEST(Adapter, SingleTensorExportMatchesFullExport) {
  auto m = model::load_hf_model(kMoe);
  std::map<std::string, Tensor> full;
  for (auto& [k, t] : model::export_hf_state_dict(*m)) full[k] = t;
  for (const std::string& name : m->params().order)
    for (auto& [k, t] :
         model::export_hf_tensor(m->config(), name, m->params().kind(name), m->params().at(name).value())) {
      ASSERT_TRUE(full.count(k)) << k;
      ASSERT_EQ(full[k].shape(), t.shape()) << k;
      for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(full[k].data<float>()[i], t.data<float>()[i]) << k;
    }
}

TEST(Adapter, MissingOrMisshapenTensorsAreNamed) {
  auto m = model::load_hf_model(kPle);
  const fs::path dir = temp_dir("bad");
  fs::copy_file(fs::path(kPle) / "config.json", dir / "config.json");
  auto tensors = model::export_hf_state_dict(*m);

  // A missing tensor.
  std::vector<std::pair<std::string, Tensor>> missing;
  for (auto& kv : tensors)
    if (kv.first != "model.layers.3.mlp.up_proj.weight") missing.push_back(kv);
  io::save_safetensors((dir / "model.safetensors").string(), missing);
  try {
    model::load_hf_model(dir.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.mlp.up_proj.weight"), std::string::npos) << e.what();
  }

  // A wrong shape.
  std::vector<std::pair<std::string, Tensor>> bad = tensors;
  for (auto& kv : bad)
    if (kv.first == "model.layers.2.self_attn.q_proj.weight") kv.second = Tensor::zeros({64, 64}, DType::F32);
  io::save_safetensors((dir / "model.safetensors").string(), bad);
  try {
    model::load_hf_model(dir.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("model.layers.2.self_attn.q_proj.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("[128, 64]"), std::string::npos) << w;
  }

  // An unexpected tensor.
  std::vector<std::pair<std::string, Tensor>> extra = tensors;
  extra.emplace_back("model.layers.0.mystery.weight", Tensor::zeros({2}, DType::F32));
  io::save_safetensors((dir / "model.safetensors").string(), extra);
  try {
    model::load_hf_model(dir.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mystery.weight"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Adapter, VisionAndAudioTowersAreSkippedWithANote) {
  auto m = model::load_hf_model(kMoe);
  const fs::path dir = temp_dir("towers");
  fs::copy_file(fs::path(kMoe) / "config.json", dir / "config.json");
  auto tensors = model::export_hf_state_dict(*m);
  tensors.emplace_back("model.vision_tower.encoder.layers.0.mlp.weight", Tensor::zeros({4, 4}, DType::F32));
  tensors.emplace_back("model.embed_audio.embedding_projection.weight", Tensor::zeros({4, 4}, DType::F32));
  io::save_safetensors((dir / "model.safetensors").string(), tensors);
  testing::internal::CaptureStderr();
  auto back = model::load_hf_model(dir.string());
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("skipped 2 vision/audio tower tensors"), std::string::npos) << log;
  const Tensor a = logits_of(*m), b = logits_of(*back);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]);
  fs::remove_all(dir);
}

TEST(Adapter, TokenIdsOutsideTheVocabularyAreAnError) {
  auto m = model::load_hf_model(kPle);
  model::ForwardInputs in;
  in.input_ids = Tensor::from_vector<int64_t>({5, 999, 7}, {1, 3});
  try {
    m->forward(in);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("999"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace g4

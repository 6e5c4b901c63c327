// The audio tower and embed_audio against transformers (the tiny multimodal fixtures' recorded
// tower outputs) and its backward against central differences in double precision.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "core/random.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/audio_tower.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::string fixture(const std::string& name) { return test::data_dir() + "/hf-gemma4-mm/" + name; }

// Rows of `a` and `b` [B, T, N] compared where mask [B, T] is true.
void expect_close_where(const Tensor& a, const Tensor& b, const Tensor& mask, double tol, const std::string& what) {
  EXPECT_LE(test::max_diff(a, b, mask), tol) << what;
}

class AudioTowerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(AudioTowerFixture, OutputsEqualTransformers) {
  const std::string dir = fixture(GetParam());
  const io::ModelConfig config = io::load_model_config(dir);
  ASSERT_TRUE(config.has_audio);
  const auto model = io::SafetensorsReader::open(dir + "/model.safetensors");
  const auto ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const model::AudioTower tower = model::AudioTower::load(model, config.audio, config.hidden_size);
  ag::NoGrad no_grad;
  const model::AudioTower::Output out = tower.forward(ref.get("input_features"), ref.get("input_features_mask"));
  const Tensor want_mask = ref.get("audio.output_mask");
  ASSERT_EQ(out.mask.shape(), want_mask.shape());
  for (int64_t i = 0; i < want_mask.numel(); ++i) ASSERT_EQ(element_as_int(out.mask, i), element_as_int(want_mask, i)) << i;
  expect_close_where(out.hidden.value(), ref.get("audio.last_hidden_state"), want_mask, 1e-4, "last_hidden_state");
  expect_close_where(tower.embed(out.hidden).value(), ref.get("audio.projected"), want_mask, 1e-4, "embed_audio");
}

// load_hf_model loads the audio tower's tensors as parameters and clip-bound buffers (and the vision
// tower's, model/vision_tower.h: nothing is skipped); the tower on the model's parameters computes
// what the checkpoint's does, and export writes them back as read.
TEST_P(AudioTowerFixture, LoadedModelKeepsAndExportsTheTower) {
  const std::string dir = fixture(GetParam());
  const auto reader = io::SafetensorsReader::open(dir + "/model.safetensors");
  int64_t audio = 0, vision = 0;
  for (const std::string& n : reader.names()) {
    audio += n.rfind("model.audio_tower.", 0) == 0 || n.rfind("model.embed_audio.", 0) == 0;
    vision += n.rfind("model.vision_tower.", 0) == 0 || n.rfind("model.embed_vision.", 0) == 0;
  }
  testing::internal::CaptureStderr();
  const auto m = model::load_hf_model(dir);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("skipped"), std::string::npos) << log;
  int64_t kept = 0, vision_loaded = 0;
  auto is_vision = [](const std::string& n) {
    return n.rfind("model.vision_tower.", 0) == 0 || n.rfind("model.embed_vision.", 0) == 0;
  };
  auto is_audio = [](const std::string& n) {
    return n.rfind("model.audio_tower.", 0) == 0 || n.rfind("model.embed_audio.", 0) == 0;
  };
  for (const auto& [name, b] : m->params().buffers) {
    kept += is_audio(name);
    if (is_audio(name)) {
      EXPECT_EQ(b.kind, model::ParamKind::kAudioClip) << name;
    }
    vision_loaded += is_vision(name);
  }
  for (const std::string& n : m->params().order) {
    kept += is_audio(n);
    vision_loaded += is_vision(n);
  }
  EXPECT_EQ(kept, audio);
  EXPECT_EQ(vision_loaded, vision);

  const auto ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  ag::NoGrad no_grad;
  const Tensor f = ref.get("input_features"), mask = ref.get("input_features_mask");
  const Tensor a = model::AudioTower::from_params(m->params(), m->config()).forward(f, mask).hidden.value();
  const Tensor b = model::AudioTower::load(reader, m->config().audio, m->config().hidden_size).forward(f, mask).hidden.value();
  EXPECT_EQ(test::max_diff(a, b), 0.0);

  int64_t exported = 0;
  for (const auto& [name, t] : model::export_hf_state_dict(*m)) {
    if (name.rfind("model.audio_tower.", 0) != 0 && name.rfind("model.embed_audio.", 0) != 0) continue;
    ++exported;
    EXPECT_EQ(test::max_diff(t.reshape({-1}), reader.get_f32(name, reader.info(name).shape).reshape({-1})), 0.0) << name;
  }
  EXPECT_EQ(exported, audio);
}

// transformers initialises a clipped linear's bounds to -inf and +inf (no clipping) and saves them as
// they are: such a checkpoint (here every bound of both towers) loads, where the check for damaged
// weights refused it (tools/probe_processors_vs_transformers.py found it), and its audio tower runs;
// a NaN bound is still damage.
TEST(AudioTower, InfiniteClipBoundsAsTransformersSavesThemLoad) {
  namespace fs = std::filesystem;
  const fs::path dir = test::scratch_dir("unclipped_audio");
  fs::copy(fixture("tiny-mm-e"), dir, fs::copy_options::recursive);
  const auto fixture_weights = io::SafetensorsReader::open(fixture("tiny-mm-e") + "/model.safetensors");
  // Every bound ±inf, or NaN when nan_bound is.
  const auto rewrite = [&](double nan_bound) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    int64_t bounds = 0;
    for (const std::string& name : fixture_weights.names()) {
      Tensor t = fixture_weights.get(name);
      for (const std::string b : model::kClipBounds) {
        if (!name.ends_with("." + b)) continue;
        const double inf = std::numeric_limits<double>::infinity();
        t = Tensor::full(t.shape(), std::isnan(nan_bound) ? nan_bound : (b.ends_with("min") ? -inf : inf), t.dtype());
        ++bounds;
      }
      tensors.emplace_back(name, t);
    }
    EXPECT_EQ(bounds, 136);  // the audio tower's 20 clipped linears and the vision tower's 14
    io::save_safetensors((dir / "model.safetensors").string(), tensors);
  };
  rewrite(0.0);
  const auto model = model::load_hf_model(dir.string());
  EXPECT_EQ(element_as_double(model->params().buffer("model.audio_tower.layers.0.feed_forward1.ffw_layer_1.input_max"), 0),
            std::numeric_limits<double>::infinity());
  const auto ref = io::SafetensorsReader::open(fixture("tiny-mm-e") + "/reference.safetensors");
  ag::NoGrad no_grad;
  const Tensor f = ref.get("input_features"), mask = ref.get("input_features_mask");
  const Tensor out = model::AudioTower::from_params(model->params(), model->config()).forward(f, mask).hidden.value();
  const auto reader = io::SafetensorsReader::open(dir.string());
  EXPECT_EQ(test::max_diff(out, model::AudioTower::load(reader, model->config().audio, model->config().hidden_size)
                                    .forward(f, mask).hidden.value()),
            0.0);
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isfinite(element_as_double(out, i))) << i;
  rewrite(std::numeric_limits<double>::quiet_NaN());
  const std::string e = test::error_of([&] { model::load_hf_model(dir.string()); });
  EXPECT_NE(e.find("holds a NaN"), std::string::npos) << e;
  EXPECT_NE(e.find("damaged"), std::string::npos) << e;
  fs::remove_all(dir);
}

// The forward's audio inputs: features and mask together, as many soft tokens as placeholders, and
// a model with an audio tower.
TEST(AudioTower, ForwardInputErrorsNameTheInput) {
  const std::string dir = fixture("tiny-mm-e");
  const auto m = model::load_hf_model(dir);
  const auto ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  model::ForwardInputs in;
  in.input_ids = ref.get("input_ids").clone();
  in.input_features = ref.get("input_features").clone();
  ag::NoGrad no_grad;
  EXPECT_NE(test::error_of([&] { m->forward(in); }).find("input_features_mask"), std::string::npos);
  // The first clip only: 40 soft tokens for the 63 placeholders of both clips.
  in.input_features = ref.get("input_features").slice0(0, 1).clone();
  in.input_features_mask = ref.get("input_features_mask").slice0(0, 1).clone();
  const std::string msg = test::error_of([&] { m->forward(in); });
  EXPECT_NE(msg.find("placeholder tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[40, 32]"), std::string::npos) << msg;

  const auto text_only = model::load_hf_model(test::data_dir() + "/hf-gemma4/tiny-dense-ple");
  model::ForwardInputs t;
  t.input_ids = Tensor::zeros({1, 4}, DType::I64);
  t.input_features = randn({1, 8, 128}, 3);
  t.input_features_mask = Tensor::zeros({1, 8}, DType::Bool);
  EXPECT_NE(test::error_of([&] { text_only->forward(t); }).find("no audio tower"), std::string::npos);
}

// Chunk/context pairs other than the released (12, 13): transformers' relative table holds the
// distances (C + P) / 2 .. 0 (P = context_left - 1) and its shift gives key s of query t the row
// P - (t - s), so the distance a key sees is shifted by (C + P) / 2 - P, and rows past the table
// are zero. g4 once took the row for distance t - s whatever the sizes (found by
// tools/probe_towers_vs_transformers.py: at (4, 3) a model's logits were 1.6e-2 off and some audio
// gradients 70 % off).
// tiny-mm-e's tower on its recorded features against transformers' at (4, 3), (4, 9), (12, 25)
// (tests/data/hf-gemma4-mm/audio-context.safetensors, written by that tool's
// --write-audio-context-reference).
TEST(AudioTower, OtherChunkAndContextFollowTransformers) {
  const std::string dir = fixture("tiny-mm-e");
  const io::ModelConfig config = io::load_model_config(dir);
  const auto model = io::SafetensorsReader::open(dir + "/model.safetensors");
  const auto ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const auto want = io::SafetensorsReader::open(test::data_dir() + "/hf-gemma4-mm/audio-context.safetensors");
  ag::NoGrad no_grad;
  for (const auto& [chunk, left] : std::vector<std::pair<int64_t, int64_t>>{{4, 3}, {4, 9}, {12, 25}}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk) + ", context_left " + std::to_string(left));
    io::AudioConfig c = config.audio;
    c.chunk_size = chunk;
    c.context_left = left;
    const model::AudioTower tower = model::AudioTower::load(model, c, config.hidden_size);
    const model::AudioTower::Output out = tower.forward(ref.get("input_features"), ref.get("input_features_mask"));
    const std::string key = "chunk" + std::to_string(chunk) + "_left" + std::to_string(left);
    const Tensor mask = want.get(key + ".output_mask");
    ASSERT_EQ(out.mask.shape(), mask.shape());
    for (int64_t i = 0; i < mask.numel(); ++i) ASSERT_EQ(element_as_int(out.mask, i), element_as_int(mask, i)) << i;
    const double err = test::max_diff(out.hidden.value(), want.get(key + ".last_hidden_state"), mask);
    std::cout << key << ": max |g4 - transformers| " << err << " where the output mask is true\n";
    EXPECT_LE(err, 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, AudioTowerFixture, ::testing::Values("tiny-mm-e", "tiny-mm-bidir"));

// A tiny random tower written as a checkpoint (every parameter fresh random, finite clip bounds).
model::AudioTower random_tower(const std::string& dir, const io::AudioConfig& c, int64_t text_hidden) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 100;
  const std::string T = "model.audio_tower.";
  auto add = [&](const std::string& name, const Shape& shape, double scale, double shift = 0) {
    Tensor t = randn(shape, seed++, DType::F32, scale);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] += float(shift);
    tensors.emplace_back(name, t);
  };
  auto clipped = [&](const std::string& name, const Shape& shape) {
    add(T + name + ".linear.weight", shape, 1.0 / std::sqrt(double(shape[1])));
    tensors.emplace_back(T + name + ".input_min", Tensor::full({}, -2.5));
    tensors.emplace_back(T + name + ".input_max", Tensor::full({}, 2.5));
    tensors.emplace_back(T + name + ".output_min", Tensor::full({}, -1.5));
    tensors.emplace_back(T + name + ".output_max", Tensor::full({}, 1.5));
  };
  const int64_t H = c.hidden_size;
  add(T + "subsample_conv_projection.layer0.conv.weight", {c.conv_channels0, 1, 3, 3}, 0.3);
  add(T + "subsample_conv_projection.layer0.norm.weight", {c.conv_channels0}, 0.2, 1.0);
  add(T + "subsample_conv_projection.layer1.conv.weight", {c.conv_channels1, c.conv_channels0, 3, 3}, 0.03);
  add(T + "subsample_conv_projection.layer1.norm.weight", {c.conv_channels1}, 0.2, 1.0);
  add(T + "subsample_conv_projection.input_proj_linear.weight", {H, 32 * c.conv_channels1}, 0.12);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    for (const char* ff : {"feed_forward1.", "feed_forward2."}) {
      clipped(L + ff + "ffw_layer_1", {4 * H, H});
      clipped(L + ff + "ffw_layer_2", {H, 4 * H});
      add(T + L + ff + "pre_layer_norm.weight", {H}, 0.2, 1.0);
      add(T + L + ff + "post_layer_norm.weight", {H}, 0.2, 1.0);
    }
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "post"}) clipped(L + "self_attn." + proj, {H, H});
    add(T + L + "self_attn.relative_k_proj.weight", {H, H}, 0.35);
    add(T + L + "self_attn.per_dim_scale", {H / c.num_heads}, 0.5);
    clipped(L + "lconv1d.linear_start", {2 * H, H});
    clipped(L + "lconv1d.linear_end", {H, H});
    add(T + L + "lconv1d.depthwise_conv1d.weight", {H, 1, c.conv_kernel_size}, 0.5);
    add(T + L + "lconv1d.pre_layer_norm.weight", {H}, 0.2, 1.0);
    add(T + L + "lconv1d.conv_norm.weight", {H}, 0.2, 1.0);
    for (const char* n : {"norm_pre_attn", "norm_post_attn", "norm_out"}) add(T + L + n + ".weight", {H}, 0.2, 1.0);
  }
  add(T + "output_proj.weight", {c.output_proj_dims, H}, 0.35);
  add(T + "output_proj.bias", {c.output_proj_dims}, 0.1);
  add("model.embed_audio.embedding_projection.weight", {text_hidden, c.output_proj_dims}, 0.4);
  io::save_safetensors(dir + "/model.safetensors", tensors);
  return model::AudioTower::load(io::SafetensorsReader::open(dir + "/model.safetensors"), c, text_hidden);
}

TEST(AudioTower, GradientsMatchCentralDifferences) {
  io::AudioConfig c;
  c.hidden_size = 8, c.num_layers = 1, c.num_heads = 2, c.conv_channels1 = 2, c.conv_kernel_size = 3;
  c.chunk_size = 4, c.context_left = 5, c.output_proj_dims = 6;
  const std::string dir = std::filesystem::temp_directory_path() / ("g4_audio_tower_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const model::AudioTower tower = random_tower(dir, c, 4).to_f64();
  std::filesystem::remove_all(dir);

  // Two clips of 13 frames, the second with 9 valid: 4 subsampled frames, 4 and 3 valid.
  const int64_t B = 2, T = 13;
  const Tensor features = randn({B, T, 128}, 7, DType::F64, 2.0);
  Tensor mask = Tensor::zeros({B, T}, DType::Bool);
  for (int64_t t = 0; t < T; ++t) mask.data<uint8_t>()[t] = 1, mask.data<uint8_t>()[T + t] = t < 9;
  const Tensor dout = randn({B, 4, 4}, 8, DType::F64);
  // L = Σ embed(tower(x)) ∘ dout over the valid output frames.
  auto loss = [&](const model::AudioTower::Output& o) {
    Tensor w = dout.clone();
    for (int64_t r = 0; r < B * 4; ++r)
      if (element_as_int(o.mask, r) == 0)
        for (int64_t j = 0; j < 4; ++j) w.data<double>()[r * 4 + j] = 0;
    return ag::sum_all(ag::mul(tower.embed(o.hidden), ag::Var(w)));
  };
  const model::AudioTower::Output out = tower.forward(features, mask);
  EXPECT_EQ(element_as_int(out.mask, 4 + 2), 1);
  EXPECT_EQ(element_as_int(out.mask, 4 + 3), 0);
  ag::backward(loss(out));

  std::mt19937 rng(3);
  for (const auto& [name, var] : tower.parameters()) {
    ASSERT_TRUE(var.grad().defined()) << name;
    ag::Var shared = var;  // shares the parameter's storage
    Tensor& value = shared.mutable_value();
    for (int probe = 0; probe < 2; ++probe) {
      const int64_t i = std::uniform_int_distribution<int64_t>(0, value.numel() - 1)(rng);
      const double saved = value.data<double>()[i], eps = 1e-6;
      ag::NoGrad no_grad;
      value.data<double>()[i] = saved + eps;
      const double up = element_as_double(loss(tower.forward(features, mask)).value(), 0);
      value.data<double>()[i] = saved - eps;
      const double down = element_as_double(loss(tower.forward(features, mask)).value(), 0);
      value.data<double>()[i] = saved;
      const double numeric = (up - down) / (2 * eps), analytic = element_as_double(var.grad(), i);
      EXPECT_NEAR(analytic, numeric, 1e-6 * (1 + std::abs(numeric))) << name << "[" << i << "]";
    }
  }
}

TEST(AudioTower, BadInputsAndConfigsGiveClearErrors) {
  const std::string dir = fixture("tiny-mm-e");
  const io::ModelConfig config = io::load_model_config(dir);
  const model::AudioTower tower =
      model::AudioTower::load(io::SafetensorsReader::open(dir + "/model.safetensors"), config.audio, config.hidden_size);
  EXPECT_NE(test::error_of([&] { tower.forward(randn({1, 8, 64}, 1), Tensor::zeros({1, 8}, DType::Bool)); })
                .find("must be [B, T, 128]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { tower.forward(randn({1, 8, 128}, 1), Tensor::zeros({1, 9}, DType::Bool)); })
                .find("input_features_mask"),
            std::string::npos);
  io::AudioConfig wrong = config.audio;
  wrong.hidden_size = 16;
  EXPECT_NE(test::error_of([&] {
              model::AudioTower::load(io::SafetensorsReader::open(dir + "/model.safetensors"), wrong, config.hidden_size);
            }).find("model.audio_tower.subsample_conv_projection.input_proj_linear.weight"),
            std::string::npos);

  nlohmann::json j = nlohmann::json::parse(R"({"model_type": "gemma4", "text_config": {}, "audio_config": {}})");
  auto err = [&](const nlohmann::json& audio) {
    nlohmann::json k = j;
    k["audio_config"] = audio;
    return test::error_of([&] { io::parse_model_config(k, "cfg.json"); });
  };
  EXPECT_NE(err({{"subsampling_conv_channels", {64, 32}}}).find("'audio_config.subsampling_conv_channels' starts with 64"),
            std::string::npos);
  EXPECT_NE(err({{"hidden_size", 30}, {"num_attention_heads", 4}}).find("'audio_config.hidden_size' is 30"), std::string::npos);
  EXPECT_NE(err({{"attention_context_right", 2}}).find("attention_context_right"), std::string::npos);
  EXPECT_NE(err({{"num_hidden_layers", 0}}).find("'audio_config.num_hidden_layers' is 0"), std::string::npos);
  EXPECT_NE(err({{"hidden_act", "gelu"}}).find("must be silu"), std::string::npos);
}

}  // namespace
}  // namespace g4

// LoRA adapters (model/lora.h): the forward is the base plus (alpha/r)·x·Aᵀ·Bᵀ, the gradients of A and B
// are the loss's (finite differences in f64), a fresh adapter computes the base exactly, PEFT's files
// round trip with PEFT's key names and config fields, and the merged model computes the adapted one.
#include "model/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/variable.h"
#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/finite_difference.h"
#include "support/g4_process.h"
#include "support/hf_fixtures.h"
#include "support/lora_model.h"
#include "support/tensor_compare.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using model::LoraConfig;

const char* kFixture = "tiny-dense-keqv";

LoraConfig lora_config(int64_t rank = 4, double alpha = 8) {
  LoraConfig c;
  c.rank = rank;
  c.alpha = alpha;
  c.seed = 11;
  return c;
}

model::ForwardInputs random_batch(uint64_t seed, int64_t vocab) { return test::random_lm_batch(seed, vocab, 2, 7); }
using test::randomise_lora_b;

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const Tensor x = a.to(DType::F64), y = b.to(DType::F64);
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::abs(x.data<double>()[i] - y.data<double>()[i]));
  return m;
}

Tensor logits_of(const model::Gemma4& m, const model::ForwardInputs& in) { return test::eval_logits(m, in); }

TEST(Lora, TargetsFollowPeftSuffixAndRegexRules) {
  const io::ModelConfig cfg = model::load_hf_config(test::hf_fixture_dir(kFixture));
  LoraConfig c = lora_config();
  // K=V layers have no v_proj; every layer has q, k, o and the dense MLP's three.
  const auto all = model::lora_modules(cfg, c);
  EXPECT_GT(all.size(), 6u * static_cast<size_t>(cfg.num_layers) - 2);
  c.targets = {"self_attn.q_proj", "down_proj"};
  const auto two = model::lora_modules(cfg, c);
  ASSERT_EQ(two.size(), 2u * static_cast<size_t>(cfg.num_layers));
  EXPECT_EQ(two[0].name, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(two[0].in, cfg.hidden_size);
  EXPECT_EQ(two[1].name, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(two[1].out, cfg.hidden_size);
  c.targets = {"proj"};  // a suffix matches at a dot only
  EXPECT_NE(test::error_of([&] { model::lora_modules(cfg, c); }).find("select none"), std::string::npos);
  c.target_regex = R"(model\.layers\.1\.mlp\.(up|gate)_proj)";
  const auto re = model::lora_modules(cfg, c);
  ASSERT_EQ(re.size(), 2u);
  EXPECT_EQ(re[0].name, "model.layers.1.mlp.gate_proj");
  c.target_regex = "(";
  EXPECT_NE(test::error_of([&] { model::validate_lora(c, "r.yaml"); }).find("not a valid regular expression"),
            std::string::npos);
  for (const auto& [rank, alpha, dropout, want] :
       {std::tuple{0, 8.0, 0.0, "rank must be > 0"}, std::tuple{4, 0.0, 0.0, "alpha must be > 0"},
        std::tuple{4, 8.0, 1.0, "dropout must be in [0, 1)"}}) {
    LoraConfig bad = lora_config(rank, alpha);
    bad.dropout = dropout;
    EXPECT_NE(test::error_of([&] { model::validate_lora(bad, "r.yaml"); }).find(want), std::string::npos) << want;
  }
}

// A starts as PEFT draws it (bounded by 1/sqrt(in), not constant), B at zero: the model's logits are
// the base's, bit for bit; the adapters are parameters of their own kinds.
TEST(Lora, FreshAdaptersComputeTheBaseExactly) {
  const auto base = model::load_hf_model(test::hf_fixture_dir(kFixture));
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture));
  m->enable_lora(lora_config());
  for (const model::LoraModule& mod : model::lora_modules(m->config(), *m->lora())) {
    const Tensor a = m->params().at(model::lora_a_name(mod.name)).value();
    EXPECT_EQ(a.shape(), Shape({4, mod.in}));
    EXPECT_EQ(m->params().kind(model::lora_a_name(mod.name)), model::ParamKind::kLoraA);
    EXPECT_EQ(m->params().kind(model::lora_b_name(mod.name)), model::ParamKind::kLoraB);
    const double bound = 1.0 / std::sqrt(static_cast<double>(mod.in));
    double lo = 1, hi = -1;
    for (int64_t i = 0; i < a.numel(); ++i) {
      lo = std::min(lo, double(a.data<float>()[i]));
      hi = std::max(hi, double(a.data<float>()[i]));
    }
    EXPECT_GE(lo, -bound);
    EXPECT_LE(hi, bound);
    EXPECT_LT(lo, -bound / 4);  // spread over the interval
    EXPECT_GT(hi, bound / 4);
    EXPECT_EQ(
        max_abs_diff(m->params().at(model::lora_b_name(mod.name)).value(), Tensor::zeros({mod.out, 4}, DType::F32)),
        0.0);
  }
  const model::ForwardInputs in = random_batch(3, m->config().vocab_size);
  EXPECT_EQ(max_abs_diff(logits_of(*m, in), logits_of(*base, in)), 0.0);
  EXPECT_NE(test::error_of([&] { m->enable_lora(lora_config()); }).find("already has LoRA"), std::string::npos);
}

// y = x·Wᵀ + (alpha/r)·x·Aᵀ·Bᵀ: the adapted model (f64) computes what the base does with every adapted
// W replaced by W + (alpha/r)·B·A, formed here by hand.
TEST(Lora, ForwardIsTheBasePlusTheScaledAdapter) {
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture), {}, DType::F64);
  auto by_hand = model::load_hf_model(test::hf_fixture_dir(kFixture), {}, DType::F64);
  m->enable_lora(lora_config(3, 5));
  randomise_lora_b(*m, 100);
  const double s = 5.0 / 3.0;
  for (const model::LoraModule& mod : model::lora_modules(m->config(), *m->lora())) {
    const Tensor a = m->params().at(model::lora_a_name(mod.name)).value();
    const Tensor b = m->params().at(model::lora_b_name(mod.name)).value();
    Tensor& w = by_hand->params().at(mod.name + ".weight").mutable_value();
    for (int64_t o = 0; o < mod.out; ++o)
      for (int64_t i = 0; i < mod.in; ++i) {
        double acc = 0;
        for (int64_t k = 0; k < 3; ++k) acc += b.data<double>()[o * 3 + k] * a.data<double>()[k * mod.in + i];
        w.data<double>()[o * mod.in + i] += s * acc;
      }
  }
  const model::ForwardInputs in = random_batch(5, m->config().vocab_size);
  const Tensor want = logits_of(*by_hand, in);
  const Tensor got = logits_of(*m, in);
  EXPECT_GT(max_abs_diff(got, logits_of(*model::load_hf_model(test::hf_fixture_dir(kFixture), {}, DType::F64), in)),
            1e-3);  // the adapters do change the function
  EXPECT_LT(max_abs_diff(got, want), 1e-10);
}

// d loss / dA and d loss / dB against central differences in f64, with dropout on (the mask is
// the call number's, replayed for every evaluation) and the base frozen.
TEST(Lora, GradientsOfAAndBMatchFiniteDifferences) {
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture), {}, DType::F64);
  LoraConfig c = lora_config(2, 6);
  c.dropout = 0.25;
  c.targets = {"q_proj", "o_proj", "up_proj", "down_proj"};
  m->enable_lora(c);
  randomise_lora_b(*m, 200);
  for (const std::string& n : m->params().order)
    m->params().at(n).set_requires_grad(model::is_lora(m->params().kind(n)));
  const model::ForwardInputs in = random_batch(7, m->config().vocab_size);
  auto loss = [&] {
    m->set_lora_calls(0);
    return m->forward(in).loss;
  };
  ag::backward(loss());
  EXPECT_FALSE(m->params().at("model.layers.0.self_attn.q_proj.weight").grad().defined());  // frozen: no gradient
  int checked = 0;
  for (const std::string name :
       {"model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.2.self_attn.o_proj.lora_B.weight",
        "model.layers.5.mlp.up_proj.lora_A.weight", "model.layers.3.mlp.down_proj.lora_B.weight"}) {
    Tensor& p = m->params().at(name).mutable_value();
    const Tensor g = m->params().at(name).grad().clone();
    for (const int64_t i : {int64_t{0}, p.numel() / 2, p.numel() - 1}) {
      // In grad mode: NoGrad would switch the dropout off.
      const double fd = test::central_difference(p, i, [&] { return loss().value().item(); });
      EXPECT_NEAR(g.data<double>()[i], fd, 1e-7 + 1e-6 * std::abs(fd)) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

// Dropout is on in training forwards only, reproducible by call number, and changes the masks
// from one call to the next.
TEST(Lora, DropoutIsForTrainingForwardsAndReplaysByCallNumber) {
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture));
  LoraConfig c = lora_config();
  c.dropout = 0.5;
  m->enable_lora(c);
  randomise_lora_b(*m, 300);
  const model::ForwardInputs in = random_batch(9, m->config().vocab_size);
  auto off = model::load_hf_model(test::hf_fixture_dir(kFixture));
  off->enable_lora(lora_config());
  for (const std::string& n : m->params().order)
    off->params().at(n).mutable_value().copy_from(m->params().at(n).value());
  const double no_dropout = off->forward(in).loss.value().item();
  EXPECT_EQ(max_abs_diff(logits_of(*m, in), logits_of(*off, in)), 0.0);  // eval: no dropout
  EXPECT_EQ(m->lora_calls(), 0u);
  const double first = m->forward(in).loss.value().item();
  const double second = m->forward(in).loss.value().item();
  EXPECT_EQ(m->lora_calls(), 2u);
  m->set_lora_calls(0);
  EXPECT_EQ(m->forward(in).loss.value().item(), first);
  EXPECT_NE(first, second);
  EXPECT_NE(first, no_dropout);
  // The mask: zeros with probability p, the rest 1 / (1 - p).
  const Tensor mask =
      model::lora_dropout_mask({4000}, 0.5, 1, 2, "model.layers.0.mlp.up_proj", DType::F32, Device::CPU);
  int64_t kept = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    const float v = mask.data<float>()[i];
    EXPECT_TRUE(v == 0.0f || v == 2.0f) << v;
    kept += v != 0.0f;
  }
  EXPECT_NEAR(double(kept) / 4000, 0.5, 0.05);
}

// PEFT's files: adapter_config.json with PEFT's fields, adapter_model.safetensors with
// get_peft_model_state_dict's keys; loading them back gives the same adapters, and the merged
// model (W + alpha/r·B·A) computes the adapted model's logits.
TEST(Lora, PeftFilesRoundTripAndTheMergedModelComputesTheAdaptedOne) {
  const fs::path dir = test::scratch_dir("lora_peft");
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture));
  LoraConfig c = lora_config(4, 16);
  c.targets = {"q_proj", "k_proj", "o_proj", "down_proj"};
  c.dropout = 0.1;
  c.base_model = "google/some-base";
  m->enable_lora(c);
  randomise_lora_b(*m, 400);
  model::save_hf_checkpoint(*m, dir.string());
  EXPECT_FALSE(io::SafetensorsReader::open(dir.string()).has("model.layers.0.self_attn.q_proj.lora_A.weight"));
  const fs::path adapter = dir / model::kLoraAdapterDir;
  const nlohmann::json cfg = io::read_json_file((adapter / "adapter_config.json").string(), "test", 1 << 20);
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["lora_dropout"], 0.1);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["fan_in_fan_out"], false);
  EXPECT_EQ(cfg["use_rslora"], false);
  EXPECT_EQ(cfg["base_model_name_or_path"], "google/some-base");
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"q_proj", "k_proj", "o_proj", "down_proj"}));
  const io::SafetensorsReader r = io::SafetensorsReader::open((adapter / "adapter_model.safetensors").string());
  const std::string key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  ASSERT_TRUE(r.has(key));
  EXPECT_EQ(r.info(key).shape, Shape({4, m->config().hidden_size}));
  EXPECT_TRUE(r.has("base_model.model.model.layers.5.mlp.down_proj.lora_B.weight"));
  EXPECT_EQ(r.names().size(), 2 * model::lora_modules(m->config(), c).size());
  EXPECT_EQ(r.metadata().at("format"), "pt");

  auto loaded = model::load_hf_model(dir.string());
  model::apply_peft_adapter(*loaded, adapter.string());
  for (const std::string& n : m->params().order)
    EXPECT_EQ(max_abs_diff(loaded->params().at(n).value(), m->params().at(n).value()), 0.0) << n;
  const model::ForwardInputs in = random_batch(13, m->config().vocab_size);
  const Tensor adapted = logits_of(*m, in);
  const auto merged = model::merge_lora(*m);
  EXPECT_FALSE(merged->lora());
  EXPECT_LT(max_abs_diff(logits_of(*merged, in), adapted), 1e-5);
  EXPECT_GT(max_abs_diff(logits_of(*model::load_hf_model(test::hf_fixture_dir(kFixture)), in), adapted), 1e-3);
  fs::remove_all(dir);
}

// A Gemma4ForConditionalGeneration's adapter: keys under model.language_model., and the targets held to
// the text decoder by a regex (a list would also select the vision tower's projections in PEFT).
TEST(Lora, ConditionalCheckpointsNameTheLanguageModel) {
  const fs::path dir = test::scratch_dir("lora_conditional");
  auto m = model::load_hf_model(test::hf_fixture_dir("var-moe-untied"));
  LoraConfig c = lora_config();
  c.targets = {"q_proj", "mlp.down_proj"};
  m->enable_lora(c);
  randomise_lora_b(*m, 500);
  model::save_peft_adapter(*m, dir.string());
  const nlohmann::json cfg = io::read_json_file((dir / "adapter_config.json").string(), "test", 1 << 20);
  EXPECT_EQ(cfg["target_modules"], R"(model\.language_model\.layers\.(?:.*\.)?(?:q_proj|mlp\.down_proj))");
  const io::SafetensorsReader r = io::SafetensorsReader::open((dir / "adapter_model.safetensors").string());
  EXPECT_TRUE(r.has("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"));
  EXPECT_TRUE(r.has("base_model.model.model.language_model.layers.1.mlp.down_proj.lora_A.weight"));
  EXPECT_EQ(r.names().size(), 2 * model::lora_modules(m->config(), c).size());
  auto loaded = model::load_hf_model(test::hf_fixture_dir("var-moe-untied"));
  model::apply_peft_adapter(*loaded, dir.string());
  const model::ForwardInputs in = random_batch(17, m->config().vocab_size);
  EXPECT_EQ(max_abs_diff(logits_of(*loaded, in), logits_of(*m, in)), 0.0);
  fs::remove_all(dir);
}

TEST(Lora, BadAdaptersAreClearErrors) {
  const fs::path dir = test::scratch_dir("lora_bad");
  auto m = model::load_hf_model(test::hf_fixture_dir(kFixture));
  m->enable_lora(lora_config());
  model::save_peft_adapter(*m, dir.string());
  const std::string cfg_path = (dir / "adapter_config.json").string();
  nlohmann::json cfg = io::read_json_file(cfg_path, "test", 1 << 20);
  auto fresh = [&] { return model::load_hf_model(test::hf_fixture_dir(kFixture)); };
  auto with = [&](const char* key, const nlohmann::json& v) {
    nlohmann::json c = cfg;
    c[key] = v;
    io::write_file_atomic(cfg_path, c.dump());
    return test::error_of([&] { model::apply_peft_adapter(*fresh(), dir.string()); });
  };
  EXPECT_NE(with("use_dora", true).find("'use_dora' true is not supported"), std::string::npos);
  EXPECT_NE(with("peft_type", "IA3").find("peft_type must be \"LORA\""), std::string::npos);
  EXPECT_NE(with("r", 0).find("rank must be > 0"), std::string::npos);
  EXPECT_NE(with("r", 8).find("tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' in"),
            std::string::npos);
  EXPECT_NE(with("target_modules", nlohmann::json({"q_proj"})).find("that is not an adapter"), std::string::npos);
  io::write_file_atomic(cfg_path, cfg.dump());
  const std::string weights = (dir / "adapter_model.safetensors").string();
  std::vector<std::pair<std::string, Tensor>> fewer;
  {
    const io::SafetensorsReader r = io::SafetensorsReader::open(weights);
    for (const std::string& n : r.names())
      if (n != "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight") fewer.emplace_back(n, r.get(n).clone());
  }
  io::save_safetensors(weights, fewer);
  EXPECT_NE(test::error_of([&] {
              model::apply_peft_adapter(*fresh(), dir.string());
            }).find("has no tensor 'base_model.model.model.layers.1.mlp.up_proj.lora_B.weight'"),
            std::string::npos);
  auto other = fresh();
  other->enable_lora(lora_config(2));
  EXPECT_NE(test::error_of([&] { model::load_peft_adapter(*other, dir.string()); }).find("other than the model's"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

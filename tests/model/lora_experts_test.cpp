// LoRA on the routed experts (model/lora.h, model/moe.h): one pair per expert through the grouped
// GEMMs. The forward is the base with W_e + (alpha/r)·A_e·B_e (down's term times per_expert_scale),
// the gradients of A and B are the loss's (finite differences in f64), fresh adapters compute the base
// exactly, PEFT's files hold ParamWrapper's layout and keys, and the merged model computes the adapted one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/variable.h"
#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/lora.h"
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

const char* kFixture = "tiny-moe";
const std::string kGateUp = "model.layers.1.moe.experts.gate_and_up_projs";
const std::string kDown = "model.layers.1.moe.experts.down_projs";

LoraConfig expert_lora(std::vector<std::string> targets, int64_t rank = 3, double alpha = 5) {
  LoraConfig c;
  c.rank = rank;
  c.alpha = alpha;
  c.seed = 7;
  c.targets = std::move(targets);
  return c;
}

std::unique_ptr<model::Gemma4> fixture(DType dtype = DType::F32) {
  return model::load_hf_model(test::hf_fixture_dir(kFixture), {}, dtype);
}

model::ForwardInputs random_batch(uint64_t seed, int64_t vocab) { return test::random_lm_batch(seed, vocab, 2, 9); }
Tensor logits_of(const model::Gemma4& m, const model::ForwardInputs& in) { return test::eval_logits(m, in); }

double at(const Tensor& t, int64_t i) { return t.to(DType::F64).data<double>()[i]; }

TEST(LoraExperts, TargetsNameTheExpertWeightsAndAdaptersArePerExpert) {
  const io::ModelConfig cfg = model::load_hf_config(test::hf_fixture_dir(kFixture));
  const int64_t E = cfg.num_experts, H = cfg.hidden_size, I = cfg.moe_intermediate_size, L = cfg.num_layers;
  // The defaults and a bare "down_proj" keep to the dense projections (PEFT's target_modules).
  for (const model::LoraModule& m : model::lora_modules(cfg, expert_lora({}))) EXPECT_EQ(m.experts, 0) << m.name;
  for (const model::LoraModule& m : model::lora_modules(cfg, expert_lora({"down_proj"}))) EXPECT_EQ(m.experts, 0);
  const auto both = model::lora_modules(cfg, expert_lora({"experts.gate_up_proj", "experts.down_proj"}));
  ASSERT_EQ(both.size(), 2u * static_cast<size_t>(L));
  EXPECT_EQ(both[2].name, kGateUp);
  EXPECT_EQ(both[2].experts, E);
  EXPECT_EQ(both[2].in, H);
  EXPECT_EQ(both[2].out, 2 * I);
  EXPECT_EQ(both[3].name, kDown);
  EXPECT_EQ(both[3].in, I);
  EXPECT_EQ(both[3].out, H);
  EXPECT_EQ(model::lora_modules(cfg, expert_lora({"layers.3.experts.down_proj"})).size(), 1u);
  LoraConfig regex = expert_lora({"experts.down_proj"});
  regex.target_regex = R"(.*layers\.0\.self_attn\.q_proj)";  // expert entries hold beside the regex
  EXPECT_EQ(model::lora_modules(cfg, regex).size(), 1u + static_cast<size_t>(L));
  LoraConfig params = expert_lora({"q_proj"});
  params.target_parameters = {"gate_up_proj"};  // PEFT's suffix rule on the parameter's name
  EXPECT_EQ(model::lora_modules(cfg, params).size(), 2u * static_cast<size_t>(L));

  auto m = fixture();
  const auto base = fixture();
  m->enable_lora(expert_lora({"experts.gate_up_proj", "experts.down_proj"}));
  const Tensor a = m->params().at(model::lora_a_name(kDown)).value();
  EXPECT_EQ(a.shape(), Shape({E, I, 3}));
  EXPECT_EQ(m->params().at(model::lora_b_name(kDown)).value().shape(), Shape({E, 3, H}));
  // Kinds of their own, split by expert like the weights they adapt (expert parallelism).
  EXPECT_EQ(m->params().kind(model::lora_a_name(kDown)), model::ParamKind::kExpertLoraA);
  EXPECT_EQ(m->params().kind(model::lora_b_name(kDown)), model::ParamKind::kExpertLoraB);
  EXPECT_TRUE(model::split_by_expert(model::ParamKind::kExpertLoraA));
  EXPECT_TRUE(model::is_lora(model::ParamKind::kExpertLoraB));
  const double bound = 1.0 / std::sqrt(static_cast<double>(I));
  double lo = 1, hi = -1;
  for (int64_t i = 0; i < a.numel(); ++i) lo = std::min(lo, at(a, i)), hi = std::max(hi, at(a, i));
  EXPECT_GE(lo, -bound);
  EXPECT_LE(hi, bound);
  EXPECT_LT(lo, -bound / 2);
  const model::ForwardInputs in = random_batch(3, cfg.vocab_size);
  EXPECT_EQ(test::max_diff(logits_of(*m, in), logits_of(*base, in)), 0.0);  // B = 0: the base, bit for bit
}

// The adapted model (f64) against the base whose expert weights are W_e + s·A_e·B_e, formed by hand;
// down's term is scaled by the layer's per_expert_scale (not all ones in the fixture).
TEST(LoraExperts, ForwardIsTheBaseWithTheScaledPerExpertProduct) {
  auto m = fixture(DType::F64);
  auto by_hand = fixture(DType::F64);
  m->enable_lora(expert_lora({"experts.gate_up_proj", "experts.down_proj", "q_proj"}));
  test::randomise_lora_b(*m, 100);
  const double s = 5.0 / 3.0;
  for (const model::LoraModule& mod : model::lora_modules(m->config(), *m->lora())) {
    const double* a = m->params().at(model::lora_a_name(mod.name)).value().data<double>();
    const double* b = m->params().at(model::lora_b_name(mod.name)).value().data<double>();
    if (mod.experts == 0) {
      double* w = by_hand->params().at(mod.name + ".weight").mutable_value().data<double>();
      for (int64_t o = 0; o < mod.out; ++o)
        for (int64_t i = 0; i < mod.in; ++i)
          for (int64_t k = 0; k < 3; ++k) w[o * mod.in + i] += s * b[o * 3 + k] * a[k * mod.in + i];
      continue;
    }
    const bool down = mod.name.find("down_projs") != std::string::npos;
    const std::string layer = mod.name.substr(0, mod.name.find("moe."));
    const Tensor scale = m->params().buffer(layer + "router.per_expert_scale").to(DType::F64);
    // a [E, in, r], b [E, r, out], w [E, in, out]
    double* w = by_hand->params().at(mod.name).mutable_value().data<double>();
    for (int64_t e = 0; e < mod.experts; ++e)
      for (int64_t i = 0; i < mod.in; ++i)
        for (int64_t o = 0; o < mod.out; ++o) {
          double acc = 0;
          for (int64_t k = 0; k < 3; ++k) acc += a[(e * mod.in + i) * 3 + k] * b[(e * 3 + k) * mod.out + o];
          w[(e * mod.in + i) * mod.out + o] += s * (down ? scale.data<double>()[e] : 1.0) * acc;
        }
  }
  const model::ForwardInputs in = random_batch(5, m->config().vocab_size);
  const Tensor got = logits_of(*m, in);
  EXPECT_GT(test::max_diff(got, logits_of(*fixture(DType::F64), in)), 1e-3);
  EXPECT_LT(test::max_diff(got, logits_of(*by_hand, in)), 1e-10);
}

// d loss / dA and d loss / dB of both expert weights against central differences in f64, with dropout
// on (replayed by call number) and the base frozen.
TEST(LoraExperts, GradientsOfAAndBMatchFiniteDifferences) {
  auto m = fixture(DType::F64);
  LoraConfig c = expert_lora({"experts.gate_up_proj", "experts.down_proj"}, 2, 6);
  c.dropout = 0.25;
  m->enable_lora(c);
  test::randomise_lora_b(*m, 200);
  for (const std::string& n : m->params().order)
    m->params().at(n).set_requires_grad(model::is_lora(m->params().kind(n)));
  model::ForwardInputs in;
  in.input_ids = randint({1, 6}, 7, 0, m->config().vocab_size);
  in.labels = randint({1, 6}, 8, 0, m->config().vocab_size);
  auto loss = [&] {
    m->set_lora_calls(0);
    return m->forward(in).loss;
  };
  ag::backward(loss());
  EXPECT_FALSE(m->params().at(kDown).grad().defined());
  int checked = 0;
  for (const std::string& name : {model::lora_a_name(kGateUp), model::lora_b_name(kGateUp), model::lora_a_name(kDown),
                                  model::lora_b_name(kDown)}) {
    Tensor& p = m->params().at(name).mutable_value();
    const Tensor g = m->params().at(name).grad().clone();
    double largest = 0;
    for (int64_t i = 0; i < g.numel(); ++i) largest = std::max(largest, std::abs(g.data<double>()[i]));
    EXPECT_GT(largest, 1e-8) << name;
    // The largest-gradient element and a fixed one (some experts get no rows).
    int64_t big = 0;
    for (int64_t i = 0; i < g.numel(); ++i)
      if (std::abs(g.data<double>()[i]) == largest) big = i;
    for (const int64_t i : {big, p.numel() - 1}) {
      const double fd = test::central_difference(p, i, [&] { return loss().value().item(); });
      EXPECT_NEAR(g.data<double>()[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 8);
}

// PEFT's ParamWrapper layout: lora_A [E·r, in] (expert e's rows e·r ..), lora_B [out, r·E] (expert e's
// rank k in column k·E + e); gate_up_proj's wrapper under down_proj's (experts.base_layer.) where a
// layer adapts both; target_parameters in the config and no dropout. The files load back to the same
// adapters, and the merged model computes the adapted one.
TEST(LoraExperts, PeftFilesHoldParamWrapperLayoutAndTheMergeComputesTheAdaptedModel) {
  const fs::path dir = test::scratch_dir("lora_experts_peft");
  auto m = fixture();
  LoraConfig c = expert_lora({"q_proj", "experts.gate_up_proj", "experts.down_proj"}, 2, 4);
  c.dropout = 0.1;
  m->enable_lora(c);
  test::randomise_lora_b(*m, 300);
  model::save_peft_adapter(*m, dir.string());
  const nlohmann::json cfg = io::read_json_file((dir / "adapter_config.json").string(), "test", 1 << 20);
  EXPECT_EQ(cfg["target_parameters"], nlohmann::json({"experts.gate_up_proj", "experts.down_proj"}));
  EXPECT_EQ(cfg["target_modules"], R"(model\.language_model\.layers\.(?:.*\.)?(?:q_proj))");
  EXPECT_EQ(cfg["lora_dropout"], 0.0);
  const io::ModelConfig& mc = m->config();
  const int64_t E = mc.num_experts, H = mc.hidden_size, I = mc.moe_intermediate_size;
  const io::SafetensorsReader r = io::SafetensorsReader::open((dir / "adapter_model.safetensors").string());
  const std::string layer = "base_model.model.model.language_model.layers.1.";
  ASSERT_TRUE(r.has(layer + "experts.base_layer.lora_A.weight"));
  EXPECT_EQ(r.info(layer + "experts.base_layer.lora_A.weight").shape, Shape({E * 2, H}));
  EXPECT_EQ(r.info(layer + "experts.base_layer.lora_B.weight").shape, Shape({2 * I, 2 * E}));
  EXPECT_EQ(r.info(layer + "experts.lora_A.weight").shape, Shape({E * 2, I}));
  EXPECT_EQ(r.info(layer + "experts.lora_B.weight").shape, Shape({H, 2 * E}));
  EXPECT_EQ(r.names().size(), 2 * model::lora_modules(mc, c).size());
  const Tensor pa = r.get_f32(layer + "experts.lora_A.weight", {E * 2, I});
  const Tensor pb = r.get_f32(layer + "experts.lora_B.weight", {H, 2 * E});
  const Tensor na = m->params().at(model::lora_a_name(kDown)).value();  // [E, I, 2]
  const Tensor nb = m->params().at(model::lora_b_name(kDown)).value();  // [E, 2, H]
  for (const auto& [e, i, k] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 1}, {E - 1, I - 1, 0}, {0, 2, 1}}) {
    EXPECT_EQ(at(pa, (e * 2 + k) * I + i), at(na, (e * I + i) * 2 + k));
    EXPECT_EQ(at(pb, i * 2 * E + k * E + e), at(nb, (e * 2 + k) * H + i));
  }

  auto loaded = fixture();
  model::apply_peft_adapter(*loaded, dir.string());
  for (const std::string& n : m->params().order)
    EXPECT_EQ(test::max_diff(loaded->params().at(n).value(), m->params().at(n).value()), 0.0) << n;
  const model::ForwardInputs in = random_batch(13, mc.vocab_size);
  const Tensor adapted = logits_of(*m, in);
  EXPECT_LT(test::max_diff(logits_of(*model::merge_lora(*m), in), adapted), 1e-5);
  EXPECT_GT(test::max_diff(logits_of(*fixture(), in), adapted), 1e-3);

  // One expert weight alone: its wrapper is the only one, straight under experts.
  const fs::path one = dir / "down_only";
  auto d = fixture();
  d->enable_lora(expert_lora({"experts.down_proj"}));
  model::save_peft_adapter(*d, one.string());
  const io::SafetensorsReader rd = io::SafetensorsReader::open((one / "adapter_model.safetensors").string());
  EXPECT_TRUE(rd.has(layer + "experts.lora_B.weight"));
  EXPECT_FALSE(rd.has(layer + "experts.base_layer.lora_B.weight"));
  EXPECT_EQ(io::read_json_file((one / "adapter_config.json").string(), "t", 1 << 20)["target_modules"],
            nlohmann::json::array());
  auto d2 = fixture();
  model::apply_peft_adapter(*d2, one.string());  // target_modules [] with target_parameters
  EXPECT_EQ(model::lora_modules(d2->config(), *d2->lora()).size(), static_cast<size_t>(mc.num_layers));
  fs::remove_all(dir);
}

// save_hf_checkpoint writes per_expert_scale as ones (folded into down): the adapter beside it carries
// the scale in down's B, so the checkpoint plus its adapter computes what the model did.
TEST(LoraExperts, AnAdapterBesideAnExportedBaseCarriesThePerExpertScale) {
  const fs::path dir = test::scratch_dir("lora_experts_folded");
  auto m = fixture();
  m->enable_lora(expert_lora({"experts.gate_up_proj", "experts.down_proj"}));
  test::randomise_lora_b(*m, 400);
  model::save_hf_checkpoint(*m, dir.string());
  auto back = model::load_hf_model(dir.string());
  model::apply_peft_adapter(*back, (dir / model::kLoraAdapterDir).string());
  const model::ForwardInputs in = random_batch(17, m->config().vocab_size);
  EXPECT_LT(test::max_diff(logits_of(*back, in), logits_of(*m, in)), 1e-5);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

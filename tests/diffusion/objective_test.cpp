// Block-diffusion training against NeMo Automodel 0.7.0's own step (tests/data/hf-diffusion-gemma,
// reference.safetensors train.*, fp32 CPU): collation, corruption, response window, block masks,
// block selection and coins exact; logits, both loss terms and every gradient within fp32 noise.
// Plus a finite-difference check of the whole objective in f64 and the objective's own batches.
#include "diffusion/objective.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "parallel/single_communicator.h"
#include "support/diffusion_fixtures.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = element_as_int(t, i);
  return v;
}

using test::max_diff;

using test::Replay;

class DiffusionTraining : public ::testing::TestWithParam<std::string> {};

TEST_P(DiffusionTraining, BatchDrawsAndMasksEqualAutomodel) {
  const Replay r(GetParam());
  const diffusion::DllmBatch batch = diffusion::collate(r.examples, r.copt);
  EXPECT_EQ(ints(batch.input_ids), ints(r.ref.get("train.input_ids")));
  EXPECT_EQ(ints(batch.loss_mask), ints(r.ref.get("train.loss_mask")));
  EXPECT_EQ(ints(batch.attention_mask), ints(r.ref.get("train.attention_mask")));
  const int64_t B = batch.rows(), S = batch.length(), V = r.m->config().vocab_size;

  const auto draws = diffusion::corruption_draws(r.am["base_seed"], r.place, B, S, V, r.am["eps"]);
  const std::vector<int64_t> seeds = ints(r.ref.get("train.corrupt.seed"));
  const Tensor t_ref = r.ref.get("train.corrupt.t"), u_ref = r.ref.get("train.corrupt.u");
  const std::vector<int64_t> repl_ref = ints(r.ref.get("train.corrupt.repl"));
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(static_cast<int64_t>(automodel_corruption_seed(r.am["base_seed"], r.place.step, r.place.dp_rank,
                                                             r.place.dp_size, r.place.local_batch_size,
                                                             r.place.grad_acc_steps, r.place.microbatch, b)),
              seeds[static_cast<size_t>(b)]);
    EXPECT_EQ(draws[b].t, t_ref.data<float>()[b]);
    for (int64_t k = 0; k < S; ++k) {
      EXPECT_EQ(draws[b].u.data<float>()[k], u_ref.data<float>()[b * S + k]);
      EXPECT_EQ(draws[b].replacement.data<int64_t>()[k], repl_ref[static_cast<size_t>(b * S + k)]);
    }
  }
  const Tensor noisy = diffusion::corrupt(batch, draws);
  EXPECT_EQ(ints(noisy), ints(r.ref.get("train.noisy_ids")));

  const diffusion::DllmStep s = r.step();
  const diffusion::ResponseWindow& w = s.window;
  EXPECT_EQ(w.prefix, ints(r.ref.get("train.prefix_lengths")));
  EXPECT_EQ(w.selected, ints(r.ref.get("train.sel_block")));
  EXPECT_EQ(ints(s.coins), ints(r.ref.get("train.sc_coins")));
  EXPECT_EQ(ints(w.canvas_ids), ints(r.ref.get("train.canvas_ids")));
  EXPECT_EQ(ints(w.target_ids), ints(r.ref.get("train.target_ids")));
  EXPECT_EQ(ints(w.positions), ints(r.ref.get("train.decoder_position_ids")));
  EXPECT_EQ(ints(w.loss_sel), ints(r.ref.get("train.canvas_loss_mask")));
  const int64_t R = w.length();
  const std::vector<int64_t> pad = ints(r.ref.get("train.decoder_padding_mask"));
  const std::vector<int64_t> noise_ref = ints(r.ref.get("train.canvas_noise_mask"));
  for (int64_t i = 0; i < B * R; ++i) {
    EXPECT_EQ(w.valid.data<int64_t>()[i], 1 - pad[static_cast<size_t>(i)]);
    const int64_t b = i / R;
    const bool noised = element_as_int(r.ref.get("train.noise_mask"), b * S + w.positions.data<int64_t>()[i]) != 0;
    EXPECT_EQ(int64_t(noised && w.valid.data<int64_t>()[i] != 0), noise_ref[static_cast<size_t>(i)]) << i;
  }
  EXPECT_EQ(w.scored(), int64_t(r.am["n_diff"]));
  EXPECT_EQ(diffusion::ar_count(batch), int64_t(r.am["n_ar"]));

  // The dense [B, R, S + R] keep masks of the blocks, on the rows Automodel scores (its padded
  // rows keep only their own column; ours share their block's keys, which nothing reads).
  const auto blocks = diffusion::training_blocks(w, S, r.m->config().sliding_window);
  for (const auto& [kind, name] : {std::pair{model::AttnKind::kFull, "train.keep_full"},
                                   std::pair{model::AttnKind::kSliding, "train.keep_sliding"}}) {
    const std::vector<int64_t> keep = ints(r.ref.get(name));
    for (const auto& blk : blocks) {
      const Tensor& kv = blk.key_valid[static_cast<size_t>(kind)];
      const int64_t n = blk.end - blk.begin;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = blk.begin; j < blk.end && j < w.response[b]; ++j)
          for (int64_t k = 0; k < S + R; ++k) {
            int64_t mine = 0;
            if (k < S)
              mine = element_as_int(kv, b * (S + n) + k);
            else if (k - S >= blk.begin && k - S < blk.end)
              mine = element_as_int(kv, b * (S + n) + S + (k - S - blk.begin));
            ASSERT_EQ(mine, keep[static_cast<size_t>((b * R + j) * (S + R) + k)])
                << name << " b " << b << " j " << j << " k " << k;
          }
    }
  }
}

TEST_P(DiffusionTraining, LogitsLossAndGradientsEqualAutomodel) {
  const Replay r(GetParam());
  for (const std::string& n : r.m->params().order)
    r.m->params().at(n).set_requires_grad(n.find(".moe.gate.") == std::string::npos);
  const diffusion::DllmStep s = r.step();
  const double n_diff = static_cast<double>(s.window.scored()), n_ar = static_cast<double>(ar_count(s.batch));
  const diffusion::DllmForward f =
      diffusion::dllm_forward(*r.m, s, n_diff, n_ar, r.am["encoder_loss_weight"], true, true);
  EXPECT_LT(max_diff(f.encoder_logits, r.ref.get_f32("train.encoder_logits", f.encoder_logits.shape()),
                     s.batch.attention_mask),
            1e-4);
  EXPECT_LT(max_diff(f.sc_logits, r.ref.get_f32("train.sc_logits", f.sc_logits.shape()), s.window.valid), 1e-4);
  // Pass 2 reads pass 1's logits through the self-conditioning softmax, so it inherits their fp32
  // drift: tiny-dg-b reaches 1.01e-4 here with OpenBLAS's AVX-512 kernels and 1.59e-4 with its AVX2
  // ones (logits near the softcap of 20), and 6.4e-5 when fed Automodel's own pass-1 logits instead.
  EXPECT_LT(max_diff(f.logits, r.ref.get_f32("train.logits", f.logits.shape()), s.window.valid), 2.5e-4);
  EXPECT_NEAR(f.diffusion, double(r.am["loss_diff"]), 1e-5);
  EXPECT_NEAR(f.ar, double(r.am["loss_ar"]), 1e-5);
  EXPECT_NEAR(f.loss.value().item(), double(r.am["loss"]), 1e-5);

  ag::backward(f.loss);
  double norm2 = 0;
  int checked = 0;
  for (const std::string& n : r.m->params().order) {
    const ag::Var& p = r.m->params().at(n);
    if (!p.requires_grad()) {
      EXPECT_FALSE(p.grad().defined()) << n << ": the router is frozen";
      EXPECT_FALSE(r.ref.has("train.grad." + n)) << n;
      continue;
    }
    ASSERT_TRUE(r.ref.has("train.grad." + n)) << n;
    ASSERT_TRUE(p.grad().defined()) << n;
    const Tensor mine = p.grad().to(DType::F64), ref = r.ref.get("train.grad." + n).to(DType::F64);
    ASSERT_EQ(mine.shape(), ref.shape()) << n;
    double d2 = 0, g2 = 0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      const double g = ref.data<double>()[i], e = mine.data<double>()[i] - g;
      d2 += e * e;
      g2 += g * g;
    }
    norm2 += [&] {
      double s2 = 0;
      for (int64_t i = 0; i < mine.numel(); ++i) s2 += mine.data<double>()[i] * mine.data<double>()[i];
      return s2;
    }();
    EXPECT_LE(std::sqrt(d2), 1e-4 * std::sqrt(g2) + 1e-12) << n;
    ++checked;
  }
  int refs = 0;
  for (const std::string& n : r.ref.names()) refs += n.rfind("train.grad.", 0) == 0;
  EXPECT_EQ(checked, refs) << "every recorded gradient is checked";
  const double ref_norm = r.ref.get("train.grad_norm").to(DType::F64).item();
  EXPECT_NEAR(std::sqrt(norm2), ref_norm, 1e-5 * ref_norm);
}

// The whole objective differentiated numerically, in f64 on a fixture model's weights. Pass 1 is
// a constant of pass 2 (Automodel trains it that way), so a perturbation that moves pass 1 would
// differentiate through it: the coins are off for every parameter but the self-conditioning MLP's,
// which pass 1 does not read (theirs are checked with every coin on).
TEST(DiffusionTraining, FiniteDifferencesMatchBackwardInF64) {
  const Replay r("tiny-dg-a");
  const auto m = r.m->copy_to(Device::CPU, DType::F64);
  for (const std::string& n : m->params().order)
    m->params().at(n).set_requires_grad(n.find(".moe.gate.") == std::string::npos);
  diffusion::DllmStep s = r.step();
  const double n_diff = static_cast<double>(s.window.scored()), n_ar = static_cast<double>(ar_count(s.batch));
  std::mt19937 rng(20261204);
  for (const int64_t coin : {0, 1}) {
    for (int64_t b = 0; b < s.coins.numel(); ++b) s.coins.data<int64_t>()[b] = coin;
    auto loss = [&] { return diffusion::dllm_forward(*m, s, n_diff, n_ar, 0.7, true).loss.value().item(); };
    m->params().zero_grad();
    ag::backward(diffusion::dllm_forward(*m, s, n_diff, n_ar, 0.7, true).loss);
    std::vector<std::string> names;
    for (const std::string& n : m->params().order)
      if (m->params().at(n).requires_grad() && (n.find("self_conditioning") != std::string::npos) == (coin == 1))
        names.push_back(n);
    // A random entry of a few random tensors (the embedding always: it is read five ways).
    std::shuffle(names.begin() + 1, names.end(), rng);
    names.resize(std::min<size_t>(names.size(), coin == 1 ? 3 : 8));
    int checked = 0;
    for (const std::string& n : names) {
      ag::Var& p = m->params().at(n);
      {
        const int64_t i = std::uniform_int_distribution<int64_t>(0, p.value().numel() - 1)(rng);
        double& w = p.mutable_value().data<double>()[i];
        const double w0 = w, h = 1e-6;
        w = w0 + h;
        const double up = loss();
        w = w0 - h;
        const double down = loss();
        w = w0;
        const double fd = (up - down) / (2 * h), g = p.grad().data<double>()[i];
        EXPECT_NEAR(g, fd, 1e-6 * std::max(1.0, std::abs(fd))) << n << "[" << i << "] coins " << coin;
        ++checked;
      }
    }
    EXPECT_EQ(checked, coin == 1 ? 3 : 8);
  }
}

// The objective's own batches: Automodel's draws for its step counter and data-parallel place,
// denominators over the step, and a restored step counter drawing what the saved run would.
TEST(DiffusionTraining, ObjectiveStepsDrawLikeAutomodelAndResume) {
  const Replay r("tiny-dg-a");
  parallel::SingleCommunicator world;
  diffusion::DiffusionOptions o;
  o.block_size = r.block;
  o.collate = r.copt;
  o.seed = r.am["base_seed"];
  o.batch_size = 2;
  o.train = r.examples;
  diffusion::DiffusionObjective obj(o, world);
  obj.configure(*r.m);
  obj.next_batch();  // step 0
  nlohmann::json state;
  obj.save({}, state);
  EXPECT_EQ(state["diffusion_step"], 1);
  const auto step1 = obj.next_batch();  // the fixture's step 1
  ASSERT_EQ(step1->micro_batches(), 1);
  const train::MicroLoss l = obj.forward(*r.m, *step1, 0);
  EXPECT_NEAR(l.metrics.at("loss"), double(r.am["loss"]), 1e-5);
  EXPECT_NEAR(l.metrics.at("diffusion_loss"), double(r.am["loss_diff"]), 1e-5);
  EXPECT_NEAR(l.metrics.at("ar_loss"), double(r.am["loss_ar"]), 1e-5);
  EXPECT_NEAR(l.loss.value().item(), double(r.am["loss"]), 1e-5);
  ag::clear_tape();

  diffusion::DiffusionObjective resumed(o, world);
  resumed.configure(*r.m);
  resumed.load({}, state);
  const auto again = resumed.next_batch();
  EXPECT_EQ(resumed.forward(*r.m, *again, 0).metrics.at("loss"), l.metrics.at("loss"));
  ag::clear_tape();

  // Two micro-batches of one row: the same samples and draws as one of two rows (Automodel's
  // global order), so the step's loss is the same sum.
  o.batch_size = 1;
  o.grad_accumulation = 2;
  diffusion::DiffusionObjective split(o, world);
  split.configure(*r.m);
  split.load({}, state);
  const auto parts = split.next_batch();
  ASSERT_EQ(parts->micro_batches(), 2);
  double total = 0;
  for (int64_t i = 0; i < 2; ++i) total += split.forward(*r.m, *parts, i).metrics.at("ar_loss");
  ag::clear_tape();
  EXPECT_NEAR(total, double(r.am["loss_ar"]), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DiffusionTraining, ::testing::Values("tiny-dg-a", "tiny-dg-b"));

}  // namespace
}  // namespace g4

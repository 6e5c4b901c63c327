// Training's fused LM head + loss (ForwardInputs::return_logits = false, ag::linear_cross_entropy)
// equals the logits path: same loss and gradients, in f64 to rounding, with chunks that split the
// rows unevenly. So does RL's forward (ForwardInputs::return_token_logprobs): each token's
// log-prob from the fused head is minus that token's cross-entropy from the logits (divided by the
// temperature), and the gradients of Σ c·log p with random c are those of the same sum built from
// the logits.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "core/random.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/hf_fixtures.h"

namespace g4 {
namespace {

double max_rel(const Tensor& a, const Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, std::abs(a.data<double>()[i] - b.data<double>()[i]));
    norm = std::max(norm, std::abs(b.data<double>()[i]));
  }
  return diff / std::max(norm, 1e-300);
}

TEST(FusedLoss, ModelTrainingForwardMatchesTheLogitsPath) {
  for (const char* name : {"tiny-moe", "tiny-dense-ple"}) {
    const std::string dir = test::hf_fixture_dir(name);
    auto m = model::load_hf_model(dir, {}, DType::F64);
    const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
    model::ForwardInputs in = test::hf_reference_inputs(ref);
    model::ForwardOutputs a = m->forward(in);
    ag::backward(a.loss);
    std::map<std::string, Tensor> grads;
    for (const auto& n : m->params().order) grads[n] = m->params().at(n).grad().clone();
    m->params().zero_grad();
    in.return_logits = false;
    model::ForwardOutputs b = m->forward(in);
    EXPECT_FALSE(b.logits.defined());
    ag::backward(b.loss);
    EXPECT_NEAR(b.loss.value().item(), a.loss.value().item(), 1e-12) << name;
    EXPECT_EQ(b.counted_tokens, a.counted_tokens);
    for (const auto& n : m->params().order) EXPECT_LT(max_rel(m->params().at(n).grad(), grads[n]), 1e-10) << name << " " << n;
  }
}

TEST(FusedLoss, ChunksAndSoftcapMatchTheUnfusedOps) {
  const Tensor x = randn({2, 7, 12}, 1, DType::F64), w = randn({33, 12}, 2, DType::F64, 0.5);
  Tensor targets = randint({2, 7}, 3, 0, 33, DType::I64);
  targets.data<int64_t>()[4] = -100;
  targets.data<int64_t>()[9] = -100;
  for (int64_t chunk : {1, 5, 14, 100}) {
    ag::Var xv(x, true), wv(w, true);
    ag::Var ref = ag::cross_entropy_mean(ag::softcap(ag::linear(xv, wv), 3.0), targets);
    ag::backward(ref);
    const Tensor gx = xv.grad().clone(), gw = wv.grad().clone();
    xv.zero_grad();
    wv.zero_grad();
    ag::Var fused = ag::linear_cross_entropy(xv, wv, targets, 12, 3.0, chunk);
    ag::backward(fused, 2.5);  // an incoming gradient other than 1 scales both gradients
    EXPECT_NEAR(fused.value().item(), ref.value().item(), 1e-13) << "chunk " << chunk;
    for (int64_t i = 0; i < gx.numel(); ++i)
      EXPECT_NEAR(xv.grad().data<double>()[i], 2.5 * gx.data<double>()[i], 1e-12) << "chunk " << chunk;
    for (int64_t i = 0; i < gw.numel(); ++i)
      EXPECT_NEAR(wv.grad().data<double>()[i], 2.5 * gw.data<double>()[i], 1e-12) << "chunk " << chunk;
  }
}

// Σ_r c_r · log p_r from the logits [B, S, V] (already softcapped by the model): each row's log p is
// minus the cross-entropy of that row alone (0 for an ignored row). Also returns the log-probs.
ag::Var weighted_logprobs_from_logits(const ag::Var& logits, const Tensor& targets, const Tensor& c, double temp,
                                      std::vector<double>& logprobs) {
  const int64_t V = logits.shape().back(), N = targets.numel();
  const ag::Var rows = ag::reshape(ag::scale(logits, 1.0 / temp), {N, V});
  const Tensor t = targets.reshape({N});
  ag::Var sum;
  logprobs.assign(static_cast<size_t>(N), 0.0);
  for (int64_t r = 0; r < N; ++r) {
    const ag::Var ce = ag::cross_entropy_mean(ag::narrow(rows, 0, r, 1), t.slice0(r, 1));
    logprobs[static_cast<size_t>(r)] = -ce.value().item();
    const ag::Var term = ag::scale(ce, -c.data<double>()[r]);
    sum = sum.defined() ? ag::add(sum, term) : term;
  }
  return sum;
}

TEST(FusedLoss, TokenLogprobsMatchTheLogitsPathWithGradients) {
  const double temp = 0.7;
  for (const char* name : {"tiny-moe", "tiny-dense-ple"}) {
    const std::string dir = test::hf_fixture_dir(name);
    auto m = model::load_hf_model(dir, {}, DType::F64);
    ASSERT_TRUE(m->config().final_logit_softcapping.has_value()) << name << ": the softcap is part of the test";
    const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
    model::ForwardInputs in = test::hf_reference_inputs(ref);
    const int64_t B = in.input_ids.size(0), S = in.input_ids.size(1);
    const Tensor targets = model::shift_labels(in.labels);
    const Tensor c = randn({B, S}, 61, DType::F64);

    model::ForwardOutputs a = m->forward(in);
    std::vector<double> want;
    ag::backward(weighted_logprobs_from_logits(a.logits, targets, c, temp, want));
    std::map<std::string, Tensor> grads;
    for (const auto& n : m->params().order) grads[n] = m->params().at(n).grad().clone();
    m->params().zero_grad();

    in.return_logits = false;
    in.return_token_logprobs = true;
    in.logprob_temperature = temp;
    model::ForwardOutputs b = m->forward(in);
    EXPECT_FALSE(b.logits.defined());
    EXPECT_FALSE(b.loss.defined()) << "no loss is computed with the log-probs";
    EXPECT_EQ(b.counted_tokens, a.counted_tokens);
    ASSERT_EQ(b.token_logprobs.shape(), Shape({B, S}));
    EXPECT_EQ(b.token_logprobs.value().dtype(), DType::F64);
    for (int64_t r = 0; r < B * S; ++r) {
      EXPECT_NEAR(b.token_logprobs.value().data<double>()[r], want[static_cast<size_t>(r)], 1e-12) << name << " " << r;
      if (targets.data<int64_t>()[r] == -100) {
        EXPECT_EQ(b.token_logprobs.value().data<double>()[r], 0.0);
      }
    }
    ag::backward(b.token_logprobs, c);
    for (const auto& n : m->params().order)
      EXPECT_LT(max_rel(m->params().at(n).grad(), grads[n]), 1e-10) << name << " " << n;
    m->params().zero_grad();

    // Targets given instead of labels (context parallelism's form): the same rows.
    model::ForwardInputs shifted = in;
    shifted.labels = Tensor();
    shifted.targets = targets;
    {
      ag::NoGrad no_grad;
      const model::ForwardOutputs s = m->forward(shifted);
      for (int64_t r = 0; r < B * S; ++r)
        EXPECT_EQ(s.token_logprobs.value().data<double>()[r], b.token_logprobs.value().data<double>()[r]) << name;
    }
  }
}

TEST(FusedLoss, TokenLogprobsNeedTargetsAndAddNoRouterAuxLoss) {
  auto m = model::load_hf_model(test::hf_fixture_dir("tiny-moe"), {}, DType::F64);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(test::hf_fixture_dir("tiny-moe") + "/reference.safetensors");
  model::ForwardInputs in = test::hf_reference_inputs(ref);
  in.return_token_logprobs = true;
  in.return_logits = false;
  m->set_router_aux_loss(0.5);
  const model::ForwardOutputs out = m->forward(in);
  EXPECT_FALSE(out.loss.defined());
  EXPECT_GT(out.router_aux, 0.0) << "still reported";
  EXPECT_EQ(out.cross_entropy, 0.0);
  ag::clear_tape();
  in.labels = Tensor();
  EXPECT_NE(test::error_of([&] { m->forward(in); }).find("return_token_logprobs"), std::string::npos);
}

}  // namespace
}  // namespace g4

// Training's fused LM head + loss (ForwardInputs::return_logits = false, ag::linear_cross_entropy)
// equals the logits path: same loss and gradients, in f64 to rounding, with chunks that split the
// rows unevenly.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "core/random.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
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

}  // namespace
}  // namespace g4

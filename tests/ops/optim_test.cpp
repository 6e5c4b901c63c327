#include "ops/optim.h"

#include <cmath>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_error;

// torch.optim.AdamW written out in double, one element at a time.
struct RefAdamW {
  std::vector<double> p, m, v;
  void step(const std::vector<double>& g, const ops::AdamWHyper& h, bool decay) {
    const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(h.step));
    const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(h.step));
    for (size_t j = 0; j < p.size(); ++j) {
      const double gj = g[j] * h.grad_scale;
      if (decay) p[j] *= 1 - h.lr * h.weight_decay;
      m[j] = h.beta1 * m[j] + (1 - h.beta1) * gj;
      v[j] = h.beta2 * v[j] + (1 - h.beta2) * gj * gj;
      p[j] -= h.lr / bc1 * m[j] / (std::sqrt(v[j]) / std::sqrt(bc2) + h.eps);
    }
  }
};

std::vector<double> values(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = element_as_double(t, static_cast<int64_t>(i));
  return out;
}

TEST(AdamW, MatchesTorchFormulaOverSteps) {
  for (bool decay : {true, false}) {
    Tensor p = randn({5, 7}, 1, DType::F64);
    Tensor m = Tensor::zeros({5, 7}, DType::F64), v = Tensor::zeros({5, 7}, DType::F64);
    RefAdamW ref{values(p), values(m), values(v)};
    ops::AdamWHyper h;
    h.lr = 1e-2;
    h.weight_decay = 0.1;
    h.grad_scale = 0.5;
    for (int64_t s = 1; s <= 4; ++s) {
      h.step = s;
      const Tensor g = randn({5, 7}, 10 + static_cast<uint64_t>(s), DType::F64);
      ops::adamw_step(p, g, m, v, h, decay);
      ref.step(values(g), h, decay);
    }
    test::expect_close(p, Tensor::from_vector<double>(ref.p, {5, 7}), 1e-12, "master");
    test::expect_close(m, Tensor::from_vector<double>(ref.m, {5, 7}), 1e-12, "exp_avg");
    test::expect_close(v, Tensor::from_vector<double>(ref.v, {5, 7}), 1e-12, "exp_avg_sq");
  }
}

// grad_scale, a device factor, a bf16 gradient and an undefined gradient are the same update as
// the equivalent f32 gradient; the bf16 copy is the master rounded.
TEST(AdamW, GradientFormsAndBf16Copy) {
  const Tensor p0 = randn({33}, 2);
  const Tensor g = randn({33}, 3).to(DType::BF16).to(DType::F32);
  ops::AdamWHyper h;
  h.lr = 3e-3;
  h.weight_decay = 0.01;
  h.step = 3;
  auto run = [&](const Tensor& grad, double scale, const Tensor& factor, Tensor* out) {
    Tensor p = p0.clone(), m = Tensor::full({33}, 0.01), v = Tensor::full({33}, 0.02);
    ops::AdamWHyper hh = h;
    hh.grad_scale = scale;
    ops::adamw_step(p, grad, m, v, hh, true, {}, factor, out);
    return p;
  };
  Tensor halved = g.clone();
  for (int64_t i = 0; i < 33; ++i) halved.data<float>()[i] *= 0.5f;
  const Tensor want = run(halved, 1, {}, nullptr);
  test::expect_equal(run(g, 0.5, {}, nullptr), want, "grad_scale");
  test::expect_equal(run(g, 1, Tensor::scalar(0.5), nullptr), want, "grad_scale_tensor");
  test::expect_equal(run(g.to(DType::BF16), 0.5, {}, nullptr), want, "bf16 gradient");
  Tensor copy = Tensor::empty({33}, DType::BF16);
  const Tensor p = run(g, 0.5, {}, &copy);
  test::expect_equal(copy, p.to(DType::BF16), "bf16 copy");
  test::expect_equal(run(Tensor(), 1, {}, nullptr), run(Tensor::zeros({33}, DType::F32), 1, {}, nullptr),
                     "undefined gradient = zero");
}

// A per-element mask: its 1s update as decay = true, its 0s as decay = false.
TEST(AdamW, DecayMaskPerElement) {
  const Tensor p0 = randn({20}, 5), g = randn({20}, 6);
  ops::AdamWHyper h;
  h.lr = 0.1;
  h.weight_decay = 0.5;
  auto run = [&](bool decay, const Tensor& mask) {
    Tensor p = p0.clone(), m = Tensor::zeros({20}, DType::F32), v = Tensor::zeros({20}, DType::F32);
    ops::adamw_step(p, g, m, v, h, decay, mask);
    return p;
  };
  Tensor mask = Tensor::zeros({20}, DType::U8);
  for (int64_t j = 0; j < 20; j += 3) mask.data<uint8_t>()[j] = 1;
  const Tensor with = run(true, {}), without = run(false, {}), mixed = run(true, mask);
  for (int64_t j = 0; j < 20; ++j)
    EXPECT_EQ(mixed.data<float>()[j], (j % 3 == 0 ? with : without).data<float>()[j]) << j;
}

TEST(AdamW, Errors) {
  Tensor p = randn({4}, 1), m = Tensor::zeros({4}, DType::F32), v = Tensor::zeros({3}, DType::F32);
  ops::AdamWHyper h;
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v, h); }, {"adamw_step", "exp_avg_sq", "f32[3]"});
  Tensor v4 = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::adamw_step(p, randn({5}, 2), m, v4, h); }, {"grad", "f32[5]"});
  h.step = 0;
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h); }, {"step", "0"});
  h.step = 1;
  Tensor out = Tensor::empty({4}, DType::F32);
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h, true, {}, {}, &out); }, {"param_bf16_out", "f32[4]"});
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h, true, Tensor::zeros({4}, DType::F32)); },
               {"decay_mask", "f32[4]"});
}

TEST(SquaredNorm, SumsSquaresInDouble) {
  const Tensor g = randn({1000, 3}, 4, DType::F64);
  double want = 0;
  for (int64_t i = 0; i < g.numel(); ++i) want += g.data<double>()[i] * g.data<double>()[i];
  const Tensor sq = ops::squared_norm(g);
  EXPECT_EQ(sq.dim(), 0);
  EXPECT_EQ(sq.dtype(), DType::F64);
  EXPECT_NEAR(sq.item(), want, 1e-9 * want);
  const Tensor sq32 = ops::squared_norm(g.to(DType::F32));
  EXPECT_EQ(sq32.dtype(), DType::F32);
  EXPECT_NEAR(sq32.item(), want, 1e-6 * want);
  EXPECT_NEAR(ops::squared_norm(g.to(DType::F32).to(DType::BF16)).item(), want, 1e-2 * want);
  EXPECT_EQ(ops::squared_norm(Tensor::zeros({0}, DType::F32)).item(), 0.0);
}

}  // namespace
}  // namespace g4

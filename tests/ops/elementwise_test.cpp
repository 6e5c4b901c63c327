#include "ops/elementwise.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;
using test::expect_gradients;

constexpr DType F64 = DType::F64;

// Applies a double function elementwise (the naive reference for pointwise ops).
template <class F>
Tensor naive_map(const Tensor& x, F f) {
  Tensor y = Tensor::empty(x.shape(), F64);
  for (int64_t i = 0; i < x.numel(); ++i) y.data<double>()[i] = f(element_as_double(x, i));
  return y;
}

double naive_gelu(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

TEST(Elementwise, Arithmetic) {
  const Tensor a = randn({3, 5}, 1, F64), b = randn({3, 5}, 2, F64);
  Tensor want_add = Tensor::empty({3, 5}, F64), want_sub = want_add.clone(), want_mul = want_add.clone();
  for (int64_t i = 0; i < 15; ++i) {
    const double x = a.data<double>()[i], y = b.data<double>()[i];
    want_add.data<double>()[i] = x + y;
    want_sub.data<double>()[i] = x - y;
    want_mul.data<double>()[i] = x * y;
  }
  expect_close(ops::add(a, b), want_add, 0);
  expect_close(ops::sub(a, b), want_sub, 0);
  expect_close(ops::mul(a, b), want_mul, 0);
  expect_close(ops::mul(a.to(DType::F32), b.to(DType::F32)), want_mul, 1e-6);
  expect_close(ops::scale(a, 2.5), naive_map(a, [](double x) { return 2.5 * x; }), 0);

  Tensor acc = a.clone();
  ops::add_(acc, b, -0.5);
  Tensor want = a.clone();
  for (int64_t i = 0; i < 15; ++i) want.data<double>()[i] -= 0.5 * b.data<double>()[i];
  expect_close(acc, want, 0);
  ops::scale_(acc, 3.0);
  for (int64_t i = 0; i < 15; ++i) want.data<double>()[i] *= 3.0;
  expect_close(acc, want, 0);

  const Tensor s = ops::sum_all(a);
  EXPECT_EQ(s.dim(), 0);
  double total = 0;
  for (int64_t i = 0; i < 15; ++i) total += a.data<double>()[i];
  EXPECT_NEAR(s.item(), total, 1e-13);
}

TEST(Elementwise, MulRowvecAndSumRows) {
  const Tensor x = randn({2, 3, 4}, 3, F64), v = randn({4}, 4, F64);
  Tensor want = Tensor::empty(x.shape(), F64), sums = Tensor::zeros({4}, F64);
  for (int64_t i = 0; i < x.numel(); ++i) {
    want.data<double>()[i] = x.data<double>()[i] * v.data<double>()[i % 4];
    sums.data<double>()[i % 4] += x.data<double>()[i];
  }
  expect_close(ops::mul_rowvec(x, v), want, 0);
  expect_close(ops::sum_rows(x), sums, 1e-15);
  expect_close(ops::mul_rowvec(x.to(DType::F32), v.to(DType::F32)), want, 1e-6);

  const auto f = [](const std::vector<Tensor>& in) { return ops::mul_rowvec(in[0], in[1]); };
  expect_gradients(f, {x, v}, 5, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::mul_rowvec(dy, v), ops::sum_rows(ops::mul(dy, x))};
  });
}

TEST(Elementwise, GeluTanh) {
  const Tensor x = randn({4, 8}, 6, F64, 2.0);
  expect_close(ops::gelu_tanh(x), naive_map(x, naive_gelu), 1e-15, "f64");
  expect_close(ops::gelu_tanh(x.to(DType::F32)), ops::gelu_tanh(x), 1e-6, "f32 vs f64");
  const auto f = [](const std::vector<Tensor>& in) { return ops::gelu_tanh(in[0]); };
  expect_gradients(f, {x}, 7, [&](const Tensor& dy) { return std::vector<Tensor>{ops::gelu_tanh_backward(dy, x)}; });
}

TEST(Elementwise, GeluGateAndFusedVariant) {
  const Tensor g = randn({3, 5}, 8, F64, 1.5), u = randn({3, 5}, 9, F64);
  Tensor want = Tensor::empty({3, 5}, F64);
  for (int64_t i = 0; i < 15; ++i) want.data<double>()[i] = naive_gelu(g.data<double>()[i]) * u.data<double>()[i];
  expect_close(ops::gelu_gate(g, u), want, 1e-15);
  expect_close(ops::gelu_gate(g.to(DType::F32), u.to(DType::F32)), want, 1e-6);

  const auto f = [](const std::vector<Tensor>& in) { return ops::gelu_gate(in[0], in[1]); };
  expect_gradients(f, {g, u}, 10, [&](const Tensor& dy) {
    Tensor dg, du;
    ops::gelu_gate_backward(dy, g, u, dg, du);
    return std::vector<Tensor>{dg, du};
  });

  // Fused [N, 2I] layout: gate columns first, then up.
  const Tensor gu = ops::concat({g, u}, 1);
  expect_close(ops::gelu_gate_fused(gu), want, 1e-15);
  const auto ff = [](const std::vector<Tensor>& in) { return ops::gelu_gate_fused(in[0]); };
  expect_gradients(ff, {gu}, 11,
                   [&](const Tensor& dy) { return std::vector<Tensor>{ops::gelu_gate_fused_backward(dy, gu)}; });
}

TEST(Elementwise, Softcap) {
  const Tensor x = randn({3, 7}, 12, F64, 20.0);
  expect_close(ops::softcap(x, 30.0), naive_map(x, [](double v) { return 30.0 * std::tanh(v / 30.0); }), 1e-15);
  expect_close(ops::softcap(x.to(DType::F32), 30.0), ops::softcap(x, 30.0), 1e-6);
  const Tensor widened = ops::softcap_to_f32(x, 30.0);  // f32 out, from the input narrowed to f32
  EXPECT_EQ(widened.dtype(), DType::F32);
  expect_close(widened, ops::softcap(x.to(DType::F32), 30.0), 0.0);
  const auto f = [](const std::vector<Tensor>& in) { return ops::softcap(in[0], 30.0); };
  expect_gradients(f, {x}, 13, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::softcap_backward(dy, ops::softcap(x, 30.0), 30.0)};
  });
}

TEST(Elementwise, ActivationsAndClamp) {
  // Scale 8 reaches softplus's pass-through above 20 (and the rare exact zero of relu is avoided).
  const Tensor x = randn({4, 9}, 31, F64, 8.0);
  const auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  struct Case { ops::Activation act; std::function<double(double)> ref; };
  const Case cases[] = {{ops::Activation::kRelu, [](double v) { return v > 0 ? v : 0.0; }},
                        {ops::Activation::kSilu, [&](double v) { return v * sig(v); }},
                        {ops::Activation::kSigmoid, sig},
                        {ops::Activation::kSoftplus, [](double v) { return v > 20 ? v : std::log(1 + std::exp(v)); }}};
  for (const Case& c : cases) {
    expect_close(ops::activation(x, c.act), naive_map(x, c.ref), 1e-15);
    expect_close(ops::activation(x.to(DType::F32), c.act), ops::activation(x, c.act), 1e-6);
    const auto f = [&](const std::vector<Tensor>& in) { return ops::activation(in[0], c.act); };
    expect_gradients(f, {x}, 32, [&](const Tensor& dy) {
      return std::vector<Tensor>{ops::activation_backward(dy, x, c.act)};
    });
  }
  expect_close(ops::clamp(x, -3.0, 2.5), naive_map(x, [](double v) { return std::min(std::max(v, -3.0), 2.5); }), 0);
  expect_close(ops::clamp(x, -INFINITY, INFINITY), x, 0);
  const auto f = [](const std::vector<Tensor>& in) { return ops::clamp(in[0], -3.0, 2.5); };
  expect_gradients(f, {x}, 33, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::clamp_backward(dy, x, -3.0, 2.5)};
  });
  expect_error([&] { ops::clamp(x, 1.0, -1.0); }, {"clamp", "lower bound 1 above upper bound -1"});
  expect_error([&] { ops::activation_backward(x, randn({4, 8}, 34, F64), ops::Activation::kSilu); },
               {"activation_backward"});
}

TEST(Elementwise, Softmax) {
  const Tensor x = randn({4, 6}, 14, F64, 3.0);
  Tensor want = Tensor::empty(x.shape(), F64);
  for (int64_t r = 0; r < 4; ++r) {
    double z = 0;
    for (int64_t j = 0; j < 6; ++j) z += std::exp(x.data<double>()[r * 6 + j]);
    for (int64_t j = 0; j < 6; ++j) want.data<double>()[r * 6 + j] = std::exp(x.data<double>()[r * 6 + j]) / z;
  }
  expect_close(ops::softmax_lastdim(x), want, 1e-15);
  expect_close(ops::softmax_lastdim(x.to(DType::F32)), want, 1e-6);
  // Large logits: the max subtraction keeps them finite.
  const Tensor big = ops::softmax_lastdim(ops::scale(x, 1000.0).to(DType::F32));
  for (int64_t i = 0; i < big.numel(); ++i) EXPECT_TRUE(std::isfinite(element_as_double(big, i)));

  const auto f = [](const std::vector<Tensor>& in) { return ops::softmax_lastdim(in[0]); };
  expect_gradients(f, {x}, 15, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::softmax_lastdim_backward(dy, ops::softmax_lastdim(x))};
  });
}

TEST(Elementwise, ErrorsNameOpDtypesAndShapes) {
  const Tensor a = randn({2, 3}, 1), b = randn({3, 2}, 2);
  expect_error([&] { ops::add(a, b); }, {"add", "f32[2, 3]", "f32[3, 2]"});
  expect_error([&] { ops::mul(a, a.to(DType::F64)); }, {"mul", "f32[2, 3]", "f64[2, 3]"});
  expect_error([&] { ops::gelu_tanh(a.to(DType::BF16)); }, {"gelu_tanh", "bf16[2, 3]"});
  expect_error([&] { ops::mul_rowvec(a, randn({2}, 3)); }, {"mul_rowvec", "f32[2]", "f32[2, 3]"});
  EXPECT_THROW(ops::gelu_gate_fused(randn({2, 3}, 4)), Error);
}

}  // namespace
}  // namespace g4

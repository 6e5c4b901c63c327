#include "ops/norm.h"

#include <cmath>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;
using test::expect_gradients;

constexpr double kEps = 1e-6;

// y = x / sqrt(mean(x²) + eps) · w in double; w may be undefined.
Tensor naive_rmsnorm(const Tensor& x, const Tensor& w) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += std::pow(element_as_double(x, r * d + j), 2) / static_cast<double>(d);
    for (int64_t j = 0; j < d; ++j) {
      const double wj = w.defined() ? element_as_double(w, j) : 1.0;
      y.data<double>()[r * d + j] = element_as_double(x, r * d + j) / std::sqrt(ms + kEps) * wj;
    }
  }
  return y;
}

TEST(RmsNorm, ForwardMatchesNaiveWithAndWithoutWeight) {
  const Tensor x = randn({2, 3, 8}, 1, DType::F64, 2.0), w = randn({8}, 2, DType::F64);
  for (const Tensor& weight : {w, Tensor()}) {
    const Tensor want = naive_rmsnorm(x, weight);
    expect_close(ops::rmsnorm(x, weight, kEps), want, 1e-15, "f64");
    const Tensor w32 = weight.defined() ? weight.to(DType::F32) : Tensor();
    expect_close(ops::rmsnorm(x.to(DType::F32), w32, kEps), want, 1e-6, "f32");
  }
}

TEST(RmsNorm, Float32RoundsLikeTorch) {
  // torch: x * torch.pow(mean + eps, -0.5) * w, every step rounded to f32.
  const Tensor x = randn({4, 16}, 3, DType::F32, 3.0), w = randn({16}, 4, DType::F32);
  const Tensor y = ops::rmsnorm(x, w, kEps);
  for (int64_t r = 0; r < 4; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < 16; ++j) ss += static_cast<double>(x.data<float>()[r * 16 + j]) * x.data<float>()[r * 16 + j];
    const float inv = std::pow(static_cast<float>(ss / 16) + static_cast<float>(kEps), -0.5f);
    for (int64_t j = 0; j < 16; ++j)
      EXPECT_EQ(y.data<float>()[r * 16 + j], x.data<float>()[r * 16 + j] * inv * w.data<float>()[j]);
  }
}

TEST(RmsNorm, Gradients) {
  const Tensor x = randn({3, 8}, 5, DType::F64), w = randn({8}, 6, DType::F64);
  const auto f = [](const std::vector<Tensor>& in) { return ops::rmsnorm(in[0], in[1], kEps); };
  expect_gradients(f, {x, w}, 7, [&](const Tensor& dy) {
    Tensor dx, dw;
    ops::rmsnorm_backward(dy, x, w, kEps, dx, dw);
    return std::vector<Tensor>{dx, dw};
  });
  const auto f_no_w = [](const std::vector<Tensor>& in) { return ops::rmsnorm(in[0], Tensor(), kEps); };
  expect_gradients(f_no_w, {x}, 8, [&](const Tensor& dy) {
    Tensor dx, dw;
    ops::rmsnorm_backward(dy, x, Tensor(), kEps, dx, dw);
    EXPECT_FALSE(dw.defined());
    return std::vector<Tensor>{dx};
  });
}

TEST(RmsNorm, BackwardF32AgreesWithF64) {
  const Tensor x = randn({3, 8}, 9, DType::F64), w = randn({8}, 10, DType::F64), dy = randn({3, 8}, 11, DType::F64);
  Tensor dx, dw, dx32, dw32;
  ops::rmsnorm_backward(dy, x, w, kEps, dx, dw);
  ops::rmsnorm_backward(dy.to(DType::F32), x.to(DType::F32), w.to(DType::F32), kEps, dx32, dw32);
  expect_close(dx32, dx, 1e-5);
  expect_close(dw32, dw, 1e-5);
}

TEST(RmsNorm, Errors) {
  const Tensor x = randn({2, 8}, 1);
  expect_error([&] { ops::rmsnorm(x, randn({4}, 2), kEps); }, {"rmsnorm", "f32[4]", "f32[2, 8]"});
  expect_error([&] { ops::rmsnorm(x, randn({8}, 2, DType::F64), kEps); }, {"rmsnorm", "f32[2, 8]", "f64[8]"});
  expect_error([&] { ops::rmsnorm(x.to(DType::BF16), Tensor(), kEps); }, {"rmsnorm", "bf16[2, 8]"});
}

}  // namespace
}  // namespace g4

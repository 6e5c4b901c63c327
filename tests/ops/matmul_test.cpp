#include "ops/matmul.h"

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;
using test::expect_gradients;

// Naive op(A)·op(B) on 2-D matrices, in double.
Tensor naive_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
  const int64_t n = tb ? b.size(0) : b.size(1);
  Tensor c = Tensor::zeros({m, n}, DType::F64);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = element_as_double(a, ta ? p * a.size(1) + i : i * a.size(1) + p);
        const double bv = element_as_double(b, tb ? j * b.size(1) + p : p * b.size(1) + j);
        s += av * bv;
      }
      c.data<double>()[i * n + j] = s;
    }
  return c;
}

TEST(Matmul, AllTransposeCombinationsMatchNaive) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const Tensor a = randn(ta ? Shape{4, 3} : Shape{3, 4}, 1, DType::F64);
      const Tensor b = randn(tb ? Shape{5, 4} : Shape{4, 5}, 2, DType::F64);
      const Tensor want = naive_matmul(a, b, ta, tb);
      expect_close(ops::matmul(a, b, ta, tb), want, 1e-14, "f64");
      expect_close(ops::matmul(a.to(DType::F32), b.to(DType::F32), ta, tb), want, 1e-6, "f32");
    }
  }
}

TEST(Matmul, LeadingDimsAreFlattenedIntoRows) {
  const Tensor a = randn({2, 3, 4}, 3, DType::F64), b = randn({4, 5}, 4, DType::F64);
  const Tensor c = ops::matmul(a, b);
  EXPECT_EQ(c.shape(), Shape({2, 3, 5}));
  expect_close(c.reshape({6, 5}), naive_matmul(a.reshape({6, 4}), b, false, false), 1e-14);
  // Transposed A: the leading dims are the contracted K.
  const Tensor ct = ops::matmul(a, randn({6, 5}, 5, DType::F64), true, false);
  EXPECT_EQ(ct.shape(), Shape({4, 5}));
}

TEST(Matmul, MatmulAccAddsScaledProduct) {
  const Tensor a = randn({3, 4}, 6, DType::F64), b = randn({5, 4}, 7, DType::F64);
  Tensor c = randn({3, 5}, 8, DType::F64);
  const Tensor c0 = c.clone();
  ops::matmul_acc(a, b, false, true, c, 0.5);
  const Tensor prod = naive_matmul(a, b, false, true);
  Tensor want = c0.clone();
  for (int64_t i = 0; i < want.numel(); ++i) want.data<double>()[i] += 0.5 * prod.data<double>()[i];
  expect_close(c, want, 1e-14);
}

TEST(Linear, ForwardAndGradients) {
  const Tensor x = randn({2, 3, 4}, 10, DType::F64), w = randn({5, 4}, 11, DType::F64);
  const Tensor want = naive_matmul(x.reshape({6, 4}), w, false, true).reshape({2, 3, 5});
  expect_close(ops::linear(x, w), want, 1e-14, "f64");
  expect_close(ops::linear(x.to(DType::F32), w.to(DType::F32)), want, 1e-6, "f32");

  const auto f = [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); };
  expect_gradients(f, {x, w}, 12, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::linear_backward_input(dy, w), ops::linear_backward_weight(dy, x)};
  });
}

TEST(Matmul, GradientsThroughMatmul) {
  const Tensor a = randn({3, 4}, 13, DType::F64), b = randn({4, 2}, 14, DType::F64);
  const auto f = [](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); };
  // dA = dC · Bᵀ, dB = Aᵀ · dC, both through the transpose flags.
  expect_gradients(f, {a, b}, 15, [&](const Tensor& dc) {
    return std::vector<Tensor>{ops::matmul(dc, b, false, true), ops::matmul(a, dc, true, false)};
  });
}

TEST(Matmul, ErrorsNameTheShapes) {
  const Tensor a = randn({3, 4}, 1), b = randn({5, 6}, 2);
  expect_error([&] { ops::matmul(a, b); }, {"matmul", "f32[3, 4]", "f32[5, 6]"});
  expect_error([&] { ops::linear(a, b); }, {"linear", "f32[3, 4]", "f32[5, 6]"});
  expect_error([&] { ops::matmul(a, randn({4, 2}, 3, DType::F64)); }, {"dtypes differ", "f32[3, 4]", "f64[4, 2]"});
  const Tensor ints = Tensor::zeros({3, 4}, DType::I32);
  expect_error([&] { ops::matmul(ints, ints.reshape({4, 3})); }, {"matmul", "i32[3, 4]"});
  Tensor c = Tensor::zeros({2, 2}, DType::F32);
  EXPECT_THROW(ops::matmul_acc(a, randn({4, 5}, 4), false, false, c), Error);
}

}  // namespace
}  // namespace g4

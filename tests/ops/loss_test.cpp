#include "ops/loss.h"

#include <cmath>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_error;
using test::expect_gradients;

TEST(CrossEntropy, MatchesNaiveAndIgnoresTargets) {
  const Tensor logits = randn({5, 7}, 1, DType::F64, 3.0);
  const Tensor targets = Tensor::from_vector<int64_t>({3, -100, 0, 6, -100}, {5});
  double want = 0;
  for (int64_t r : {0, 2, 3}) {
    double z = 0;
    for (int64_t j = 0; j < 7; ++j) z += std::exp(logits.data<double>()[r * 7 + j]);
    want += std::log(z) - logits.data<double>()[r * 7 + targets.data<int64_t>()[r]];
  }
  const ops::CrossEntropyResult res = ops::cross_entropy(logits, targets);
  EXPECT_EQ(res.count, 3);
  EXPECT_NEAR(res.loss_sum, want, 1e-12);
  const ops::CrossEntropyResult res32 = ops::cross_entropy(logits.to(DType::F32), targets.to(DType::I32));
  EXPECT_NEAR(res32.loss_sum, want, 1e-5 * std::abs(want));
  // A custom ignore_index; huge logits stay finite.
  const ops::CrossEntropyResult big = ops::cross_entropy(
      test::to_f32({logits})[0], Tensor::from_vector<int64_t>({3, 1, 0, 6, 2}, {5}), 1);
  EXPECT_EQ(big.count, 4);
  const Tensor huge = randn({2, 5}, 2, DType::F32, 1e4);
  EXPECT_TRUE(std::isfinite(ops::cross_entropy(huge, Tensor::from_vector<int64_t>({0, 4}, {2})).loss_sum));
}

TEST(CrossEntropy, Gradient) {
  const Tensor logits = randn({4, 6}, 3, DType::F64, 2.0);
  const Tensor targets = Tensor::from_vector<int64_t>({5, 0, -100, 2}, {4});
  const double scale = 0.25;
  const auto f = [&](const std::vector<Tensor>& in) {
    return Tensor::scalar(scale * ops::cross_entropy(in[0], targets).loss_sum, DType::F64);
  };
  const Tensor one = Tensor::scalar(1.0, DType::F64);
  const Tensor grad = ops::cross_entropy_backward(logits, targets, scale);
  test::expect_gradients(f, {logits}, one, {grad});
  for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(grad.data<double>()[2 * 6 + j], 0.0);  // ignored row
  test::expect_close(ops::cross_entropy_backward(logits.to(DType::F32), targets, scale), grad, 1e-6);
}

TEST(CrossEntropy, Errors) {
  const Tensor logits = randn({3, 5}, 1);
  expect_error([&] { ops::cross_entropy(logits, Tensor::from_vector<int64_t>({1, 5, 0}, {3})); },
               {"target 5", "row 1", "[0, 5)"});
  expect_error([&] { ops::cross_entropy(logits, Tensor::zeros({4}, DType::I64)); }, {"i64[4]", "f32[3, 5]"});
  expect_error([&] { ops::cross_entropy(logits.to(DType::BF16), Tensor::zeros({3}, DType::I64)); }, {"bf16[3, 5]"});
  expect_error([&] { ops::cross_entropy(logits, Tensor::zeros({3}, DType::F32)); }, {"targets", "f32[3]"});
}

// The per-row losses sum to cross_entropy's loss_sum; ignored rows are 0 in both outputs.
TEST(CrossEntropyRows, MatchesCrossEntropyWithoutSoftcap) {
  const Tensor logits = randn({6, 9}, 7, DType::F64, 3.0);
  const Tensor targets = Tensor::from_vector<int64_t>({3, -100, 0, 8, 5, -100}, {6});
  const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets);
  ASSERT_EQ(rows.loss.shape(), Shape({6}));
  EXPECT_EQ(rows.loss.dtype(), DType::F64);
  double sum = 0;
  for (int64_t r = 0; r < 6; ++r) sum += rows.loss.data<double>()[r];
  EXPECT_NEAR(sum, ops::cross_entropy(logits, targets).loss_sum, 1e-12);
  for (int64_t r : {1, 5}) {
    EXPECT_EQ(rows.loss.data<double>()[r], 0.0);
    EXPECT_EQ(rows.lse.data<double>()[r], 0.0);
  }
  for (int64_t r : {0, 2, 3, 4}) {
    double z = 0;
    for (int64_t j = 0; j < 9; ++j) z += std::exp(logits.data<double>()[r * 9 + j]);
    EXPECT_NEAR(rows.lse.data<double>()[r], std::log(z), 1e-12);
  }
  const ops::CrossEntropyRows rows32 = ops::cross_entropy_rows(logits.to(DType::F32), targets.to(DType::I32));
  EXPECT_EQ(rows32.loss.dtype(), DType::F32);
  test::expect_close(rows32.loss, rows.loss, 1e-6);
}

TEST(CrossEntropyRows, SoftcapIsAppliedInside) {
  const double cap = 30;
  const Tensor logits = randn({4, 11}, 8, DType::F64, 40.0);  // well into tanh's bend
  const Tensor targets = Tensor::from_vector<int64_t>({10, 2, -100, 0}, {4});
  const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets, cap);
  Tensor capped = logits.clone();
  for (int64_t i = 0; i < capped.numel(); ++i) capped.data<double>()[i] = cap * std::tanh(capped.data<double>()[i] / cap);
  const ops::CrossEntropyRows want = ops::cross_entropy_rows(capped, targets);
  test::expect_close(rows.loss, want.loss, 1e-12, "loss");
  test::expect_close(rows.lse, want.lse, 1e-12, "lse");
}

TEST(CrossEntropyRows, GradientWithAndWithoutSoftcap) {
  const Tensor logits = randn({4, 6}, 9, DType::F64, 20.0);
  const Tensor targets = Tensor::from_vector<int64_t>({5, 0, -100, 2}, {4});
  for (double cap : {0.0, 15.0}) {
    const auto f = [&](const std::vector<Tensor>& in) { return ops::cross_entropy_rows(in[0], targets, cap).loss; };
    test::expect_gradients(f, {logits}, 4, [&](const Tensor& dout) {
      const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets, cap);
      return std::vector<Tensor>{ops::cross_entropy_rows_backward(logits, targets, rows.lse, cap, dout)};
    });
  }
  // Without a cap and with a constant grad_rows it is cross_entropy_backward.
  const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets);
  const Tensor g = Tensor::full({4}, 0.25, DType::F64);
  test::expect_close(ops::cross_entropy_rows_backward(logits, targets, rows.lse, 0, g),
                     ops::cross_entropy_backward(logits, targets, 0.25), 1e-12);
}

// The temperature divides the (softcapped) logits: the same rows as on logits softcapped and
// divided beforehand, and the gradient carries the 1 / T of the chain rule.
TEST(CrossEntropyRows, TemperatureDividesTheCappedLogits) {
  const double cap = 30;
  const Tensor logits = randn({5, 13}, 12, DType::F64, 40.0);
  const Tensor targets = Tensor::from_vector<int64_t>({12, -100, 3, 0, 7}, {5});
  for (const double temp : {0.6, 1.0, 1.7}) {
    for (const double c : {0.0, cap}) {
      const std::string what = "T " + std::to_string(temp) + " cap " + std::to_string(c);
      Tensor z = logits.clone();
      for (int64_t i = 0; i < z.numel(); ++i) {
        const double x = z.data<double>()[i];
        z.data<double>()[i] = (c > 0 ? c * std::tanh(x / c) : x) / temp;
      }
      const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets, c, -100, temp);
      const ops::CrossEntropyRows want = ops::cross_entropy_rows(z, targets);
      test::expect_close(rows.loss, want.loss, 1e-12, what + " loss");
      test::expect_close(rows.lse, want.lse, 1e-12, what + " lse");
      const auto f = [&](const std::vector<Tensor>& in) {
        return ops::cross_entropy_rows(in[0], targets, c, -100, temp).loss;
      };
      test::expect_gradients(f, {logits}, 13, [&](const Tensor& dout) {
        return std::vector<Tensor>{ops::cross_entropy_rows_backward(logits, targets, rows.lse, c, dout, -100, {}, temp)};
      });
    }
  }
  // f32 logits against the f64 reference.
  const ops::CrossEntropyRows r64 = ops::cross_entropy_rows(logits, targets, cap, -100, 0.6);
  const ops::CrossEntropyRows r32 = ops::cross_entropy_rows(logits.to(DType::F32), targets, cap, -100, 0.6);
  test::expect_close(r32.loss, r64.loss, 1e-6, "f32 loss");
  const Tensor g = randn({5}, 14, DType::F64);
  test::expect_close(ops::cross_entropy_rows_backward(logits.to(DType::F32), targets, r32.lse, cap, g, -100, {}, 0.6),
                     ops::cross_entropy_rows_backward(logits, targets, r64.lse, cap, g, -100, {}, 0.6), 1e-6,
                     "f32 dlogits");
}

TEST(CrossEntropyRows, BackwardInPlace) {
  const Tensor logits = randn({3, 8}, 10, DType::F32, 5.0);
  const Tensor targets = Tensor::from_vector<int64_t>({7, -100, 1}, {3});
  const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets, 30);
  const Tensor g = randn({3}, 11);
  const Tensor want = ops::cross_entropy_rows_backward(logits, targets, rows.lse, 30, g);
  Tensor buf = logits.clone();
  const Tensor got = ops::cross_entropy_rows_backward(buf, targets, rows.lse, 30, g, -100, buf);
  EXPECT_TRUE(got.same_storage(buf));
  test::expect_equal(got, want);
}

TEST(CrossEntropyRows, Errors) {
  const Tensor logits = randn({3, 5}, 1);
  const Tensor targets = Tensor::from_vector<int64_t>({1, 2, 0}, {3});
  expect_error([&] { ops::cross_entropy_rows(logits, Tensor::from_vector<int64_t>({1, 5, 0}, {3})); },
               {"cross_entropy_rows", "target 5", "row 1", "[0, 5)"});
  expect_error([&] { ops::cross_entropy_rows(logits, targets, -1); }, {"softcap", "-1"});
  for (const double t : {0.0, -0.5, std::nan("")})
    expect_error([&] { ops::cross_entropy_rows(logits, targets, 0, -100, t); }, {"cross_entropy_rows", "temperature"});
  expect_error([&] { ops::cross_entropy_rows_backward(logits, targets, Tensor::zeros({3}, DType::F32), 0,
                                                      Tensor::zeros({3}, DType::F32), -100, {}, 0.0); },
               {"cross_entropy_rows_backward", "temperature", "0"});
  const Tensor lse = Tensor::zeros({3}, DType::F32);
  expect_error([&] { ops::cross_entropy_rows_backward(logits, targets, Tensor::zeros({2}, DType::F32), 0, lse); },
               {"lse", "f32[2]"});
  expect_error([&] { ops::cross_entropy_rows_backward(logits, targets, lse, 0, Tensor::zeros({3}, DType::I64)); },
               {"grad_rows", "i64[3]"});
  expect_error([&] { ops::cross_entropy_rows_backward(logits, targets, lse, 0, lse, -100, Tensor::zeros({3, 4}, DType::F32)); },
               {"dlogits", "f32[3, 4]"});
}

}  // namespace
}  // namespace g4

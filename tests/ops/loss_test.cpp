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

}  // namespace
}  // namespace g4

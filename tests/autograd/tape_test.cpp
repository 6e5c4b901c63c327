// The tape: gradients of values used several times accumulate, recording stops under NoGrad, and
// a gradient handed to two inputs is never modified through an alias.
#include <gtest/gtest.h>

#include "autograd/functions.h"

namespace g4 {
namespace {

TEST(Tape, ReusedValueAccumulatesGradient) {
  ag::Var x(Tensor::from_vector<double>({1.5, -2.0, 0.25}, {3}), true);
  // y = sum((x + x) * x) = 2 * sum(x^2)  ->  dy/dx = 4x
  ag::Var y = ag::mul(ag::add(x, x), x);
  ag::Var loss = ag::reshape(ag::narrow(y, 0, 0, 1), {});
  ag::Var l2 = ag::add(ag::add(loss, ag::reshape(ag::narrow(y, 0, 1, 1), {})), ag::reshape(ag::narrow(y, 0, 2, 1), {}));
  ag::backward(l2);
  const double* g = x.grad().data<double>();
  EXPECT_DOUBLE_EQ(g[0], 6.0);
  EXPECT_DOUBLE_EQ(g[1], -8.0);
  EXPECT_DOUBLE_EQ(g[2], 1.0);
  EXPECT_EQ(ag::tape_size(), 0u);
}

TEST(Tape, SharedGradientIsNotAliased) {
  ag::Var a(Tensor::from_vector<double>({1, 2}, {2}), true);
  ag::Var b(Tensor::from_vector<double>({3, 4}, {2}), true);
  // d/da and d/db of sum(a + b) both start as the same tensor; a second use of `a` adds to a's
  // gradient only.
  ag::Var s = ag::add(ag::add(a, b), a);
  ag::backward(ag::reshape(ag::add(ag::narrow(s, 0, 0, 1), ag::narrow(s, 0, 1, 1)), {}));
  EXPECT_DOUBLE_EQ(a.grad().data<double>()[0], 2.0);
  EXPECT_DOUBLE_EQ(b.grad().data<double>()[0], 1.0);
  EXPECT_DOUBLE_EQ(b.grad().data<double>()[1], 1.0);
}

TEST(Tape, NoGradRecordsNothing) {
  ag::Var x(Tensor::from_vector<double>({1, 2}, {2}), true);
  {
    ag::NoGrad ng;
    ag::Var y = ag::mul(x, x);
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_EQ(ag::tape_size(), 0u);
  ag::Var z = ag::mul(x, x);
  EXPECT_TRUE(z.requires_grad());
  ag::clear_tape();
}

TEST(Tape, BackwardNeedsAScalarThatRequiresGrad) {
  ag::Var x(Tensor::from_vector<double>({1, 2}, {2}), true);
  ag::Var y = ag::scale(x, 2.0);
  EXPECT_THROW(ag::backward(y), Error);
  ag::clear_tape();
  ag::Var c(Tensor::scalar(1.0, DType::F64), false);
  EXPECT_THROW(ag::backward(c), Error);
}


TEST(Tape, CollectiveNodeRunsWithoutOutputGradient) {
  ag::Var x(Tensor::from_vector<double>({1, 2}, {2}), true);
  ag::Var unused(Tensor::from_vector<double>({0, 0}, {2}), true);
  int plain_runs = 0, collective_runs = 0;
  bool saw_gradient = true;
  auto ui = unused.impl();
  ag::record({ui}, [&] { ++plain_runs; });
  ag::record_collective({ui}, [&] {
    ++collective_runs;
    saw_gradient = ui->grad.defined();
  });
  ag::backward(ag::sum_all(ag::mul(x, x)));
  EXPECT_EQ(plain_runs, 0);  // nothing reached `unused`: an ordinary node is skipped
  EXPECT_EQ(collective_runs, 1);
  EXPECT_FALSE(saw_gradient);
  EXPECT_DOUBLE_EQ(x.grad().data<double>()[1], 4.0);
}

TEST(Tape, CrossEntropyWithNoCountedTokenPassesAZeroGradient) {
  ag::Var logits(Tensor::from_vector<double>({0.5, -1, 2, 0}, {2, 2}), true);
  const Tensor targets = Tensor::from_vector<int64_t>({-100, -100}, {2});
  ag::Var loss = ag::cross_entropy_mean(logits, targets);
  EXPECT_EQ(loss.value().item(), 0.0);
  ag::backward(loss);
  ASSERT_TRUE(logits.grad().defined());
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(logits.grad().data<double>()[i], 0.0);
}

}  // namespace
}  // namespace g4

// ag::linear_token_logprobs (RL's per-token log-probs from the fused LM head) against
// log softmax(softcap(x · wᵀ) / T) computed here in double, for several chunkings, and its
// gradients against central differences with a random upstream gradient.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/functions.h"
#include "ops/elementwise.h"
#include "ops/gradcheck.h"

namespace g4 {
namespace {

// log p(target) per row in double, 0 on ignored rows: x [N, H], w [V, H] (any float dtype).
std::vector<double> reference_logprobs(const Tensor& x, const Tensor& w, const Tensor& targets, double cap, double temp) {
  const int64_t H = x.size(-1), V = w.size(0), N = x.numel() / H;
  std::vector<double> out(static_cast<size_t>(N), 0.0), z(static_cast<size_t>(V));
  for (int64_t r = 0; r < N; ++r) {
    const int64_t t = element_as_int(targets, r);
    if (t == -100) continue;
    double mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) {
      double l = 0;
      for (int64_t k = 0; k < H; ++k) l += element_as_double(x, r * H + k) * element_as_double(w, j * H + k);
      z[j] = (cap > 0 ? cap * std::tanh(l / cap) : l) / temp;
      mx = std::max(mx, z[j]);
    }
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(z[j] - mx);
    out[static_cast<size_t>(r)] = z[t] - mx - std::log(s);
  }
  return out;
}

Tensor make_targets(const Shape& shape, uint64_t seed, int64_t vocab) {
  Tensor t = randint(shape, seed, 0, vocab, DType::I64);
  t.data<int64_t>()[1] = -100;
  t.data<int64_t>()[t.numel() - 2] = -100;
  return t;
}

struct Setting {
  double cap, temp;
};

TEST(LinearTokenLogprobs, MatchLogSoftmaxOfTheFullLogits) {
  const Tensor x = randn({2, 5, 12}, 21, DType::F64, 1.5), w = randn({37, 12}, 22, DType::F64, 0.6);
  const Tensor targets = make_targets({2, 5}, 23, 37);
  for (const Setting s : {Setting{0.0, 1.0}, Setting{3.0, 0.7}, Setting{0.0, 1.6}, Setting{4.0, 1.0}}) {
    const std::vector<double> want = reference_logprobs(x, w, targets, s.cap, s.temp);
    for (const DType dt : {DType::F64, DType::F32}) {
      for (const int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{10}, int64_t{0}}) {
        const std::string what = std::string(dt == DType::F64 ? "f64" : "f32") + " cap " + std::to_string(s.cap) +
                                 " T " + std::to_string(s.temp) + " chunk " + std::to_string(chunk);
        const ag::Var lp =
            ag::linear_token_logprobs(ag::Var(x.to(dt)), ag::Var(w.to(dt)), targets, s.cap, s.temp, chunk);
        ASSERT_EQ(lp.shape(), targets.shape()) << what;
        EXPECT_EQ(lp.value().dtype(), dt) << what;
        EXPECT_FALSE(lp.requires_grad()) << what;
        for (int64_t r = 0; r < targets.numel(); ++r) {
          const double got = element_as_double(lp.value(), r);
          if (targets.data<int64_t>()[r] == -100) {
            EXPECT_EQ(got, 0.0) << what << " ignored row " << r;
          } else {
            EXPECT_LT(got, 0.0) << what;
            EXPECT_NEAR(got, want[static_cast<size_t>(r)], dt == DType::F64 ? 1e-12 : 2e-5) << what << " row " << r;
          }
        }
      }
    }
  }
}

TEST(LinearTokenLogprobs, GradientsMatchFiniteDifferences) {
  const Tensor x = randn({2, 3, 5}, 31, DType::F64, 1.5), w = randn({11, 5}, 32, DType::F64, 0.8);
  const Tensor targets = make_targets({2, 3}, 33, 11);
  const Tensor dout = randn({2, 3}, 34, DType::F64);
  const double cap = 2.5, temp = 0.6;
  for (const int64_t chunk : {int64_t{1}, int64_t{4}, int64_t{0}}) {
    const auto f = [&](const std::vector<Tensor>& in) {
      return ag::linear_token_logprobs(ag::Var(in[0]), ag::Var(in[1]), targets, cap, temp, chunk).value();
    };
    ag::Var xv(x, true), wv(w, true);
    ag::backward(ag::linear_token_logprobs(xv, wv, targets, cap, temp, chunk), dout);
    ASSERT_TRUE(xv.grad().defined() && wv.grad().defined());
    test::expect_gradients(f, {x, w}, dout, {xv.grad(), wv.grad()});
    // Ignored rows send nothing back.
    for (int64_t k = 0; k < 5; ++k) EXPECT_EQ(xv.grad().data<double>()[1 * 5 + k], 0.0) << "chunk " << chunk;
  }
}

TEST(LinearTokenLogprobs, GradientsOnlyWhereRequiredAndAccumulated) {
  const Tensor x = randn({7, 6}, 41, DType::F64), w = randn({9, 6}, 42, DType::F64, 0.7);
  const Tensor targets = make_targets({7}, 43, 9);
  const Tensor dout = randn({7}, 44, DType::F64);
  ag::Var xv(x, true), wv(w, true);
  ag::backward(ag::linear_token_logprobs(xv, wv, targets, 5.0, 0.9, 2), dout);
  const Tensor gx = xv.grad().clone(), gw = wv.grad().clone();

  // A frozen weight: only x gets a gradient, the same one.
  ag::Var x2(x, true), frozen(w, false);
  ag::backward(ag::linear_token_logprobs(x2, frozen, targets, 5.0, 0.9, 2), dout);
  EXPECT_FALSE(frozen.grad().defined());
  test::expect_close(x2.grad(), gx, 1e-15, "x with a frozen weight");

  // A second backward adds to the gradients already there (the weight's in place).
  ag::backward(ag::linear_token_logprobs(xv, wv, targets, 5.0, 0.9, 3), dout);
  test::expect_close(xv.grad(), ops::scale(gx, 2.0), 1e-14, "x accumulated");
  test::expect_close(wv.grad(), ops::scale(gw, 2.0), 1e-14, "w accumulated");
}

TEST(LinearTokenLogprobs, Errors) {
  const Tensor x = randn({4, 6}, 51), w = randn({9, 6}, 52);
  const Tensor targets = make_targets({4}, 53, 9);
  for (const double t : {0.0, -1.0, HUGE_VAL})
    test::expect_error([&] { ag::linear_token_logprobs(ag::Var(x), ag::Var(w), targets, 0, t); },
                       {"linear_token_logprobs", "temperature"});
  test::expect_error([&] { ag::linear_token_logprobs(ag::Var(x), ag::Var(randn({9, 5}, 54)), targets); },
                     {"linear_token_logprobs", "f32[9, 5]", "f32[4, 6]"});
  test::expect_error([&] { ag::linear_token_logprobs(ag::Var(x), ag::Var(w), make_targets({5}, 55, 9)); },
                     {"linear_token_logprobs", "i64[5]", "4 rows"});
  test::expect_error([&] { ag::linear_token_logprobs(ag::Var(x), ag::Var(w), Tensor::full({4}, 9, DType::I64)); },
                     {"target 9", "[0, 9)"});
}

}  // namespace
}  // namespace g4

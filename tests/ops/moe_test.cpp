#include "ops/moe.h"

#include <algorithm>
#include <numeric>

#include "gradcheck.h"
#include "ops/elementwise.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;
using test::expect_gradients;

// Router probabilities: softmax of random logits (positive, rows sum to 1).
Tensor random_probs(int64_t tokens, int64_t experts, uint64_t seed) {
  return ops::softmax_lastdim(randn({tokens, experts}, seed, DType::F64));
}

TEST(RouterTopk, TiesPickTheLowerExpertFirst) {
  const Tensor probs = Tensor::from_vector<float>({0.2f, 0.3f, 0.3f, 0.2f,  //
                                                   0.25f, 0.25f, 0.25f, 0.25f},
                                                  {2, 4});
  Tensor w, idx;
  ops::router_topk(probs, 3, w, idx);
  EXPECT_EQ(idx.dtype(), DType::I32);
  EXPECT_EQ(std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + 6), std::vector<int32_t>({1, 2, 0, 0, 1, 2}));
  EXPECT_FLOAT_EQ(w.data<float>()[0], 0.3f / 0.8f);
  EXPECT_FLOAT_EQ(w.data<float>()[2], 0.2f / 0.8f);
  for (int64_t j = 3; j < 6; ++j) EXPECT_FLOAT_EQ(w.data<float>()[j], 1.0f / 3.0f);
}

TEST(RouterTopk, MatchesStableSortAndSumsToOne) {
  const Tensor probs = random_probs(6, 8, 1);
  Tensor w, idx;
  ops::router_topk(probs, 3, w, idx);
  for (int64_t t = 0; t < 6; ++t) {
    std::vector<int> ids(8);
    std::iota(ids.begin(), ids.end(), 0);
    const double* p = probs.data<double>() + t * 8;
    std::stable_sort(ids.begin(), ids.end(), [p](int a, int b) { return p[a] > p[b]; });
    const double total = p[ids[0]] + p[ids[1]] + p[ids[2]];
    double sum = 0;
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(idx.data<int32_t>()[t * 3 + j], ids[j]);
      EXPECT_NEAR(w.data<double>()[t * 3 + j], p[ids[j]] / total, 1e-15);
      sum += w.data<double>()[t * 3 + j];
    }
    EXPECT_NEAR(sum, 1.0, 1e-15);
  }
  Tensor w32, idx32;
  ops::router_topk(probs.to(DType::F32), 3, w32, idx32);
  test::expect_equal(idx32, idx);
  expect_close(w32, w, 1e-6);
}

TEST(RouterTopk, Gradient) {
  const Tensor probs = random_probs(5, 6, 2);
  Tensor w, idx;
  ops::router_topk(probs, 2, w, idx);
  // The selection is held fixed; only the renormalised values depend on probs.
  const auto f = [](const std::vector<Tensor>& in) {
    Tensor wt, id;
    ops::router_topk(in[0], 2, wt, id);
    return wt;
  };
  expect_gradients(f, {probs}, 3, [&](const Tensor& dw) {
    return std::vector<Tensor>{ops::router_topk_backward(dw, probs, idx)};
  });
}

TEST(MoePlan, StableCountingSort) {
  // 4 tokens, top-2, 5 experts (expert 3 unused).
  const Tensor idx = Tensor::from_vector<int32_t>({2, 0, 0, 4, 2, 1, 4, 2}, {4, 2});
  const ops::MoePlan plan = ops::moe_plan(idx, 5);
  EXPECT_EQ(plan.tokens, 4);
  EXPECT_EQ(plan.top_k, 2);
  EXPECT_EQ(plan.offsets, std::vector<int64_t>({0, 2, 3, 6, 6, 8}));
  const auto values = [](const Tensor& t) {
    return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
  };
  EXPECT_EQ(values(plan.order), std::vector<int32_t>({1, 2, 5, 0, 4, 7, 3, 6}));
  EXPECT_EQ(values(plan.row_of), std::vector<int32_t>({3, 0, 1, 6, 4, 2, 7, 5}));  // the inverse of order
  // Same plan from i64 indices.
  EXPECT_EQ(values(ops::moe_plan(idx.to(DType::I64), 5).order), values(plan.order));
}

struct MoeSetup {
  int64_t tokens = 5, top_k = 2, experts = 4, hidden = 6, out = 3;
  Tensor x, w, weights, idx;
  ops::MoePlan plan;
};

MoeSetup make_setup(uint64_t seed) {
  MoeSetup s;
  s.x = randn({s.tokens, s.hidden}, seed, DType::F64);
  s.w = randn({s.experts, s.hidden, s.out}, seed + 1, DType::F64);
  // Expert 3 gets no probability mass worth picking: an empty group.
  Tensor probs = random_probs(s.tokens, s.experts, seed + 2);
  for (int64_t t = 0; t < s.tokens; ++t) probs.data<double>()[t * s.experts + 3] = 1e-9;
  ops::router_topk(probs, s.top_k, s.weights, s.idx);
  s.plan = ops::moe_plan(s.idx, s.experts);
  return s;
}

TEST(Moe, PermuteUnpermuteGroupedMatmulEqualsDenseLoop) {
  const MoeSetup s = make_setup(10);
  EXPECT_EQ(s.plan.offsets[3], s.plan.offsets[4]);  // the empty group is exercised
  const Tensor xs = ops::moe_permute(s.x, s.plan);
  const Tensor ys = ops::grouped_matmul(xs, s.w, s.plan.offsets);
  const Tensor out = ops::moe_unpermute(ys, s.weights, s.plan);

  Tensor want = Tensor::zeros({s.tokens, s.out}, DType::F64);
  for (int64_t t = 0; t < s.tokens; ++t)
    for (int64_t k = 0; k < s.top_k; ++k) {
      const int64_t e = s.idx.data<int32_t>()[t * s.top_k + k];
      const double g = s.weights.data<double>()[t * s.top_k + k];
      for (int64_t n = 0; n < s.out; ++n) {
        double acc = 0;
        for (int64_t h = 0; h < s.hidden; ++h)
          acc += s.x.data<double>()[t * s.hidden + h] * s.w.data<double>()[(e * s.hidden + h) * s.out + n];
        want.data<double>()[t * s.out + n] += g * acc;
      }
    }
  expect_close(out, want, 1e-14, "f64");
  const std::vector<Tensor> f32 = test::to_f32({s.x, s.w, s.weights});
  const Tensor out32 = ops::moe_unpermute(
      ops::grouped_matmul(ops::moe_permute(f32[0], s.plan), f32[1], s.plan.offsets), f32[2], s.plan);
  expect_close(out32, want, 1e-5, "f32");
}

TEST(Moe, PermuteGradient) {
  const MoeSetup s = make_setup(20);
  const auto f = [&](const std::vector<Tensor>& in) { return ops::moe_permute(in[0], s.plan); };
  expect_gradients(f, {s.x}, 21, [&](const Tensor& dxs) {
    return std::vector<Tensor>{ops::moe_permute_backward(dxs, s.plan)};
  });
}

TEST(Moe, UnpermuteGradients) {
  const MoeSetup s = make_setup(30);
  const Tensor ys = randn({s.tokens * s.top_k, s.out}, 31, DType::F64);
  const auto f = [&](const std::vector<Tensor>& in) { return ops::moe_unpermute(in[0], in[1], s.plan); };
  expect_gradients(f, {ys, s.weights}, 32, [&](const Tensor& dout) {
    Tensor dys, dw;
    ops::moe_unpermute_backward(dout, ys, s.weights, s.plan, dys, dw);
    return std::vector<Tensor>{dys, dw};
  });
}

TEST(Moe, GroupedMatmulGradients) {
  const MoeSetup s = make_setup(40);
  const Tensor xs = ops::moe_permute(s.x, s.plan);
  const auto f = [&](const std::vector<Tensor>& in) { return ops::grouped_matmul(in[0], in[1], s.plan.offsets); };
  Tensor dw_seen;
  expect_gradients(f, {xs, s.w}, 41, [&](const Tensor& dy) {
    Tensor dxs, dw;
    ops::grouped_matmul_backward(dy, xs, s.w, s.plan.offsets, dxs, dw);
    dw_seen = dw;
    return std::vector<Tensor>{dxs, dw};
  });
  const int64_t block = s.hidden * s.out;
  for (int64_t i = 0; i < block; ++i) EXPECT_EQ(dw_seen.data<double>()[3 * block + i], 0.0);  // empty expert
}

TEST(Moe, GroupedMatmulBackwardWritesOrAddsIntoAGivenGradient) {
  const MoeSetup s = make_setup(42);
  const Tensor xs = ops::moe_permute(s.x, s.plan);
  const Tensor dy = randn({xs.size(0), s.w.size(2)}, 43, DType::F64);
  Tensor dxs, dw_new;
  ops::grouped_matmul_backward(dy, xs, s.w, s.plan.offsets, dxs, dw_new);
  // beta 0: what the buffer held (NaN here) is ignored, empty experts come out zero.
  Tensor dw = Tensor::full(s.w.shape(), std::nan(""), DType::F64);
  ops::grouped_matmul_backward(dy, xs, s.w, s.plan.offsets, dxs, dw, Tensor(), 0.0);
  for (int64_t i = 0; i < dw.numel(); ++i) ASSERT_EQ(dw.data<double>()[i], dw_new.data<double>()[i]) << i;
  // beta 1: added to what is there, empty experts keep it.
  const Tensor before = randn(s.w.shape(), 44, DType::F64);
  Tensor acc = before.clone();
  ops::grouped_matmul_backward(dy, xs, s.w, s.plan.offsets, dxs, acc, Tensor(), 1.0);
  for (int64_t i = 0; i < acc.numel(); ++i)
    ASSERT_NEAR(acc.data<double>()[i], before.data<double>()[i] + dw_new.data<double>()[i], 1e-12) << i;
  Tensor wrong = Tensor::zeros({s.w.size(0), s.w.size(1), s.w.size(2) + 1}, DType::F64);
  expect_error([&] { ops::grouped_matmul_backward(dy, xs, s.w, s.plan.offsets, dxs, wrong, Tensor(), 1.0); },
               {"grouped_matmul_backward", "dw"});
}

TEST(Moe, Errors) {
  expect_error([&] { ops::moe_plan(Tensor::from_vector<int32_t>({0, 1, 5, 2}, {2, 2}), 4); },
               {"expert id 5", "token 1", "[0, 4)"});
  Tensor w, idx;
  expect_error([&] { ops::router_topk(randn({3, 4}, 1), 5, w, idx); }, {"router_topk", "f32[3, 4]"});
  const Tensor xs = randn({4, 6}, 2), ew = randn({2, 6, 3}, 3);
  expect_error([&] { ops::grouped_matmul(xs, ew, {0, 2, 3}); }, {"grouped_matmul", "4 rows", "0 .. 3"});
  expect_error([&] { ops::grouped_matmul(xs, randn({2, 5, 3}, 4), {0, 2, 4}); }, {"f32[4, 6]", "f32[2, 5, 3]"});
  // Without host offsets only the GPU kernels that read device offsets run.
  expect_error([&] { ops::grouped_matmul(xs, ew, {}, Tensor::from_vector<int64_t>({0, 2, 4}, {3})); },
               {"grouped_matmul", "no host offsets", "f32[4, 6]"});
  const ops::MoePlan plan = ops::moe_plan(Tensor::from_vector<int32_t>({0, 1, 1, 0}, {2, 2}), 2);
  expect_error([&] { ops::moe_permute(randn({3, 6}, 5), plan); }, {"moe_permute", "f32[3, 6]"});
}

}  // namespace
}  // namespace g4

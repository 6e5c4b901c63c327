// The fused inference norms (ops/fused.h) on the CPU are the compositions they stand for, bit for
// bit, and name bad arguments; tests/gpu/fused_test.cpp compares the GPU kernels with them.
#include "ops/fused.h"

#include "core/random.h"
#include "gradcheck.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/paged_attention.h"
#include "ops/rope.h"

namespace g4 {
namespace {

using test::expect_equal;
using test::expect_error;

constexpr double kEps = 1e-6;

Tensor positions_of(int64_t batch, int64_t seq) {
  Tensor p = Tensor::empty({batch, seq}, DType::I64);
  for (int64_t i = 0; i < p.numel(); ++i) p.data<int64_t>()[i] = (i * 37) % 500;
  return p;
}

Tensor inv_freq_of(int64_t d) {
  Tensor f = Tensor::empty({d / 2}, DType::F32);
  for (int64_t i = 0; i < d / 2; ++i) f.data<float>()[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(d));
  return f;
}

TEST(FusedNorms, CpuFormsAreTheirCompositions) {
  for (const DType dt : {DType::F32, DType::F64}) {
    const Tensor r = randn({3, 5, 24}, 1, dt), a = randn({3, 5, 24}, 2, dt), b = randn({3, 5, 24}, 3, dt);
    const Tensor w = randn({24}, 4, dt), w2 = randn({24}, 5, dt);
    expect_equal(ops::add_rmsnorm(r, a, w, 1.0, kEps), ops::add(r, ops::rmsnorm(a, w, kEps)), "add_rmsnorm");
    expect_equal(ops::add_rmsnorm(r, a, w, 0.75, kEps), ops::scale(ops::add(r, ops::rmsnorm(a, w, kEps)), 0.75),
                 "add_rmsnorm, scaled");
    expect_equal(ops::rmsnorm_sum(a, w, b, w2, kEps), ops::add(ops::rmsnorm(a, w, kEps), ops::rmsnorm(b, w2, kEps)),
                 "rmsnorm_sum");
    const Tensor w3 = randn({24}, 12, dt);
    const std::vector<Tensor> norms = ops::add_rmsnorm_norms(r, a, w, kEps, {{w2, 1.0}, {w3, 0.2}});
    ASSERT_EQ(norms.size(), 3u);
    const Tensor sum = ops::add(r, ops::rmsnorm(a, w, kEps));
    expect_equal(norms[0], sum, "add_rmsnorm_norms h");
    expect_equal(norms[1], ops::rmsnorm(sum, w2, kEps), "add_rmsnorm_norms norm 1");
    expect_equal(norms[2], ops::scale(ops::rmsnorm(sum, w3, kEps), 0.2), "add_rmsnorm_norms scaled norm");
    const std::vector<Tensor> scaled = ops::add_rmsnorm_norms(r, a, w, kEps, {{w2, 1.0}}, 0.6);
    expect_equal(scaled[0], ops::add_rmsnorm(r, a, w, 0.6, kEps), "add_rmsnorm_norms with a scaled h");
    expect_equal(scaled[1], ops::rmsnorm(scaled[0], w2, kEps), "add_rmsnorm_norms norm of the scaled h");
    const std::vector<Tensor> moe_end = ops::rmsnorm_sum_add_norms(a, w2, b, w3, r, w, kEps, {{w2, 1.0}}, 0.6);
    ASSERT_EQ(moe_end.size(), 2u);
    const Tensor moe_out = ops::add_rmsnorm(r, ops::rmsnorm_sum(a, w2, b, w3, kEps), w, 0.6, kEps);
    expect_equal(moe_end[0], moe_out, "rmsnorm_sum_add_norms output");
    expect_equal(moe_end[1], ops::rmsnorm(moe_out, w2, kEps), "rmsnorm_sum_add_norms next norm");
    const Tensor x = randn({2, 3, 4, 16}, 6, dt), wx = randn({16}, 7, dt);
    const Tensor pos = positions_of(2, 3), freq = inv_freq_of(16);
    expect_equal(ops::rmsnorm_rope(x, wx, pos, freq, kEps), ops::rope(ops::rmsnorm(x, wx, kEps), pos, freq),
                 "rmsnorm_rope");
    expect_equal(ops::gelu_tanh_mul(a, b), ops::mul(ops::gelu_tanh(a), b), "gelu_tanh_mul");
    {
      const Tensor logits = randn({5, 12}, 18, dt);
      Tensor w_fused, i_fused, w_sep, i_sep;
      ops::softmax_topk(logits, 3, w_fused, i_fused);
      ops::router_topk(ops::softmax_lastdim(logits), 3, w_sep, i_sep);
      expect_equal(w_fused, w_sep, "softmax_topk weights");
      expect_equal(i_fused, i_sep, "softmax_topk indices");
      // The routed experts from those logits: 5 tokens, 12 experts of H 24, I 10.
      const Tensor x = randn({5, 24}, 20, dt), gate_up = randn({12, 24, 20}, 21, dt);
      const Tensor down = randn({12, 10, 24}, 22, dt);
      expect_equal(ops::moe_experts_from_logits(x, logits, 3, gate_up, down),
                   ops::moe_experts(x, w_sep, i_sep, gate_up, down), "moe_experts_from_logits");
    }
    // A paged step's attention inputs: q, and the keys and values written into the pages.
    const Tensor q = randn({1, 3, 4, 16}, 13, dt), k = randn({1, 3, 2, 16}, 14, dt), v = randn({1, 3, 2, 16}, 15, dt);
    const Tensor slots = Tensor::from_vector(std::vector<int64_t>{5, -1, 2}, {3});
    Tensor k_pages = randn({2, 4, 2, 16}, 16, dt), v_pages = randn({2, 4, 2, 16}, 17, dt);
    Tensor k_ref = k_pages.clone(), v_ref = v_pages.clone();
    const Tensor pos1 = positions_of(1, 3);
    expect_equal(ops::norm_rope_write_kv(q, wx, k, wx, v, pos1, freq, kEps, k_pages, v_pages, slots),
                 ops::rmsnorm_rope(q, wx, pos1, freq, kEps), "norm_rope_write_kv q");
    ops::write_kv_pages(ops::rmsnorm_rope(k, wx, pos1, freq, kEps).reshape({3, 2, 16}),
                        ops::rmsnorm(v, Tensor(), kEps).reshape({3, 2, 16}), k_ref, v_ref, slots);
    expect_equal(k_pages, k_ref, "norm_rope_write_kv k pages");
    expect_equal(v_pages, v_ref, "norm_rope_write_kv v pages");
    const Tensor h = randn({2, 3, 24}, 8, dt), wg = randn({40, 24}, 9, dt), wu = randn({40, 24}, 10, dt);
    expect_equal(ops::gelu_gate_linear(h, wg, wu), ops::gelu_gate(ops::linear(h, wg), ops::linear(h, wu)),
                 "gelu_gate_linear");
    const Tensor ple = randn({2, 3, 40}, 19, dt);
    expect_equal(ops::gelu_tanh_mul_linear(h, wg, ple), ops::gelu_tanh_mul(ops::linear(h, wg), ple),
                 "gelu_tanh_mul_linear");
    // A projection joining the residual, with the norms of the sum (the layer's output and the next input norm).
    const Tensor g = randn({2, 3, 40}, 23, dt), wd = randn({24, 40}, 24, dt);
    const std::vector<Tensor> joined = ops::linear_add_rmsnorm_norms(g, wd, h, w, kEps, {{w2, 1.0}, {w3, 0.2}}, 0.6);
    const std::vector<Tensor> composed = ops::add_rmsnorm_norms(h, ops::linear(g, wd), w, kEps, {{w2, 1.0}, {w3, 0.2}}, 0.6);
    ASSERT_EQ(joined.size(), 3u);
    for (size_t i = 0; i < joined.size(); ++i)
      expect_equal(joined[i], composed[i], "linear_add_rmsnorm_norms output " + std::to_string(i));
    const std::vector<Tensor> many = ops::linear_many(h, {wg, wu, randn({8, 24}, 11, dt)});
    ASSERT_EQ(many.size(), 3u);
    expect_equal(many[0], ops::linear(h, wg), "linear_many[0]");
    expect_equal(many[2], ops::linear(h, randn({8, 24}, 11, dt)), "linear_many[2]");
  }
}

TEST(FusedNorms, BadArgumentsAreNamed) {
  const Tensor a = randn({2, 8}, 1, DType::F32), w = randn({8}, 2, DType::F32);
  expect_error([&] { ops::add_rmsnorm(randn({2, 7}, 3, DType::F32), a, w, 1.0, kEps); },
               {"add_rmsnorm", "shapes differ", "residual"});
  expect_error([&] { ops::add_rmsnorm(a, a, randn({7}, 3, DType::F32), 1.0, kEps); }, {"add_rmsnorm", "w", "[D]"});
  expect_error([&] { ops::add_rmsnorm(a, a, Tensor(), 1.0, kEps); }, {"add_rmsnorm", "w is undefined"});
  expect_error([&] { ops::rmsnorm_sum(a, w, randn({2, 8}, 3, DType::F64), w, kEps); }, {"rmsnorm_sum", "dtypes differ"});
  expect_error([&] { ops::rmsnorm_sum_add_norms(a, w, randn({3, 8}, 3, DType::F32), w, a, w, kEps, {}); },
               {"rmsnorm_sum_add_norms", "shapes differ"});
  expect_error([&] { ops::rmsnorm_sum_add_norms(a, w, a, w, randn({2, 8}, 3, DType::F64), w, kEps, {}); },
               {"rmsnorm_sum_add_norms", "dtypes differ"});
  expect_error([&] { ops::add_rmsnorm_norms(a, a, w, kEps, {{w}, {w}, {w}, {w}}); },
               {"add_rmsnorm_norms", "at most 3 norms"});
  expect_error([&] { ops::add_rmsnorm_norms(a, a, w, kEps, {{randn({7}, 3, DType::F32)}}); },
               {"add_rmsnorm_norms", "norms[i].weight", "[D]"});
  expect_error([&] { ops::rmsnorm_rope(randn({2, 3, 4, 16}, 1, DType::F32), randn({8}, 2, DType::F32),
                                       positions_of(2, 3), inv_freq_of(16), kEps); },
               {"rmsnorm_rope", "w", "[D]"});
  expect_error([&] { ops::linear_add_rmsnorm_norms(a, randn({8, 7}, 3, DType::F32), a, w, kEps, {}); },
               {"linear_add_rmsnorm_norms", "must be [N, K]"});
  expect_error([&] { ops::linear_add_rmsnorm_norms(a, randn({6, 8}, 3, DType::F32), a, w, kEps, {}); },
               {"linear_add_rmsnorm_norms", "residual", "product's shape"});
  expect_error([&] { ops::linear_add_rmsnorm_norms(a, randn({8, 8}, 3, DType::F32), a, w, kEps, {{w}, {w}, {w}, {w}}); },
               {"linear_add_rmsnorm_norms", "at most 3 norms"});
  expect_error([&] { ops::gelu_gate_linear(a, randn({4, 8}, 1, DType::F32), randn({5, 8}, 2, DType::F32)); },
               {"gelu_gate_linear", "shapes differ"});
  expect_error([&] { ops::gelu_gate_linear(a, randn({4, 7}, 1, DType::F32), randn({4, 7}, 2, DType::F32)); },
               {"gelu_gate_linear", "[N, K]"});
  expect_error([&] { ops::linear_many(a, {randn({4, 7}, 1, DType::F32)}); }, {"linear_many", "[N, K]"});
  expect_error([&] { ops::gelu_tanh_mul_linear(a, randn({4, 8}, 1, DType::F32), randn({2, 5}, 2, DType::F32)); },
               {"gelu_tanh_mul_linear", "b f32[2, 5]", "[2, 4]"});
  expect_error([&] { ops::gelu_tanh_mul_linear(a, randn({4, 7}, 1, DType::F32), randn({2, 4}, 2, DType::F32)); },
               {"gelu_tanh_mul_linear", "[N, K]"});
  expect_error([&] { ops::gelu_tanh_mul(a, randn({2, 7}, 3, DType::F32)); }, {"gelu_tanh_mul", "shapes differ"});
  Tensor weights, indices;
  expect_error([&] { ops::softmax_topk(a, 9, weights, indices); }, {"softmax_topk", "k = 9", "[1, 8]"});
  expect_error([&] { ops::softmax_topk(randn({2, 3, 8}, 1, DType::F32), 2, weights, indices); },
               {"softmax_topk", "logits", "[T, E]"});
  const Tensor xe = randn({2, 8}, 4, DType::F32), gate_up = randn({8, 8, 6}, 5, DType::F32);
  const Tensor down = randn({8, 3, 8}, 6, DType::F32);
  expect_error([&] { ops::moe_experts_from_logits(xe, randn({3, 8}, 7, DType::F32), 2, gate_up, down); },
               {"moe_experts_from_logits", "logits", "[T, E]"});
  expect_error([&] { ops::moe_experts_from_logits(xe, randn({2, 8}, 7, DType::F32), 9, gate_up, down); },
               {"moe_experts_from_logits", "k = 9", "[1, 8]"});
  const Tensor bad_down = randn({8, 3, 5}, 8, DType::F32);
  expect_error([&] { ops::moe_experts_from_logits(xe, randn({2, 8}, 7, DType::F32), 2, gate_up, bad_down); },
               {"moe_experts_from_logits", "down", "[E, I, H]"});
  const Tensor q = randn({1, 3, 4, 16}, 1, DType::F32), k = randn({1, 3, 2, 16}, 2, DType::F32);
  const Tensor w16 = randn({16}, 3, DType::F32), pos = positions_of(1, 3), freq = inv_freq_of(16);
  const Tensor slots = Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3});
  Tensor k_pages = randn({2, 4, 2, 16}, 4, DType::F32), v_pages = randn({2, 4, 2, 16}, 5, DType::F32);
  expect_error([&] { ops::norm_rope_write_kv(q, w16, k, w16, randn({1, 3, 2, 8}, 6, DType::F32), pos, freq, kEps,
                                             k_pages, v_pages, slots); },
               {"norm_rope_write_kv", "shapes differ", "v_raw"});
  expect_error([&] { ops::norm_rope_write_kv(q, w16, randn({1, 2, 2, 16}, 6, DType::F32), w16,
                                             randn({1, 2, 2, 16}, 7, DType::F32), pos, freq, kEps, k_pages, v_pages,
                                             slots); },
               {"norm_rope_write_kv", "different tokens"});
  expect_error([&] { ops::norm_rope_write_kv(randn({3, 4, 16}, 6, DType::F32), w16, k, w16, k, pos, freq, kEps,
                                             k_pages, v_pages, slots); },
               {"norm_rope_write_kv", "q_raw", "[B, S, nH, d]"});
}

}  // namespace
}  // namespace g4

// The fused inference norms (ops/fused.h) on the GPU against the separate GPU ops they replace
// (bf16: equal up to a rounding flip where the fp32 sum of squares adds in another order; f32:
// within summation noise of the CPU composition), rows that miss the kernel's packs (the fallback),
// and a bf16 model's logits with the fused layer against the separate ops.
#include <cmath>

#include "autograd/variable.h"
#include "gpu_test.h"
#include "model/state_dict_adapter.h"
#include "ops/cuda/gemv.h"
#include "ops/elementwise.h"
#include "ops/fused.h"
#include "ops/matmul.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/paged_attention.h"
#include "ops/rope.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::gpu_f32;
using test::randn_bf16_exact;

constexpr double kEps = 1e-6;
constexpr double kBf16Rtol = 8e-3;  // one bf16 rounding of the largest value

Tensor on_gpu(const Tensor& cpu_f32, DType dt) { return dt == DType::BF16 ? gpu_bf16(cpu_f32) : gpu_f32(cpu_f32); }

Tensor positions_of(int64_t batch, int64_t seq, DType dt) {
  Tensor p = Tensor::empty({batch, seq}, DType::I64);
  for (int64_t i = 0; i < p.numel(); ++i) p.data<int64_t>()[i] = (i * 977) % 30000;
  return p.to(dt).to(Device::CUDA);
}

Tensor inv_freq_of(int64_t d) {
  Tensor f = Tensor::empty({d / 2}, DType::F32);
  for (int64_t i = 0; i < d / 2; ++i)
    f.data<float>()[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(d));
  return f.to(Device::CUDA);
}

// A GEMV's shape: rows of x, outputs n, reduction k.
struct GemvShape {
  int64_t rows, n, k;
};

TEST(GpuFusedNorms, KernelsMatchTheSeparateOps) {
  G4_REQUIRE_GPU();
  for (const DType dt : {DType::BF16, DType::F32}) {
    const double rtol = dt == DType::BF16 ? kBf16Rtol : test::kF32Rtol;
    const std::string name = dtype_name(dt);
    // Rows of 2816 (26B-A4B's hidden size: one pack a thread), 5376 (31B's: two packs a thread in bf16,
    // four in f32), 12288 (four in bf16; past the register-resident kernels in f32), 40000 (past them),
    // 24 (a partial warp), and 20 (no whole packs in bf16). Rows the kernels do not take run the
    // separate ops.
    for (const int64_t d : {int64_t{2816}, int64_t{5376}, int64_t{12288}, int64_t{40000}, int64_t{24}, int64_t{20}}) {
      const std::string what = name + " d=" + std::to_string(d);
      const Tensor r = on_gpu(randn_bf16_exact({3, 5, d}, 1), dt), a = on_gpu(randn_bf16_exact({3, 5, d}, 2, 3.0), dt);
      const Tensor b = on_gpu(randn_bf16_exact({3, 5, d}, 3, 0.1), dt);
      const Tensor w = on_gpu(randn_bf16_exact({d}, 4), dt), w2 = on_gpu(randn_bf16_exact({d}, 5), dt);
      expect_close_scaled(ops::add_rmsnorm(r, a, w, 1.0, kEps), ops::add(r, ops::rmsnorm(a, w, kEps)), 0, rtol,
                          "add_rmsnorm " + what);
      expect_close_scaled(ops::add_rmsnorm(r, a, w, 0.37, kEps),
                          ops::scale(ops::add(r, ops::rmsnorm(a, w, kEps)), 0.37), 0, rtol,
                          "add_rmsnorm scaled " + what);
      // Elementwise, so the same bits: the gelu rounded where gelu_tanh stores it.
      expect_close_scaled(ops::gelu_tanh_mul(a, b), ops::mul(ops::gelu_tanh(a), b), 0, 0, "gelu_tanh_mul " + what);
      expect_close_scaled(ops::rmsnorm_sum(a, w, b, w2, kEps),
                          ops::add(ops::rmsnorm(a, w, kEps), ops::rmsnorm(b, w2, kEps)), 0, rtol, "rmsnorm_sum " + what);
      // The residual and three norms of it (the last scaled, as the router's input is).
      const Tensor w3 = on_gpu(randn_bf16_exact({d}, 9), dt), w4 = on_gpu(randn_bf16_exact({d}, 10), dt);
      const std::vector<Tensor> outs = ops::add_rmsnorm_norms(r, a, w, kEps, {{w2, 1.0}, {w3, 1.0}, {w4, 0.0188}});
      const Tensor h = ops::add(r, ops::rmsnorm(a, w, kEps));
      ASSERT_EQ(outs.size(), 4u);
      expect_close_scaled(outs[0], h, 0, rtol, "add_rmsnorm_norms h " + what);
      // Against the norms of the fused h: a rounding flip of h would otherwise move them too.
      expect_close_scaled(outs[1], ops::rmsnorm(outs[0], w2, kEps), 0, rtol, "add_rmsnorm_norms norm 1 " + what);
      expect_close_scaled(outs[2], ops::rmsnorm(outs[0], w3, kEps), 0, rtol, "add_rmsnorm_norms norm 2 " + what);
      expect_close_scaled(outs[3], ops::scale(ops::rmsnorm(outs[0], w4, kEps), 0.0188), 0, rtol,
                          "add_rmsnorm_norms scaled norm " + what);
      expect_close_scaled(ops::add_rmsnorm_norms(r, a, w, kEps, {})[0], h, 0, rtol,
                          "add_rmsnorm_norms, no norms, " + what);
      // A layer's output scaled by its layer scalar, with the next layer's input norm.
      const std::vector<Tensor> scaled = ops::add_rmsnorm_norms(r, a, w, kEps, {{w2, 1.0}}, 0.37);
      expect_close_scaled(scaled[0], ops::scale(h, 0.37), 0, rtol, "add_rmsnorm_norms scaled h " + what);
      expect_close_scaled(scaled[1], ops::rmsnorm(scaled[0], w2, kEps), 0, rtol,
                          "add_rmsnorm_norms norm of scaled h " + what);
      // An MoE layer's end: the dense and routed outputs normed and summed, then the scaled output
      // and the next layer's norm; against the separate ops from the fused sum (a rounding flip
      // there would move everything after it).
      const Tensor m = ops::rmsnorm_sum(a, w3, b, w4, kEps);
      const std::vector<Tensor> moe_end = ops::rmsnorm_sum_add_norms(a, w3, b, w4, r, w, kEps, {{w2, 1.0}}, 0.37);
      ASSERT_EQ(moe_end.size(), 2u);
      expect_close_scaled(moe_end[0], ops::add_rmsnorm(r, m, w, 0.37, kEps), 0, rtol,
                          "rmsnorm_sum_add_norms output " + what);
      expect_close_scaled(moe_end[1], ops::rmsnorm(moe_end[0], w2, kEps), 0, rtol,
                          "rmsnorm_sum_add_norms next norm " + what);
      // A weight that is a view one element into a longer tensor: not 16-byte aligned, so the
      // separate ops run (a packed load from it would be a misaligned-address fault).
      const Tensor w_off = on_gpu(randn_bf16_exact({d + 1}, 8), dt).slice0(1, d);
      expect_close_scaled(ops::rmsnorm_sum_add_norms(a, w_off, b, w4, r, w, kEps, {{w2, 1.0}})[0],
                          ops::add_rmsnorm(r, ops::rmsnorm_sum(a, w_off, b, w4, kEps), w, 1.0, kEps), 0, rtol,
                          "rmsnorm_sum_add_norms, unaligned weight, " + what);
      expect_close_scaled(ops::add_rmsnorm_norms(r, a, w, kEps, {{w_off, 1.0}})[1],
                          ops::rmsnorm(ops::add(r, ops::rmsnorm(a, w, kEps)), w_off, kEps), 0, rtol,
                          "add_rmsnorm_norms, unaligned weight, " + what);
      expect_close_scaled(ops::add_rmsnorm(r, a, w_off, 1.0, kEps), ops::add(r, ops::rmsnorm(a, w_off, kEps)), 0, rtol,
                          "add_rmsnorm, unaligned weight, " + what);
      expect_close_scaled(ops::rmsnorm_sum(a, w, b, w_off, kEps),
                          ops::add(ops::rmsnorm(a, w, kEps), ops::rmsnorm(b, w_off, kEps)), 0, rtol,
                          "rmsnorm_sum, unaligned weight, " + what);
    }
    // Heads of 256 and 512 (sliding and full layers), 16 and 2 of them; i64 and i32 positions; a
    // head of 20 (halves of 10: the fallback).
    for (const int64_t d : {int64_t{256}, int64_t{512}, int64_t{20}})
      for (const DType pos_dt : {DType::I64, DType::I32}) {
        const int64_t heads = d == 512 ? 2 : 16;
        const std::string what = name + " d=" + std::to_string(d) + " positions " + dtype_name(pos_dt);
        const Tensor x = on_gpu(randn_bf16_exact({2, 3, heads, d}, 6, 2.0), dt), w = on_gpu(randn_bf16_exact({d}, 7), dt);
        const Tensor pos = positions_of(2, 3, pos_dt), freq = inv_freq_of(d);
        expect_close_scaled(ops::rmsnorm_rope(x, w, pos, freq, kEps), ops::rope(ops::rmsnorm(x, w, kEps), pos, freq),
                            0, rtol, "rmsnorm_rope " + what);
        const Tensor w_off = on_gpu(randn_bf16_exact({d + 1}, 8), dt).slice0(1, d);
        expect_close_scaled(ops::rmsnorm_rope(x, w_off, pos, freq, kEps),
                            ops::rope(ops::rmsnorm(x, w_off, kEps), pos, freq), 0, rtol,
                            "rmsnorm_rope, unaligned weight, " + what);
      }
  }
}

// The gated MLP's first half in one GEMV (1 to 8 rows) against two bf16 products and the gate; 9
// rows and a k off the 16-byte packs take the separate ops. Two roundings meet here: where the
// GEMV's fp32 sum and cuBLASLt's (another order) round g or u to different bf16 neighbours, that
// one-ulp flip (up to 2^-7 of the value) is carried into gelu(g)·u, whose own rounding may then
// flip too, so a flip in a large output is up to two of its ulps: twice the one-rounding tolerance.
TEST(GpuFusedNorms, GatedGemvMatchesTheSeparateOps) {
  G4_REQUIRE_GPU();
  uint64_t seed = 40;
  for (const GemvShape c : std::initializer_list<GemvShape>{
           {1, 2112, 2816}, {2, 37, 64}, {5, 10240, 2560}, {8, 300, 1000}, {9, 64, 64}, {3, 16, 20}}) {
    const Tensor x = gpu_bf16(randn_bf16_exact({c.rows, c.k}, ++seed));
    const Tensor wg = gpu_bf16(randn_bf16_exact({c.n, c.k}, ++seed, 0.05));
    const Tensor wu = gpu_bf16(randn_bf16_exact({c.n, c.k}, ++seed, 0.05));
    expect_close_scaled(
        ops::gelu_gate_linear(x, wg, wu), ops::gelu_gate(ops::linear(x, wg), ops::linear(x, wu)), 0, 2 * kBf16Rtol,
        "gelu_gate_linear rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k));
  }
}

// E4B's per-layer input gate in one GEMV (its epilogue takes the gelu and the product with b)
// against the product, then gelu_tanh_mul; rows the GEMV does not take (9; 3 rows of a k off the
// packs) run the separate ops. The sum's one-ulp flips carry through the gelu as in the gated case.
TEST(GpuFusedNorms, GatedInputGemvMatchesTheSeparateOps) {
  G4_REQUIRE_GPU();
  uint64_t seed = 60;
  for (const GemvShape c :
       std::initializer_list<GemvShape>{{1, 256, 2560}, {2, 256, 1536}, {2, 37, 64}, {9, 64, 64}, {3, 16, 20}}) {
    const Tensor x = gpu_bf16(randn_bf16_exact({c.rows, c.k}, ++seed));
    const Tensor w = gpu_bf16(randn_bf16_exact({c.n, c.k}, ++seed, 0.05));
    const Tensor b = gpu_bf16(randn_bf16_exact({c.rows, c.n}, ++seed));
    expect_close_scaled(ops::gelu_tanh_mul_linear(x, w, b), ops::gelu_tanh_mul(ops::linear(x, w), b), 0, 2 * kBf16Rtol,
                        "gelu_tanh_mul_linear rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n) +
                            " k=" + std::to_string(c.k));
  }
}

// A layer's q, k and v projections in one launch (1 to 8 rows) against separate bf16 products; 9
// rows take the separate products.
TEST(GpuFusedNorms, ProjectionsInOneLaunchMatchTheSeparateProducts) {
  G4_REQUIRE_GPU();
  uint64_t seed = 70;
  for (const int64_t rows : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}}) {
    const Tensor x = gpu_bf16(randn_bf16_exact({rows, 1, 2816}, ++seed));
    std::vector<Tensor> weights;
    for (const int64_t n : {int64_t{4096}, int64_t{2048}, int64_t{37}})
      weights.push_back(gpu_bf16(randn_bf16_exact({n, 2816}, ++seed, 0.05)));
    const std::vector<Tensor> got = ops::linear_many(x, weights);
    ASSERT_EQ(got.size(), weights.size());
    for (size_t i = 0; i < weights.size(); ++i)
      expect_close_scaled(got[i], ops::linear(x, weights[i]), 0, kBf16Rtol,
                          "linear_many rows=" + std::to_string(rows) + " product " + std::to_string(i));
  }
}

// A projection that joins the residual, with the norms of the sum, in one GEMV launch whose last
// block makes the norms (one row; E2B's, E4B's and 26B-A4B's widths; E4B's per-layer projection's k
// of 256) against the product, then add_rmsnorm_norms: the kernel itself, and the op, which takes it
// with G4_DECODE_NORMS_IN_GEMV=1 and the separate ops otherwise (and always for 31B's width, past
// the norm packs, and for 2, 4 and 9 rows). Each case runs twice: the block counter the first
// launch leaves must be zero again for the second.
TEST(GpuFusedNorms, ProjectionJoiningTheResidualMatchesTheSeparateOps) {
  G4_REQUIRE_GPU();
  uint64_t seed = 80;
  for (const GemvShape c : std::initializer_list<GemvShape>{{1, 2560, 2048},
                                                            {1, 2816, 4096},
                                                            {1, 1536, 6144},
                                                            {1, 2560, 256},
                                                            {2, 1536, 6144},
                                                            {4, 2560, 10240},
                                                            {1, 5376, 1024},
                                                            {9, 256, 64}}) {
    const std::string what =
        "rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k);
    const Tensor x = gpu_bf16(randn_bf16_exact({c.rows, 1, c.k}, ++seed));
    const Tensor wp = gpu_bf16(randn_bf16_exact({c.n, c.k}, ++seed, 0.05));
    const Tensor r = gpu_bf16(randn_bf16_exact({c.rows, 1, c.n}, ++seed));
    const Tensor w = gpu_bf16(randn_bf16_exact({c.n}, ++seed)), w2 = gpu_bf16(randn_bf16_exact({c.n}, ++seed));
    const Tensor w3 = gpu_bf16(randn_bf16_exact({c.n}, ++seed));
    const Tensor product = ops::linear(x, wp);
    for (int run = 0; run < 2; ++run) {
      const std::string tag = what + " run " + std::to_string(run);
      if (ops::cuda::gemv_norms_fit(c.rows, c.n)) {
        Tensor y = Tensor::empty({c.rows, 1, c.n}, DType::BF16, Device::CUDA);
        Tensor h = Tensor::empty({c.rows, 1, c.n}, DType::BF16, Device::CUDA);
        Tensor n1 = Tensor::empty({c.rows, 1, c.n}, DType::BF16, Device::CUDA);
        ops::cuda::gemv_add_rmsnorm_norms(c.rows, c.n, c.k, x.raw(), c.k, wp.raw(), c.k, y.raw(), r.raw(), w.raw(),
                                          h.raw(), {{w2.raw(), n1.raw(), 1.0f}}, static_cast<float>(kEps), 0.37f);
        // The same GEMV as ops::linear at one row: the same sums.
        expect_close_scaled(y, product, 0, 0, "gemv_add_rmsnorm_norms product " + tag);
        expect_close_scaled(h, ops::add_rmsnorm(r, product, w, 0.37, kEps), 0, kBf16Rtol,
                            "gemv_add_rmsnorm_norms h " + tag);
        expect_close_scaled(n1, ops::rmsnorm(h, w2, kEps), 0, kBf16Rtol, "gemv_add_rmsnorm_norms norm " + tag);
      }
      const std::vector<Tensor> outs = ops::linear_add_rmsnorm_norms(x, wp, r, w, kEps, {{w2, 1.0}, {w3, 0.0188}}, 0.37);
      ASSERT_EQ(outs.size(), 3u);
      expect_close_scaled(outs[0], ops::add_rmsnorm(r, product, w, 0.37, kEps), 0, kBf16Rtol,
                          "linear_add_rmsnorm_norms h " + tag);
      // Against the norms of the fused h: a rounding flip of h would otherwise move them too.
      expect_close_scaled(outs[1], ops::rmsnorm(outs[0], w2, kEps), 0, kBf16Rtol, "linear_add_rmsnorm_norms norm " + tag);
      expect_close_scaled(outs[2], ops::scale(ops::rmsnorm(outs[0], w3, kEps), 0.0188), 0, kBf16Rtol,
                          "linear_add_rmsnorm_norms scaled norm " + tag);
      expect_close_scaled(ops::linear_add_rmsnorm_norms(x, wp, r, w, kEps, {})[0], ops::add_rmsnorm(r, product, w, 1.0, kEps),
                          0, kBf16Rtol, "linear_add_rmsnorm_norms, no norms, " + tag);
    }
  }
}

// A paged step's attention inputs in one kernel against the separate ops: q normed and rotated,
// the keys normed, rotated and written into the pages, the values normed and written, at head dims
// 256 and 512 (26B-A4B's sliding and full layers), one token and several, slots that skip a token
// (-1) and a KV-shared layer (no keys: q only, the pages untouched).
TEST(GpuFusedNorms, NormRopeWriteKvMatchesTheSeparateOps) {
  G4_REQUIRE_GPU();
  for (const int64_t d : {int64_t{256}, int64_t{512}}) {
    for (const int64_t T : {int64_t{1}, int64_t{5}}) {
      const int64_t nH = 16, nKV = d == 512 ? 2 : 8, pages = 4, page_size = 4;
      const std::string what = "d=" + std::to_string(d) + " T=" + std::to_string(T);
      const Tensor q = gpu_bf16(randn_bf16_exact({1, T, nH, d}, 11, 2.0));
      const Tensor k = gpu_bf16(randn_bf16_exact({1, T, nKV, d}, 12, 3.0));
      const Tensor v = gpu_bf16(randn_bf16_exact({1, T, nKV, d}, 13, 0.5));
      const Tensor wq = gpu_bf16(randn_bf16_exact({d}, 14)), wk = gpu_bf16(randn_bf16_exact({d}, 15));
      const Tensor pos = positions_of(1, T, DType::I64), freq = inv_freq_of(d);
      std::vector<int64_t> slot_list;
      for (int64_t t = 0; t < T; ++t) slot_list.push_back(t == 1 ? -1 : (7 * t + 3) % (pages * page_size));
      const Tensor slots = Tensor::from_vector(slot_list, {T}).to(Device::CUDA);
      const auto pool = [&](uint64_t seed) { return gpu_bf16(randn_bf16_exact({pages, page_size, nKV, d}, seed)); };
      Tensor k_fused = pool(16), v_fused = pool(17), k_sep = pool(16), v_sep = pool(17);

      const Tensor q_fused = ops::norm_rope_write_kv(q, wq, k, wk, v, pos, freq, kEps, k_fused, v_fused, slots);
      const Tensor q_sep = ops::rmsnorm_rope(q, wq, pos, freq, kEps);
      ops::write_kv_pages(ops::rmsnorm_rope(k, wk, pos, freq, kEps).reshape({T, nKV, d}),
                          ops::rmsnorm(v, Tensor(), kEps).reshape({T, nKV, d}), k_sep, v_sep, slots);
      // q and k run the rmsnorm_rope kernel's own row code: the same bits.
      expect_close_scaled(q_fused, q_sep, 0, 0, "norm_rope_write_kv q " + what);
      expect_close_scaled(k_fused, k_sep, 0, 0, "norm_rope_write_kv k pages " + what);
      expect_close_scaled(v_fused, v_sep, 0, kBf16Rtol, "norm_rope_write_kv v pages " + what);

      // KV-shared: q only; the pages keep what they held.
      Tensor k_kept = pool(18), v_kept = pool(19);
      const Tensor q_only = ops::norm_rope_write_kv(q, wq, Tensor(), Tensor(), Tensor(), pos, freq, kEps, k_kept,
                                                    v_kept, slots);
      expect_close_scaled(q_only, q_sep, 0, 0, "norm_rope_write_kv q only " + what);
      expect_close_scaled(k_kept, pool(18), 0, 0, "norm_rope_write_kv shared layer k pages " + what);
      expect_close_scaled(v_kept, pool(19), 0, 0, "norm_rope_write_kv shared layer v pages " + what);
    }
  }
}

// An MoE router's softmax and top-k in one kernel against softmax_lastdim then router_topk, at
// 26B-A4B's 128 experts and top 8: the same experts, weights equal up to a rounding flip (the
// softmax's fp32 sum runs in another order). The logits are a shuffled ladder 0.05 apart, so no two
// probabilities are within a few bf16 steps and a flip cannot reorder the choice.
TEST(GpuFusedNorms, SoftmaxTopkMatchesTheSeparateOps) {
  G4_REQUIRE_GPU();
  for (const int64_t T : {int64_t{1}, int64_t{7}, int64_t{64}}) {
    const int64_t E = 128, K = 8;
    Tensor logits = Tensor::empty({T, E}, DType::F32);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        logits.data<float>()[t * E + e] = 0.05f * static_cast<float>((e * 37 + t * 11) % E) - 3.0f;
    const Tensor gl = gpu_bf16(logits);
    Tensor w_fused, i_fused, w_sep, i_sep;
    ops::softmax_topk(gl, K, w_fused, i_fused);
    ops::router_topk(ops::softmax_lastdim(gl), K, w_sep, i_sep);
    const std::string what = "softmax_topk T=" + std::to_string(T);
    expect_close_scaled(i_fused.to(DType::F32), i_sep.to(DType::F32), 0, 0, what + " indices");
    expect_close_scaled(w_fused, w_sep, 0, kBf16Rtol, what + " weights");
  }
}

// A bf16 GPU model's logits without gradients, with the fused layer and without: the same up to
// the rounding flips above carried through the layers.
TEST(GpuFusedNorms, ModelLogitsMatchTheSeparateOps) {
  G4_REQUIRE_GPU();
  for (const char* fixture : {"hf-gemma4/tiny-moe", "hf-gemma4/tiny-dense-ple", "hf-gemma4/tiny-dense-keqv"}) {
    const auto cpu = model::load_hf_model(test::data_dir() + "/" + fixture);
    const auto m = cpu->copy_to(Device::CUDA, DType::BF16);
    // [1, 1]: one row, where E4B's per-layer input slice is a view rather than a copy.
    for (const Shape& shape : {Shape{2, 48}, Shape{1, 1}}) {
      model::ForwardInputs in;
      in.input_ids = Tensor::empty(shape, DType::I64);
      for (int64_t i = 0; i < in.input_ids.numel(); ++i) in.input_ids.data<int64_t>()[i] = 3 + (i * 131) % 200;
      const auto logits = [&](bool fused) {
        m->set_fused_inference(fused);
        ag::NoGrad no_grad;
        return m->forward(in).logits.value();
      };
      expect_close_scaled(logits(true), logits(false), 0, 2e-2,
                          std::string("fused vs separate logits, ") + fixture + " " + shape_str(shape));
    }
  }
}

}  // namespace
}  // namespace g4

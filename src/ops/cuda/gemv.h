// Products of a few rows by a weight matrix, y = alpha·x·Wᵀ + beta·y with x [m, k] (m ≤ 8) and
// W [n, k] bf16: what a decode step at small batch computes in every dense projection and the LM
// head. There the whole cost is reading W once, and cuBLASLt's split-K plans for such shapes reach
// about half the copy bandwidth (docs/performance.md, "Generation"), so this kernel streams W in
// 16-byte loads with every row of x applied to each load.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace g4::ops::cuda {

constexpr int64_t kGemvMaxRows = 8;

// Whether gemv_rowmajor takes this product: m in [1, kGemvMaxRows], bf16 x and W, y bf16 or f32,
// k a multiple of 8, and x, W and their row strides 16-byte aligned.
bool gemv_fits(int64_t m, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw, DType ab_dtype,
               DType y_dtype);

// y[i, j] = alpha · Σ_k x[i, k]·w[j, k] + beta · y[i, j] (y not read when beta is 0), for i < m,
// j < n; row strides ldx, ldw, ldy in elements. Needs gemv_fits. fp32 sums, in an order fixed by
// the shape (deterministic). Queued on g4::cuda::stream() (capturable in a CUDA graph).
void gemv_rowmajor(int64_t m, int64_t n, int64_t k, float alpha, const void* x, int64_t ldx, const void* w,
                   int64_t ldw, float beta, void* y, int64_t ldy, DType y_dtype);

// One product of gemv_many: y [m, n] (row stride ldy, bf16) = x·Wᵀ with W [n, k] (row stride ldw).
struct GemvProduct {
  const void* w = nullptr;
  int64_t n = 0, ldw = 0;
  void* y = nullptr;
  int64_t ldy = 0;
};

// Up to 3 products of the same x (bf16, alpha 1, no accumulation) in one launch: a layer's q, k and
// v projections at decode sizes. Each must fit as gemv_rowmajor's W with a bf16 output.
void gemv_many(int64_t m, int64_t k, const void* x, int64_t ldx, const std::vector<GemvProduct>& products);

// y[i, j] = gelu_tanh(g)·u with g = Σ_k x[i, k]·w_gate[j, k] and u likewise with w_up, g and u
// rounded to bf16 first (as two bf16 products and ops::gelu_gate compute it): a gated MLP's first
// half in one pass over both weights. bf16 throughout; both weights must fit as gemv_rowmajor's W.
void gemv_gelu_gate(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w_gate,
                    const void* w_up, int64_t ldw, void* y, int64_t ldy);

// y[i, j] = gelu_tanh(s)·b[i, j] with s = Σ_k x[i, k]·w[j, k], s and the gelu rounded to bf16 first
// (as ops::linear then ops::gelu_tanh_mul compute it; E4B's per-layer input gate); b bf16 with y's
// row stride. W must fit as gemv_rowmajor's, with a bf16 output.
void gemv_gelu_mul(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw,
                   const void* b, void* y, int64_t ldy);

// Whether gemv_add_rmsnorm_norms takes m rows of n elements: one row (a batch-1 decode step, where a
// launch saved is time saved), n a multiple of 8, at most 3072.
bool gemv_norms_fit(int64_t m, int64_t n);

// One norm of gemv_add_rmsnorm_norms: y = rmsnorm(h, w)·scale, [m, n] bf16.
struct GemvNorm {
  const void* w = nullptr;
  void* y = nullptr;
  float scale = 1.f;
};

// y = x·Wᵀ (bf16, [m, n] contiguous), then h = (residual + rmsnorm(y, norm_w))·scale and each norm of h
// as ops::add_rmsnorm_norms computes them (residual and h [m, n] contiguous, at most 3 norms): a
// projection that joins the residual stream and the norms that read it, in one launch, the last
// block to finish making the norms. W must fit as gemv_many's; the rows must fit gemv_norms_fit.
void gemv_add_rmsnorm_norms(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw,
                            void* y, const void* residual, const void* norm_w, void* h,
                            const std::vector<GemvNorm>& norms, float eps, float scale);

// Whether a product of m rows by an [n, k] weight that fits goes to these kernels rather than
// cuBLASLt (the dense GEMMs and the fused decode ops ask). By default where they were faster on an
// H200 (bench_gemv, 2026-12-05, docs/performance.md): 1-2 rows always (1.05-1.8x), 3-4 rows for
// weights up to 16M elements (a layer's projections, 1.2-1.6x; the LM head and the 8192-wide
// projections were 5-25% slower there), never more than 4 rows. G4_DECODE_GEMV=1 takes every
// product that fits, G4_DECODE_GEMV=0 none.
bool gemv_preferred(int64_t m, int64_t n, int64_t k);

}  // namespace g4::ops::cuda

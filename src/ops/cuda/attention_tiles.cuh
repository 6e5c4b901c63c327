// Building blocks of the flash-attention kernels (attention_fwd.cu, attention_bwd.cu): the mask
// description as the kernels evaluate it, cp.async tile loads into padded shared memory, and a
// warp-level bf16 tensor-core GEMM (mma.sync m16n8k16, operands fetched with ldmatrix).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_kernels.h"

namespace g4::ops::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Query i and key j of batch row b belong to the same block (MaskDev::q_block).
__device__ __forceinline__ bool same_block(const MaskDev& m, const Dims& dm, int b, int i, int j) {
  if (m.q_block == nullptr) return false;
  const int32_t qb = m.q_block[static_cast<long long>(b) * dm.sq + i];
  return qb >= 0 && qb == m.k_block[static_cast<long long>(b) * dm.sk + j];
}

// Visibility of key j for query i (both indices within the call) of batch row b.
__device__ __forceinline__ bool visible(const MaskDev& m, const Dims& dm, int b, int i, int j) {
  if (i >= dm.sq || j >= dm.sk) return false;
  const long long qp = m.q_start + i, kp = m.k_start + j;
  if (m.causal) {
    if ((kp > qp && !same_block(m, dm, b, i, j)) || (m.window > 0 && qp - kp >= m.window)) return false;
  } else if (m.window > 0 && (qp - kp >= m.window || kp - qp >= m.window)) {
    return false;
  }
  if (m.key_valid != nullptr && m.key_valid[static_cast<long long>(b) * dm.sk + j] == 0) return false;
  if (m.q_doc != nullptr &&
      m.q_doc[static_cast<long long>(b) * dm.sq + i] != m.k_doc[static_cast<long long>(b) * dm.sk + j])
    return false;
  return true;
}

// The visibility of the accumulator elements one thread holds in an mma / wgmma fragment of NT
// n8 tiles: rows i and i + 8, columns j0 + 8 nt + 2 cq + {0, 1}; bit 4 nt + e for element e (row
// i + 8 (e / 2), column offset e % 2), the fragments' own order. The loop is deliberately not
// unrolled: visible() inlined into every element of an unrolled tile made the kernels too large
// for the instruction cache (the wgmma forward stalled a quarter to half of its cycles fetching
// instructions), while this runs only on the tiles the mask cuts.
template <int NT>
__device__ __forceinline__ uint64_t visible_bits(const MaskDev& m, const Dims& dm, int b, int i, int j0, int cq) {
  static_assert(NT * 4 <= 64, "visible_bits: at most 64 elements a thread");
  uint64_t bits = 0;
#pragma unroll 1
  for (int idx = 0; idx < NT * 4; ++idx) {
    const int e = idx & 3;
    if (visible(m, dm, b, i + (e >= 2 ? 8 : 0), j0 + 8 * (idx >> 2) + 2 * cq + (e & 1))) bits |= uint64_t{1} << idx;
  }
  return bits;
}
__device__ __forceinline__ bool bit_set(uint64_t bits, int idx) { return (bits >> idx) & 1; }

// True when every (query, key) pair of the rectangle [i0, i1] x [j0, j1] (valid indices, i1 < Sq,
// j1 < Sk) passes the positional part of the mask; key_valid and document ids are not covered.
// Blocks only add visible pairs, so a rectangle the causal band covers stays fully visible.
__device__ __forceinline__ bool rect_fully_visible(const MaskDev& m, int i0, int i1, int j0, int j1) {
  const long long qa0 = m.q_start + i0, qa1 = m.q_start + i1, ka0 = m.k_start + j0, ka1 = m.k_start + j1;
  if (m.causal) return ka1 <= qa0 && (m.window == 0 || qa1 - ka0 < m.window);
  if (m.window == 0) return true;
  return qa1 - ka0 < m.window && ka1 - qa0 < m.window;
}

// True when keys [j0, j1] of batch row b are all valid (or there is no key_valid), by a vote of the
// calling warp: every lane of it must call this with the same arguments.
__device__ __forceinline__ bool warp_keys_valid(const MaskDev& m, const Dims& dm, int b, int j0, int j1) {
  if (m.key_valid == nullptr) return true;
  bool valid = true;
  for (int j = j0 + static_cast<int>(threadIdx.x % 32); j <= j1; j += 32)
    valid &= m.key_valid[static_cast<long long>(b) * dm.sk + j] != 0;
  return __all_sync(0xffffffffu, valid);
}

// True when the mask hides nothing in the tile [i0, i1] x [j0, j1] (valid indices, i1 < Sq,
// j1 < Sk) of batch row b, so that it needs no element-wise mask: within the positional band, every
// key valid, and either no documents or, the row's ids sorted (each document contiguous), one
// document for all its queries and keys. In a packed row only the tiles that straddle a document
// boundary are then masked element by element, and with padding (key_valid) only the tiles that
// hold a padded key. Called by whole warps with the same arguments (warp_keys_valid).
__device__ __forceinline__ bool tile_fully_visible(const MaskDev& m, const Dims& dm, int b, int i0, int i1, int j0,
                                                   int j1) {
  if (!rect_fully_visible(m, i0, i1, j0, j1) || !warp_keys_valid(m, dm, b, j0, j1)) return false;
  if (m.q_doc == nullptr) return true;
  if (m.docs_sorted[b] == 0) return false;
  const int32_t* qd = m.q_doc + static_cast<long long>(b) * dm.sq;
  const int32_t* kd = m.k_doc + static_cast<long long>(b) * dm.sk;
  const int32_t doc = qd[i0];
  return qd[i1] == doc && kd[j0] == doc && kd[j1] == doc;
}

__host__ __device__ constexpr long long min_ll(long long x, long long y) { return x < y ? x : y; }
__host__ __device__ constexpr long long max_ll(long long x, long long y) { return x > y ? x : y; }

// Keys [*lo, *hi] (clamped to the call) that queries [i0, i1] may see by position; empty when lo > hi.
__host__ __device__ __forceinline__ void key_range(const MaskDev& m, const Dims& dm, int i0, int i1, int* lo, int* hi) {
  const long long qa0 = m.q_start + i0, qa1 = m.q_start + i1;
  long long l = 0, h = dm.sk - 1;
  if (m.causal) {
    // With blocks a query may see later keys of its block, anywhere after it.
    if (m.q_block == nullptr) h = min_ll(h, qa1 - m.k_start);
    if (m.window > 0) l = max_ll(l, qa0 - m.window + 1 - m.k_start);
  } else if (m.window > 0) {
    l = max_ll(l, qa0 - m.window + 1 - m.k_start);
    h = min_ll(h, qa1 + m.window - 1 - m.k_start);
  }
  *lo = static_cast<int>(min_ll(l, static_cast<long long>(dm.sk)));
  *hi = static_cast<int>(max_ll(h, -1LL));
}

// Queries [*lo, *hi] that may see keys [j0, j1] by position; empty when lo > hi.
__host__ __device__ __forceinline__ void query_range(const MaskDev& m, const Dims& dm, int j0, int j1, int* lo, int* hi) {
  const long long ka0 = m.k_start + j0, ka1 = m.k_start + j1;
  long long l = 0, h = dm.sq - 1;
  if (m.causal) {
    // With blocks a key may be seen by earlier queries of its block.
    if (m.q_block == nullptr) l = max_ll(l, ka0 - m.q_start);
    if (m.window > 0) h = min_ll(h, ka1 + m.window - 1 - m.q_start);
  } else if (m.window > 0) {
    l = max_ll(l, ka0 - m.window + 1 - m.q_start);
    h = min_ll(h, ka1 + m.window - 1 - m.q_start);
  }
  *lo = static_cast<int>(min_ll(l, static_cast<long long>(dm.sq)));
  *hi = static_cast<int>(max_ll(h, -1LL));
}

// First index in [0, n) whose id is >= (upper: >) d, in non-decreasing ids; n when none.
__device__ __forceinline__ int doc_bound(const int32_t* ids, int n, int32_t d, bool upper) {
  int l = 0, r = n;
  while (l < r) {
    const int mid = (l + r) / 2;
    if (upper ? ids[mid] <= d : ids[mid] < d)
      l = mid + 1;
    else
      r = mid;
  }
  return l;
}

// Narrows [*lo, *hi] to the keys of the documents of queries [i0, i1] of batch row b, when the
// row's document ids are sorted (MaskDev::docs_sorted); otherwise leaves it.
__device__ __forceinline__ void doc_key_range(const MaskDev& m, const Dims& dm, int b, int i0, int i1, int* lo,
                                              int* hi) {
  if (m.q_doc == nullptr || m.docs_sorted[b] == 0) return;
  const int32_t* qd = m.q_doc + static_cast<long long>(b) * dm.sq;
  const int32_t* kd = m.k_doc + static_cast<long long>(b) * dm.sk;
  *lo = max(*lo, doc_bound(kd, dm.sk, qd[i0], false));
  *hi = min(*hi, doc_bound(kd, dm.sk, qd[i1], true) - 1);
}

// The same for the queries that keys [j0, j1] of batch row b may be seen by.
__device__ __forceinline__ void doc_query_range(const MaskDev& m, const Dims& dm, int b, int j0, int j1, int* lo,
                                                int* hi) {
  if (m.q_doc == nullptr || m.docs_sorted[b] == 0) return;
  const int32_t* qd = m.q_doc + static_cast<long long>(b) * dm.sq;
  const int32_t* kd = m.k_doc + static_cast<long long>(b) * dm.sk;
  *lo = max(*lo, doc_bound(qd, dm.sq, kd[j0], false));
  *hi = min(*hi, doc_bound(qd, dm.sq, kd[j1], true) - 1);
}

// ---- shared-memory tile loads -------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (src must still be a mapped address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Rows [r0, r0 + ROWS) of one head of a [B, S, heads, dim] bf16 tensor into smem rows of LD
// elements (HD columns). Rows >= S and columns >= dim are zero-filled; dim % 8 == 0.
template <int ROWS, int HD, int LD, int THREADS>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int b, int r0, int S, int heads, int head,
                                          int dim) {
  constexpr int kChunks = HD / 8;
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += THREADS) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const bool ok = r0 + r < S && c < dim;
    const bf16* g = ok ? src + ((static_cast<long long>(b) * S + r0 + r) * heads + head) * dim + c : src;
    cp_async16(dst + r * LD + c, g, ok);
  }
}

// ---- warp-level tensor-core GEMM ------------------------------------------------------------------
//
// mma.m16n8k16 fragments (g = lane / 4, c = lane % 4): A (16x16) a0..a3 hold (g, 2c..2c+1),
// (g+8, 2c..), (g, 2c+8..), (g+8, 2c+8..); B (16x8) b0, b1 hold (k = 2c..2c+1, n = g) and
// (k = 2c+8.., n = g); C (16x8 f32) c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1).

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A fragment of rows [m0, m0+16) x cols [k0, k0+16) of A. A_T: A is stored transposed, as
// At[k][m] with leading dimension lda; otherwise as A[m][k].
template <bool A_T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* sA, int lda, int m0, int k0) {
  const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
  if constexpr (A_T) {
    ldsm_x4_t(a, sA + (k0 + r + 8 * (i >> 1)) * lda + m0 + 8 * (i & 1));
  } else {
    ldsm_x4(a, sA + (m0 + r + 8 * (i & 1)) * lda + k0 + 8 * (i >> 1));
  }
}

// B fragments of two n-tiles [n0, n0+16) x k [k0, k0+16): b[0], b[1] for n-tile n0, b[2], b[3] for
// n0+8. B_T: B is stored as B[k][n] (ldb); otherwise as Bt[n][k] (e.g. K for S = Q Kᵀ).
template <bool B_T>
__device__ __forceinline__ void load_b2(uint32_t (&b)[4], const bf16* sB, int ldb, int n0, int k0) {
  const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
  if constexpr (B_T) {
    ldsm_x4_t(b, sB + (k0 + r + 8 * (i & 1)) * ldb + n0 + 8 * (i >> 1));
  } else {
    ldsm_x4(b, sB + (n0 + r + 8 * (i >> 1)) * ldb + k0 + 8 * (i & 1));
  }
}

// acc[MT][NT] (16x8 tiles) += A[m0 : m0+16MT, k0 : k0+K] * B[k0 : k0+K, n0 : n0+8NT]; NT even.
template <int MT, int NT, int K, bool A_T, bool B_T>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const bf16* sA, int lda, int m0, const bf16* sB,
                                          int ldb, int n0, int k0) {
  static_assert(NT % 2 == 0 && K % 16 == 0, "warp_gemm: NT must be even and K a multiple of 16");
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_a<A_T>(a[mt], sA, lda, m0 + 16 * mt, k0 + kk);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      load_b2<B_T>(b, sB, ldb, n0 + 16 * np, k0 + kk);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_bf16(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma_bf16(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

// ---- online softmax ------------------------------------------------------------------------------

// The maximum for the online softmax: a NaN score makes its row NaN, as in PyTorch (fmaxf would drop
// it and turn a row of NaN scores into one with no visible key).
struct KeepNaN {
  __device__ __forceinline__ float operator()(float a, float b) const { return (a > b || a != a) ? a : b; }
};

// One online-softmax step (FlashAttention-2) for a thread's two accumulator rows (g and g + 8 of
// its warp's 16 rows, CTA rows r_local and r_local + 8; cq = lane % 4): tile_max, the thread's maxima of the
// tile's scores, becomes the rows' maxima over the quad and, when WN warps share the rows, over
// them through sRed ([WN][BM] floats; one barrier, every thread must call); the running maxima and
// sums and the output accumulators are rescaled, and m_use gets what to subtract from the tile's
// scores (0 for a row with nothing visible yet, so that its weights stay 0).
template <int WN, int BM, int NT, class Max>
__device__ __forceinline__ void online_softmax_step(float (&tile_max)[2], float (&row_max)[2], float (&row_sum)[2],
                                                    float (&o)[1][NT][4], float (&m_use)[2], float* sRed, int wn,
                                                    int r_local, int cq, Max mx) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tile_max[r] = mx(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = mx(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
  }
  if constexpr (WN > 1) {
    if (cq == 0) {
      sRed[wn * BM + r_local] = tile_max[0];
      sRed[wn * BM + r_local + 8] = tile_max[1];
    }
    __syncthreads();
#pragma unroll
    for (int w = 0; w < WN; ++w) {
      tile_max[0] = mx(tile_max[0], sRed[w * BM + r_local]);
      tile_max[1] = mx(tile_max[1], sRed[w * BM + r_local + 8]);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = mx(row_max[r], tile_max[r]);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(row_max[r] - m_use[r]);
    row_max[r] = m_new;
    row_sum[r] *= alpha;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      o[0][nt][2 * r] *= alpha;
      o[0][nt][2 * r + 1] *= alpha;
    }
  }
}

// The full softmax sums of a thread's two rows once the key loop is done: row_sum holds this
// thread's columns only; they are added over the quad and, when WN warps share the rows, over them
// through sRed (every thread must call; the leading barrier lets the loop's last reads of sRed
// finish first).
template <int WN, int BM>
__device__ __forceinline__ void total_row_sums(float (&row_sum)[2], float* sRed, int wn, int r_local, int cq) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  if constexpr (WN > 1) {
    __syncthreads();
    if (cq == 0) {
      sRed[wn * BM + r_local] = row_sum[0];
      sRed[wn * BM + r_local + 8] = row_sum[1];
    }
    __syncthreads();
    row_sum[0] = row_sum[1] = 0.f;
#pragma unroll
    for (int w = 0; w < WN; ++w) {
      row_sum[0] += sRed[w * BM + r_local];
      row_sum[1] += sRed[w * BM + r_local + 8];
    }
  }
}

}  // namespace g4::ops::cuda::attn

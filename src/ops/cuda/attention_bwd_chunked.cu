// Attention backward over chunks of keys, with the three gradient products on cuBLASLt.
//
// For head dims above 256 the flash backward (attention_bwd.cu) cannot keep a useful key tile:
// dK and dV for 32 keys x 512 columns already fill half the register file, and dQ leaves each
// (query tile, key tile) pair as f32 atomics. Here the work is split at the one place where it
// is small: P and dS, the only S-shaped intermediates, are written in bf16 (the flash kernel
// rounds them to bf16 before its products too), for one chunk of keys at a time, and the
// products that need the head dim become ordinary tensor-core GEMMs:
//
//   score kernel:  S = Q Kᵀ and dP = dO Vᵀ per 128 x 128 tile on wgmma (the head dim streamed
//                  through shared memory in 64-column steps by TMA), P = exp(scale·S - lse),
//                  dS = P ∘ (dP - D),
//                  written for the chunk's keys against every query that may see them by position;
//                  tiles the mask hides entirely (by position or by document) are written as zeros
//                  without being computed;
//   cuBLASLt:      dV_h = Pᵀ dO and dK_h = dSᵀ Q per query head into f32 chunk buffers (one
//                  launch for all heads), summed over each GQA group when stored in bf16 (dK times
//                  scale);
//                  dq_accum += dS K (f32, scaled and converted once at the end by the caller),
//                  with K repeated per query head once per call under GQA.
//
// The chunk size bounds the workspace (P and dS: heads x queries x chunk bf16 each); S x S is
// never held. Launches per chunk: one score kernel, three batched GEMMs, two stores.
#include <cmath>
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace g4::ops::cuda::attn {

namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 3, kThreads = 256;
constexpr size_t kTileBytes = size_t(kBM) * kBK * 2;  // one SW128 tile: 128 rows x 64 columns
static_assert(kBM == kBN, "the four tiles of a stage share one size");
constexpr size_t kStageBytes = 4 * kTileBytes;          // Q, K, dO, V
// + the stages' mbarriers, and slack to align the stages to 1024 B
constexpr size_t kScoreSmem = kStages * kStageBytes + 64 + 1024;
static_assert(kScoreSmem <= 227 * 1024, "score kernel shared memory");

struct ScoreArgs {
  const bf16 *q, *k, *v, *dout;
  const float *lse, *dsum;
  bf16 *p, *ds;  // [nH][n_q][ldw]: row i - q_lo, column j - k_lo
  int ldw, b, q_lo, n_q, k_lo, n_k;
  Dims dims;
  MaskDev mask;
  float scale_log2;
};

// Zeros for the tile at rows [i0, i_last] x keys [j0, j0 + 128) of one head's P and dS, so that
// the GEMMs may read tiles the mask hides.
__device__ __forceinline__ void store_zero_tile(const ScoreArgs& a, bf16* p_head, bf16* ds_head, int i0, int i_last,
                                                int j0) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int idx = threadIdx.x; idx < kBM * (kBN / 8); idx += kThreads) {
    const int r = idx / (kBN / 8), c = (idx % (kBN / 8)) * 8;
    if (i0 + r > i_last) continue;
    const long long off = static_cast<long long>(i0 + r - a.q_lo) * a.ldw + (j0 - a.k_lo) + c;
    *reinterpret_cast<uint4*>(p_head + off) = zero;
    *reinterpret_cast<uint4*>(ds_head + off) = zero;
  }
}

// P = exp2(S·scale·log2 e - lse·log2 e) and dS = P ∘ (dP - D) of this thread's accumulator
// entries (two rows, 16 column pairs) to global memory. kMask: apply the mask element by element.
template <bool kMask>
__device__ __forceinline__ void store_scores(const ScoreArgs& a, const float (&s_acc)[64], const float (&dp_acc)[64],
                                             const float (&lse2)[2], const float (&dsum)[2], bf16* p_head,
                                             bf16* ds_head, int row0, int i_last, int j0) {
  const int cq = threadIdx.x % 4;
  uint64_t vis = 0;
  if constexpr (kMask) vis = visible_bits<kBN / 8>(a.mask, a.dims, a.b, row0, j0, cq);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    if (i > i_last) continue;
    const long long off = static_cast<long long>(i - a.q_lo) * a.ldw + (j0 - a.k_lo) + 2 * cq;
    uint32_t* prow = reinterpret_cast<uint32_t*>(p_head + off);
    uint32_t* dsrow = reinterpret_cast<uint32_t*>(ds_head + off);
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      float p[2], ds[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        p[e] = exp2f(s_acc[4 * nt + 2 * r + e] * a.scale_log2 - lse2[r]);
        if constexpr (kMask) {
          if (!bit_set(vis, 4 * nt + 2 * r + e)) p[e] = 0.f;
        }
        ds[e] = p[e] * (dp_acc[4 * nt + 2 * r + e] - dsum[r]);
      }
      prow[nt * 4] = pack_bf16(p[0], p[1]);  // 8 bf16 columns = 4 words per n-tile
      dsrow[nt * 4] = pack_bf16(ds[0], ds[1]);
    }
  }
}

struct ScoreMaps {
  CUtensorMap q, k, v, dout;  // boxes of 128 rows x 64 columns: one tile
};

// One CTA: queries [i0, i0 + 128) x keys [j0, j0 + 128) of one query head. Two warpgroups, each
// 64 query rows of S and of dP (wgmma m64n128k16, 2 x 64 fp32 registers per thread); the head dim
// streams through 3 stages of 64 columns, each stage's four tiles loaded by four TMA copies that
// complete on one mbarrier. (Loading the same tiles with cp.async, 4 096 16-byte copies per stage,
// took 7.1 ms instead of 3.8 on S 8192; sharing each load between two CTAs of a 2 x 2 cluster
// with TMA multicast took 5.6: its per-step cluster barrier costs more than the halved L2 reads
// save.) Tiles the mask hides entirely are written as zeros without a load.
__global__ void __launch_bounds__(kThreads, 1) score_kernel(const __grid_constant__ ScoreMaps maps, ScoreArgs a) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  const Dims& dm = a.dims;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4;
  const int wg = warp / 4, wq = warp % 4;
  const int h = blockIdx.z, kvh = h / dm.group, b = a.b;
  const int j0 = a.k_lo + blockIdx.x * kBN, i0 = a.q_lo + blockIdx.y * kBM;
  const int i_last = min(i0 + kBM, a.q_lo + a.n_q) - 1, j_last = min(j0 + kBN, a.k_lo + a.n_k) - 1;
  bf16* p_head = a.p + static_cast<long long>(h) * a.n_q * a.ldw;
  bf16* ds_head = a.ds + static_cast<long long>(h) * a.n_q * a.ldw;

  int lo, hi;
  key_range(a.mask, dm, i0, i_last, &lo, &hi);
  doc_key_range(a.mask, dm, b, i0, i_last, &lo, &hi);
  if (lo > hi || j_last < lo || j0 > hi) {
    store_zero_tile(a, p_head, ds_head, i0, i_last, j0);
    return;
  }

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) tma::mbar_init(&full[s]);
    tma::fence_mbar_init();
  }
  __syncthreads();

  auto tile = [&](int buf, int which) {
    return reinterpret_cast<bf16*>(smem + buf * kStageBytes + which * kTileBytes);
  };
  auto issue = [&](int t, int buf) {  // step t: head-dim columns [64 t, 64 t + 64)
    if (tid != 0) return;
    const int c0 = t * kBK;
    const bool s_step = c0 < dm.d, dp_step = c0 < dm.dv;
    tma::mbar_expect_bytes(&full[buf], (s_step + dp_step) * 2 * static_cast<uint32_t>(kTileBytes));
    if (s_step) {
      tma::load(tile(buf, 0), maps.q, c0, h, i0, b, &full[buf]);
      tma::load(tile(buf, 1), maps.k, c0, kvh, j0, b, &full[buf]);
    }
    if (dp_step) {
      tma::load(tile(buf, 2), maps.dout, c0, h, i0, b, &full[buf]);
      tma::load(tile(buf, 3), maps.v, c0, kvh, j0, b, &full[buf]);
    }
  };
  const int n_steps = ((dm.d > dm.dv ? dm.d : dm.dv) + kBK - 1) / kBK;
  for (int s = 0; s < kStages - 1 && s < n_steps; ++s) issue(s, s);

  // Softmax statistics of this thread's two rows (read while the first stages land).
  const int a_row0 = wg * 64, row0 = i0 + a_row0 + wq * 16 + g;
  const long long lse_row0 = (static_cast<long long>(b) * dm.heads + h) * dm.sq;
  float lse2[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    const float l = i <= i_last ? a.lse[lse_row0 + i] : -INFINITY;
    // A row that saw no key (lse = -inf) gets P = 0: exp2(x - inf) = 0.
    lse2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
    dsum[r] = i <= i_last ? a.dsum[lse_row0 + i] : 0.f;
  }

  float s_acc[64], dp_acc[64];
#pragma unroll
  for (int e = 0; e < 64; ++e) s_acc[e] = dp_acc[e] = 0.f;
#pragma unroll 1
  for (int t = 0; t < n_steps; ++t) {
    // Every warp is done with step t - 1, so its buffer may be refilled for step t + kStages - 1.
    if (t > 0) __syncthreads();
    if (t + kStages - 1 < n_steps) issue(t + kStages - 1, (t + kStages - 1) % kStages);
    const int buf = t % kStages;
    tma::mbar_wait(&full[buf], static_cast<uint32_t>((t / kStages) & 1));
    wgmma::fence();
    if (t * kBK < dm.d) {
      const uint64_t dq = wgmma::sw128_desc(tile(buf, 0) + a_row0 * kBK), dk = wgmma::sw128_desc(tile(buf, 1));
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        wgmma::mma_m64n128k16(s_acc, wgmma::advance(dq, 32 * kk), wgmma::advance(dk, 32 * kk));
    }
    if (t * kBK < dm.dv) {
      const uint64_t ddo = wgmma::sw128_desc(tile(buf, 2) + a_row0 * kBK), dv = wgmma::sw128_desc(tile(buf, 3));
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        wgmma::mma_m64n128k16(dp_acc, wgmma::advance(ddo, 32 * kk), wgmma::advance(dv, 32 * kk));
    }
    wgmma::commit();
    wgmma::wait<0>();
  }

  const bool need_mask = j0 + kBN > dm.sk || !tile_fully_visible(a.mask, dm, a.b, i0, i_last, j0, j_last);
  if (need_mask)
    store_scores<true>(a, s_acc, dp_acc, lse2, dsum, p_head, ds_head, row0, i_last, j0);
  else
    store_scores<false>(a, s_acc, dp_acc, lse2, dsum, p_head, ds_head, row0, i_last, j0);
}

// dst[b, k_lo + r, kvh, c] = bf16(scale · Σ_j part[kvh·group + j][r][c]) for the chunk's n_k keys:
// the per-query-head products of a GQA group summed in f32. part rows are `kc` apart per head; two
// columns per thread (width % 8 == 0).
__global__ void store_chunk_kernel(const float* __restrict__ part, bf16* __restrict__ dst, int b, int k_lo, int n_k,
                                   int kc, int kv_heads, int group, int width, int sk, float scale) {
  const long long pairs = static_cast<long long>(kv_heads) * n_k * (width / 2);
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < pairs;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(e % (width / 2)) * 2;
    const long long row = e / (width / 2);
    const int r = static_cast<int>(row % n_k), kvh = static_cast<int>(row / n_k);
    float2 sum = make_float2(0.f, 0.f);
    for (int j = 0; j < group; ++j) {
      const float2 x = *reinterpret_cast<const float2*>(
          part + ((static_cast<long long>(kvh) * group + j) * kc + r) * width + c);
      sum.x += x.x;
      sum.y += x.y;
    }
    *reinterpret_cast<__nv_bfloat162*>(dst + ((static_cast<long long>(b) * sk + k_lo + r) * kv_heads + kvh) * width +
                                       c) = __floats2bfloat162_rn(sum.x * scale, sum.y * scale);
  }
}

void store_chunk(const Tensor& part, bf16* dst, int b, int k_lo, int n_k, int kc, const Dims& dm, int width,
                 float scale) {
  const long long pairs = static_cast<long long>(dm.kv_heads) * n_k * (width / 2);
  const long long capped = pairs < (1LL << 22) ? pairs : (1LL << 22);
  store_chunk_kernel<<<g4::cuda::blocks_for(capped, 256), 256, 0, g4::cuda::stream()>>>(
      part.data<float>(), dst, b, k_lo, n_k, kc, dm.kv_heads, dm.group, width, dm.sk, scale);
  G4_CUDA_CHECK_LAUNCH();
}

// dst[b, s, h, :] = k[b, s, h / group, :] for [B, Sk, nKV, d] k; 16 bytes per thread.
__global__ void repeat_kv_heads_kernel(const uint4* __restrict__ k, uint4* __restrict__ dst, long long rows, int heads,
                                       int group, int vecs_per_row) {
  const long long n = rows * heads * vecs_per_row;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(e % vecs_per_row);
    const long long rh = e / vecs_per_row;
    const int h = static_cast<int>(rh % heads);
    const long long row = rh / heads;
    dst[e] = k[(row * (heads / group) + h / group) * vecs_per_row + c];
  }
}

void repeat_kv_heads(const bf16* k, bf16* dst, const Dims& dm) {
  const long long rows = static_cast<long long>(dm.batch) * dm.sk, n = rows * dm.heads * (dm.d / 8);
  const long long capped = n < (1LL << 22) ? n : (1LL << 22);
  repeat_kv_heads_kernel<<<g4::cuda::blocks_for(capped, 256), 256, 0, g4::cuda::stream()>>>(
      reinterpret_cast<const uint4*>(k), reinterpret_cast<uint4*>(dst), rows, dm.heads, dm.group, dm.d / 8);
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace

int default_key_chunk(const Dims& dm, long long window) {
  // P and dS together take heads x Sq x chunk x 4 bytes: up to 1 GiB, in 128-key steps, at most
  // 2048 keys (1024 under a sliding window). Every chunk reads and writes the f32 dq_accum rows its
  // keys reach, so halving the chunk doubles that traffic. d 512, 16 heads, on an H100: S 8192 in
  // 512-key chunks 8.9 ms, 1024 7.6, 2048 7.5, 4096 7.7; S 4096 with 5 documents and 8 heads, 1024
  // 1.13 ms, 2048 1.04. Under a window a chunk's products also cover the queries of the window
  // before its keys, which wider chunks add to (the bench times narrower ones there).
  const long long budget = 1LL << 30, per_key = 4LL * dm.heads * (dm.sq > 0 ? dm.sq : 1);
  long long kc = budget / per_key / kBN * kBN;
  const long long most = window > 0 ? 1024 : 2048;
  if (kc < kBN) kc = kBN;
  if (kc > most) kc = most;
  const long long sk_tiles = (static_cast<long long>(dm.sk) + kBN - 1) / kBN * kBN;
  if (kc > sk_tiles) kc = sk_tiles > 0 ? sk_tiles : kBN;
  return static_cast<int>(kc);
}

void backward_chunked(const BwdArgs& a, int key_chunk) {
  const Dims& dm = a.dims;
  G4_CHECK(key_chunk > 0 && key_chunk % kBN == 0, "attention_backward: the key chunk must be a positive multiple of ",
           kBN, ", got ", key_chunk);
  g4::cuda::allow_dynamic_smem<score_kernel>(kScoreSmem);
  ScoreMaps maps;
  maps.q = tma::head_rows_map(a.q, dm.batch, dm.sq, dm.heads, dm.d, kBM);
  maps.k = tma::head_rows_map(a.k, dm.batch, dm.sk, dm.kv_heads, dm.d, kBN);
  maps.v = tma::head_rows_map(a.v, dm.batch, dm.sk, dm.kv_heads, dm.dv, kBN);
  maps.dout = tma::head_rows_map(a.dout, dm.batch, dm.sq, dm.heads, dm.dv, kBM);
  const int kc = key_chunk, G = dm.group;
  Tensor p_ws = Tensor::empty({static_cast<int64_t>(dm.heads) * dm.sq * kc}, DType::BF16, Device::CUDA);
  Tensor ds_ws = Tensor::empty(p_ws.shape(), DType::BF16, Device::CUDA);
  // Per query head: dK and dV of the chunk's keys before the GQA group is summed.
  Tensor dk_part = Tensor::empty({dm.heads, kc, dm.d}, DType::F32, Device::CUDA);
  Tensor dv_part = Tensor::empty({dm.heads, kc, dm.dv}, DType::F32, Device::CUDA);
  auto* p = static_cast<bf16*>(p_ws.raw());
  auto* ds = static_cast<bf16*>(ds_ws.raw());
  // K with each kv head repeated for its query heads, so that dQ is one GEMM batched over query
  // heads (a strided batch cannot map query head h to kv head h / G).
  Tensor k_repeated;
  const bf16* k_per_head = a.k;
  if (G > 1) {
    k_repeated = Tensor::empty({dm.batch, dm.sk, dm.heads, dm.d}, DType::BF16, Device::CUDA);
    repeat_kv_heads(a.k, static_cast<bf16*>(k_repeated.raw()), dm);
    k_per_head = static_cast<const bf16*>(k_repeated.raw());
  }

  for (int b = 0; b < dm.batch; ++b) {
    for (int k_lo = 0; k_lo < dm.sk; k_lo += kc) {
      const int n_k = dm.sk - k_lo < kc ? dm.sk - k_lo : kc;
      int q_lo, q_hi;
      query_range(a.mask, dm, k_lo, k_lo + n_k - 1, &q_lo, &q_hi);
      const int n_q = q_lo <= q_hi ? q_hi - q_lo + 1 : 0;
      if (n_q == 0) {  // no query sees these keys: their gradients are zero
        G4_CUDA_CHECK(cudaMemsetAsync(dk_part.raw(), 0, dk_part.nbytes(), g4::cuda::stream()));
        G4_CUDA_CHECK(cudaMemsetAsync(dv_part.raw(), 0, dv_part.nbytes(), g4::cuda::stream()));
      } else {
        ScoreArgs s{};
        s.q = a.q;
        s.k = a.k;
        s.v = a.v;
        s.dout = a.dout;
        s.lse = a.lse;
        s.dsum = a.dsum;
        s.p = p;
        s.ds = ds;
        s.ldw = kc;
        s.b = b;
        s.q_lo = q_lo;
        s.n_q = n_q;
        s.k_lo = k_lo;
        s.n_k = n_k;
        s.dims = dm;
        s.mask = a.mask;
        s.scale_log2 = a.scale_log2;
        const dim3 grid((n_k + kBN - 1) / kBN, (n_q + kBM - 1) / kBM, dm.heads);
        score_kernel<<<grid, kThreads, kScoreSmem, g4::cuda::stream()>>>(maps, s);
        G4_CUDA_CHECK_LAUNCH();

        const long long head_ws = static_cast<long long>(n_q) * kc;  // P / dS elements per query head
        const long long q_row = (static_cast<long long>(b) * dm.sq + q_lo) * dm.heads;
        // Per query head h: dV_h (n_k x dv) = P_hᵀ dO_h and dK_h (n_k x d) = dS_hᵀ Q_h, batched over heads.
        gemm_rowmajor_batched(true, false, n_k, dm.dv, n_q, 1.f, p, kc, head_ws, a.dout + q_row * dm.dv,
                              static_cast<long long>(dm.heads) * dm.dv, dm.dv, DType::BF16, 0.f, dv_part.raw(), dm.dv,
                              static_cast<long long>(kc) * dm.dv, DType::F32, dm.heads);
        gemm_rowmajor_batched(true, false, n_k, dm.d, n_q, 1.f, ds, kc, head_ws, a.q + q_row * dm.d,
                              static_cast<long long>(dm.heads) * dm.d, dm.d, DType::BF16, 0.f, dk_part.raw(), dm.d,
                              static_cast<long long>(kc) * dm.d, DType::F32, dm.heads);
        // dq_accum[h] (n_q x d) += dS_h K[h / G], batched over query heads.
        const bf16* k_rows = k_per_head + (static_cast<long long>(b) * dm.sk + k_lo) * dm.heads * dm.d;
        gemm_rowmajor_batched(false, false, n_q, dm.d, n_k, 1.f, ds, kc, head_ws, k_rows,
                              static_cast<long long>(dm.heads) * dm.d, dm.d, DType::BF16, 1.f,
                              a.dq_accum + q_row * dm.d, static_cast<long long>(dm.heads) * dm.d, dm.d, DType::F32,
                              dm.heads);
      }
      store_chunk(dk_part, a.dk, b, k_lo, n_k, kc, dm, dm.d, a.scale);
      store_chunk(dv_part, a.dv, b, k_lo, n_k, kc, dm, dm.dv, 1.f);
    }
  }
}

}  // namespace g4::ops::cuda::attn

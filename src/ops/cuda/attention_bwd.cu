// Flash-attention backward (FlashAttention-2's algorithm) for bf16 inputs, fp32 accumulation.
//
// With P = exp(scale·QKᵀ - lse) recomputed from the forward's lse and D = rowsum(dO ∘ O):
//   dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ - D),  dK = scale·dSᵀ Q,  dQ = scale·dS K.
// One CTA (8 warps) owns BN keys of one (batch, kv head) and loops over every query head of its
// GQA group and every query tile that can see its keys (tiles outside the causal / window band
// are skipped), so dK and dV of the group are summed in registers without races and written once.
// dQ is produced per (query tile, key tile) and added to an f32 buffer with vector atomics.
// Q, dO (and the per-row lse, D) of a query tile go to shared memory with cp.async, two stages
// when they fit (the next tile loads during the whole of this tile's work), one otherwise (then
// the next load overlaps the dQ product); K and V stay in shared memory for the whole CTA.
//
// Warp layouts (8 warps), all from shared-memory operands through ldmatrix:
//   S = Q Kᵀ and dP = dO Vᵀ  [BM x BN]: 4 x 2 warps of 16 x BN/2;
//   dV, dK                   [BN x HD]: BN/16 x (8 / (BN/16)) warps, accumulated in registers;
//   dQ                       [BM x HD]: 4 x 2 warps, computed 64 columns at a time.
// HD = 256: BN = BM = 64, dK + dV take 2 x 64 fp32 registers per thread, 2 stages (217 KiB smem).
// HD = 512: BN = 32 (dK + dV again 2 x 64 registers per thread), BM = 64, 1 stage (206 KiB).
#include "ops/cuda/attention_kernels.h"

#include <cmath>

#include "core/cuda/runtime.h"
#include "ops/cuda/attention_tiles.cuh"

namespace g4::ops::cuda::attn {

namespace {

template <int HD_, int BM_, int BN_, int STAGES_>
struct BwdCfg {
  static constexpr int HD = HD_, BM = BM_, BN = BN_, STAGES = STAGES_;
  static constexpr int kThreads = 256;
  static constexpr int LD = HD + 8, LDS = BN + 8;
  // S / dP
  static constexpr int WS_M = BM / 16, WS_N = 8 / WS_M, NT_S = BN / WS_N / 8;
  // dK / dV
  static constexpr int WKV_M = BN / 16, WKV_N = 8 / WKV_M, NT_KV = HD / WKV_N / 8;
  // dQ
  static constexpr int WQ_M = BM / 16, WQ_N = 8 / WQ_M, Q_COLS = HD / WQ_N, Q_CH = Q_COLS < 64 ? Q_COLS : 64,
                       NT_Q = Q_CH / 8;
  static_assert(WS_M * WS_N == 8 && WKV_M * WKV_N == 8 && WQ_M * WQ_N == 8, "8 warps");
  static_assert(NT_S % 2 == 0 && NT_KV % 2 == 0 && NT_Q % 2 == 0 && Q_COLS % Q_CH == 0, "n-tile pairs");
  static constexpr size_t kTile = size_t(BM) * LD * 2;  // one Q or dO tile
  static constexpr size_t kOffV = size_t(BN) * LD * 2, kOffQ = 2 * kOffV, kOffdO = kOffQ + STAGES * kTile,
                          kOffP = kOffdO + STAGES * kTile, kOffdS = kOffP + size_t(BM) * LDS * 2,
                          kOffLse = kOffdS + size_t(BM) * LDS * 2, kOffD = kOffLse + size_t(STAGES) * BM * 4,
                          kSmem = kOffD + size_t(STAGES) * BM * 4;
};

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) bwd_kernel(BwdArgs a) {
  constexpr int HD = C::HD, BM = C::BM, BN = C::BN, LD = C::LD, LDS = C::LDS, STAGES = C::STAGES;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = reinterpret_cast<bf16*>(smem + C::kOffV);
  bf16* sP = reinterpret_cast<bf16*>(smem + C::kOffP);
  bf16* sdS = reinterpret_cast<bf16*>(smem + C::kOffdS);

  const Dims& dm = a.dims;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, cq = lane % 4;
  const int k0 = blockIdx.x * BN;  // early key tiles see the most queries (causal): they come first
  const int b = blockIdx.y / dm.kv_heads, kvh = blockIdx.y % dm.kv_heads;
  const int k_last = min(k0 + BN, dm.sk) - 1;

  int qlo, qhi;
  query_range(a.mask, dm, k0, k_last, &qlo, &qhi);
  doc_query_range(a.mask, dm, b, k0, k_last, &qlo, &qhi);
  const int qt_begin = qlo <= qhi ? qlo / BM : 0, n_qt = qlo <= qhi ? qhi / BM + 1 - qt_begin : 0;
  const int items = n_qt * dm.group;

  // Item it = (query head, query tile) -> stage buffers.
  auto load_item = [&](int it, int buf) {
    const int h = kvh * dm.group + it / n_qt, q0 = (qt_begin + it % n_qt) * BM;
    load_tile<BM, HD, LD, C::kThreads>(reinterpret_cast<bf16*>(smem + C::kOffQ + buf * C::kTile), a.q, b, q0, dm.sq,
                                       dm.heads, h, dm.d);
    load_tile<BM, HD, LD, C::kThreads>(reinterpret_cast<bf16*>(smem + C::kOffdO + buf * C::kTile), a.dout, b, q0,
                                       dm.sq, dm.heads, h, dm.dv);
    if (tid < 2 * BM) {
      const int r = tid % BM;
      const float* src = (tid < BM ? a.lse : a.dsum) + (static_cast<long long>(b) * dm.heads + h) * dm.sq;
      float* dst = reinterpret_cast<float*>(smem + (tid < BM ? C::kOffLse : C::kOffD)) + buf * BM + r;
      const bool ok = q0 + r < dm.sq;
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)),
                   "l"(ok ? src + q0 + r : src), "r"(ok ? 4 : 0));
    }
  };

  load_tile<BN, HD, LD, C::kThreads>(sK, a.k, b, k0, dm.sk, dm.kv_heads, kvh, dm.d);
  load_tile<BN, HD, LD, C::kThreads>(sV, a.v, b, k0, dm.sk, dm.kv_heads, kvh, dm.dv);
  if (items > 0) load_item(0, 0);
  cp_async_commit();

  float dk[1][C::NT_KV][4], dv[1][C::NT_KV][4];
  zero_acc(dk);
  zero_acc(dv);
  const int wsm = warp % C::WS_M, wsn = warp / C::WS_M;
  const int wkm = warp % C::WKV_M, wkn = warp / C::WKV_M;
  const int wqm = warp % C::WQ_M, wqn = warp / C::WQ_M;
  const int s_col0 = wsn * (BN / C::WS_N);

  for (int it = 0; it < items; ++it) {
    const int buf = STAGES == 2 ? it % 2 : 0;
    const int h = kvh * dm.group + it / n_qt, q0 = (qt_begin + it % n_qt) * BM;
    const bf16* sQ = reinterpret_cast<const bf16*>(smem + C::kOffQ + buf * C::kTile);
    const bf16* sdO = reinterpret_cast<const bf16*>(smem + C::kOffdO + buf * C::kTile);
    const float* sLse = reinterpret_cast<const float*>(smem + C::kOffLse) + buf * BM;
    const float* sD = reinterpret_cast<const float*>(smem + C::kOffD) + buf * BM;
    cp_async_wait<0>();
    __syncthreads();  // item `it` landed; every warp is done with item it - 1
    if constexpr (STAGES == 2) {
      if (it + 1 < items) load_item(it + 1, (it + 1) % 2);
      cp_async_commit();
    }

    // S and dP for this warp's 16 x BN/2 block, then P and dS into shared memory.
    {
      float s[1][C::NT_S][4], dp[1][C::NT_S][4];
      zero_acc(s);
      zero_acc(dp);
      warp_gemm<1, C::NT_S, HD, false, false>(s, sQ, LD, wsm * 16, sK, LD, s_col0, 0);
      warp_gemm<1, C::NT_S, HD, false, false>(dp, sdO, LD, wsm * 16, sV, LD, s_col0, 0);
      const int q_last = min(q0 + BM, dm.sq) - 1;
      const bool need_mask = k0 + BN > dm.sk || !tile_fully_visible(a.mask, dm, b, q0, q_last, k0, k_last);
      float lse2[2], dsum[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int il = wsm * 16 + g + 8 * r;
        const float l = sLse[il];
        // A row that saw no key (lse = -inf) or lies past Sq gets P = 0: exp2(x - inf) = 0.
        lse2[r] = (l == -INFINITY || q0 + il >= dm.sq) ? INFINITY : l * kLog2e;
        dsum[r] = sD[il];
      }
      const uint64_t vis = need_mask ? visible_bits<C::NT_S>(a.mask, dm, b, q0 + wsm * 16 + g, k0 + s_col0, cq) : 0;
#pragma unroll
      for (int nt = 0; nt < C::NT_S; ++nt) {
        float p[4], ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          p[e] = exp2f(s[0][nt][e] * a.scale_log2 - lse2[r]);
          if (need_mask && !bit_set(vis, 4 * nt + e)) p[e] = 0.f;
          ds[e] = p[e] * (dp[0][nt][e] - dsum[r]);
        }
        const int row = wsm * 16 + g, col = s_col0 + nt * 8 + 2 * cq;
        *reinterpret_cast<uint32_t*>(sP + row * LDS + col) = pack_bf16(p[0], p[1]);
        *reinterpret_cast<uint32_t*>(sP + (row + 8) * LDS + col) = pack_bf16(p[2], p[3]);
        *reinterpret_cast<uint32_t*>(sdS + row * LDS + col) = pack_bf16(ds[0], ds[1]);
        *reinterpret_cast<uint32_t*>(sdS + (row + 8) * LDS + col) = pack_bf16(ds[2], ds[3]);
      }
    }
    __syncthreads();  // P and dS complete

    warp_gemm<1, C::NT_KV, BM, true, true>(dv, sP, LDS, wkm * 16, sdO, LD, wkn * (HD / C::WKV_N), 0);
    warp_gemm<1, C::NT_KV, BM, true, true>(dk, sdS, LDS, wkm * 16, sQ, LD, wkn * (HD / C::WKV_N), 0);

    if constexpr (STAGES == 1) {
      __syncthreads();  // Q and dO of this item are no longer read
      if (it + 1 < items) load_item(it + 1, 0);
      cp_async_commit();
    }

    // dQ += dS K for this warp's 16 rows, Q_CH columns at a time.
#pragma unroll 1
    for (int c0 = wqn * C::Q_COLS; c0 < (wqn + 1) * C::Q_COLS; c0 += C::Q_CH) {
      float dq[1][C::NT_Q][4];
      zero_acc(dq);
      warp_gemm<1, C::NT_Q, BN, false, true>(dq, sdS, LDS, wqm * 16, sK, LD, c0, 0);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = q0 + wqm * 16 + g + 8 * r;
        if (i >= dm.sq) continue;
        float* row = a.dq_accum + ((static_cast<long long>(b) * dm.sq + i) * dm.heads + h) * dm.d;
#pragma unroll
        for (int nt = 0; nt < C::NT_Q; ++nt) {
          const int col = c0 + nt * 8 + 2 * cq;
          if (col < dm.d)
            atomicAdd(reinterpret_cast<float2*>(row + col), make_float2(dq[0][nt][2 * r], dq[0][nt][2 * r + 1]));
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = k0 + wkm * 16 + g + 8 * r;
    if (j >= dm.sk) continue;
    bf16* dkrow = a.dk + ((static_cast<long long>(b) * dm.sk + j) * dm.kv_heads + kvh) * dm.d;
    bf16* dvrow = a.dv + ((static_cast<long long>(b) * dm.sk + j) * dm.kv_heads + kvh) * dm.dv;
#pragma unroll
    for (int nt = 0; nt < C::NT_KV; ++nt) {
      const int col = wkn * (HD / C::WKV_N) + nt * 8 + 2 * cq;
      if (col < dm.d)
        *reinterpret_cast<__nv_bfloat162*>(dkrow + col) =
            __floats2bfloat162_rn(dk[0][nt][2 * r] * a.scale, dk[0][nt][2 * r + 1] * a.scale);
      if (col < dm.dv)
        *reinterpret_cast<__nv_bfloat162*>(dvrow + col) = __floats2bfloat162_rn(dv[0][nt][2 * r], dv[0][nt][2 * r + 1]);
    }
  }
}

template <class C>
void launch_bwd(const BwdArgs& a) {
  g4::cuda::allow_dynamic_smem<bwd_kernel<C>>(C::kSmem);
  const dim3 grid((a.dims.sk + C::BN - 1) / C::BN, a.dims.batch * a.dims.kv_heads);
  bwd_kernel<C><<<grid, C::kThreads, C::kSmem, g4::cuda::stream()>>>(a);
  G4_CUDA_CHECK_LAUNCH();
}

// One warp per (b, s, h) row.
__global__ void dsum_kernel(const bf16* dout, const bf16* out, float* dsum, Dims dm) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const long long rows = static_cast<long long>(dm.batch) * dm.sq * dm.heads;
  if (row >= rows) return;
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(dout + row * dm.dv);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(out + row * dm.dv);
  float acc = 0.f;
  for (int c = lane; c < dm.dv / 2; c += 32) {
    const float2 xf = __bfloat1622float2(x[c]), yf = __bfloat1622float2(y[c]);
    acc += xf.x * yf.x + xf.y * yf.y;
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    const long long h = row % dm.heads, s = (row / dm.heads) % dm.sq, bb = row / (static_cast<long long>(dm.heads) * dm.sq);
    dsum[(bb * dm.heads + h) * dm.sq + s] = acc;
  }
}

__global__ void dq_convert_kernel(const float* src, bf16* dst, long long n, float scale) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16(src[i] * scale);
}

}  // namespace

void backward_dsum(const bf16* dout, const bf16* out, float* dsum, const Dims& dims) {
  const long long rows = static_cast<long long>(dims.batch) * dims.sq * dims.heads;
  if (rows == 0) return;
  dsum_kernel<<<g4::cuda::blocks_for(rows * 32, 256), 256, 0, g4::cuda::stream()>>>(dout, out, dsum, dims);
  G4_CUDA_CHECK_LAUNCH();
}

void backward(const BwdArgs& a, BackwardKernel kernel, int key_chunk) {
  if (kernel == BackwardKernel::automatic)
    kernel = automatic_backward_kernel(a.dims.d, a.dims.dv, a.mask.window, a.dims.sk);
  if (kernel == BackwardKernel::key_chunked) {
    backward_chunked(a, key_chunk > 0 ? key_chunk : default_key_chunk(a.dims, a.mask.window));
  } else {
    backward_flash(a);
  }
}

void backward_flash(const BwdArgs& a) {
  const int hd = a.dims.d > a.dims.dv ? a.dims.d : a.dims.dv;
  if (hd <= 64) {
    launch_bwd<BwdCfg<64, 64, 64, 2>>(a);
  } else if (hd <= 128) {
    launch_bwd<BwdCfg<128, 64, 64, 2>>(a);
  } else if (hd <= 256) {
    launch_bwd<BwdCfg<256, 64, 64, 2>>(a);
  } else {
    launch_bwd<BwdCfg<512, 64, 32, 1>>(a);
  }
}

void backward_dq_convert(const float* dq_accum, bf16* dq, long long n, float scale) {
  if (n == 0) return;
  const long long capped = n < (1LL << 24) ? n : (1LL << 24);
  dq_convert_kernel<<<g4::cuda::blocks_for(capped, 256), 256, 0, g4::cuda::stream()>>>(dq_accum, dq, n, scale);
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace g4::ops::cuda::attn

namespace g4::ops::cuda {

// Above 256 the flash backward's dK/dV tiles no longer fit the registers (docs/performance.md:
// d 512 at S 8192, 27.9 against 7.7 ms). At 256 the chunked one wins unless a sliding window of at
// most a quarter of the keys leaves most of each chunk's query x key rectangle hidden; there the two
// tie alone (S 4096, window 1024) or the flash one wins (S 8192: 7%), and a training step with
// packed documents measured the flash one 1-2% faster (2026-11-23). Below 256 the flash one runs.
BackwardKernel automatic_backward_kernel(int64_t d, int64_t dv, int64_t window, int64_t sk) {
  const int64_t hd = d > dv ? d : dv;
  const bool narrow_window = window > 0 && 4 * window <= sk;
  return hd > 256 || (hd == 256 && !narrow_window) ? BackwardKernel::key_chunked : BackwardKernel::flash;
}

}  // namespace g4::ops::cuda

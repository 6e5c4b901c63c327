// Flash-attention forward (FlashAttention-2 schedule) for bf16 q/k/v with fp32 accumulation.
//
// One CTA owns BM query rows of one (batch, head) and walks the key tiles its rows may see
// (tiles wholly outside the causal / sliding-window band are never visited), keeping a running
// row max and row sum (online softmax) and the output accumulator in registers. Q stays in shared
// memory for the whole CTA; K and V of the current key tile have one buffer each, so V is loaded
// while S = Q Kᵀ is computed and the next K while O += P V is computed (cp.async).
//
// Warps form a WM x WN grid: warp (wm, wn) owns query rows [16 wm, 16 wm + 16), key columns
// [wn BN/WN, (wn+1) BN/WN) of S and output columns [wn HD/WN, (wn+1) HD/WN) of O.
//  * HD <= 256: WN = 1 (8 warps x 16 rows = 128 rows), the classic FA2 layout: P never leaves
//    the registers (the S accumulator is re-packed as the A operand of P V). O takes
//    16 x 256 / 32 = 128 fp32 registers per thread.
//  * HD = 512: one warp cannot hold 16 x 512 fp32 outputs (256 registers), so WN = 2 (4 x 2
//    warps, 64 rows): the two warps of a row group each compute half of the key columns of S over
//    the full head dim (no redundant QKᵀ work), exchange their row maxima through shared memory,
//    write P (bf16) to shared memory, and each multiplies the full P by its half of V's columns.
//    Splitting d across two CTAs instead would double the K/V traffic and need a cross-CTA
//    softmax; splitting the warps keeps one CTA per tile and costs one extra barrier per tile.
#include "ops/cuda/attention_kernels.h"

#include <cmath>

#include "core/cuda/runtime.h"
#include "ops/cuda/attention_tiles.cuh"

namespace g4::ops::cuda::attn {

namespace {

template <int HD_, int BM_, int BN_, int WM_, int WN_>
struct FwdCfg {
  static constexpr int HD = HD_, BM = BM_, BN = BN_, WM = WM_, WN = WN_;
  static constexpr int kThreads = 32 * WM * WN;
  static constexpr int LD = HD + 8;   // padded smem rows: ldmatrix rows fall in different banks
  static constexpr int LDP = BN + 8;  // P rows (WN > 1 only)
  static constexpr int NT_S = BN / WN / 8;
  static constexpr int NT_O = HD / WN / 8;
  static_assert(BM == 16 * WM, "one 16-row m-tile per warp row");
  static_assert(NT_S % 2 == 0 && NT_O % 2 == 0, "n-tiles come in pairs");
  static constexpr size_t kSmemQ = size_t(BM) * LD * 2, kSmemKV = size_t(BN) * LD * 2;
  static constexpr size_t kSmemP = WN > 1 ? size_t(BM) * LDP * 2 : 0;
  static constexpr size_t kSmemRed = WN > 1 ? size_t(WN) * BM * 4 : 0;
  static constexpr size_t kSmem = kSmemQ + 2 * kSmemKV + kSmemP + kSmemRed;
};

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) fwd_kernel(FwdArgs a) {
  constexpr int HD = C::HD, BM = C::BM, BN = C::BN, WN = C::WN, LD = C::LD, LDP = C::LDP;
  constexpr int NT_S = C::NT_S, NT_O = C::NT_O;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + BM * LD;
  bf16* sV = sK + BN * LD;
  bf16* sP = sV + BN * LD;
  float* sRed = reinterpret_cast<float*>(smem + C::kSmemQ + 2 * C::kSmemKV + C::kSmemP);

  const Dims& dm = a.dims;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, cq = lane % 4;
  const int wm = warp % C::WM, wn = warp / C::WM;
  // Late query tiles see the most keys under a causal mask: start them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int b = blockIdx.y / dm.heads, h = blockIdx.y % dm.heads, kvh = h / dm.group;
  const int q_last = min(q0 + BM, dm.sq) - 1;

  int klo, khi;
  key_range(a.mask, dm, q0, q_last, &klo, &khi);
  doc_key_range(a.mask, dm, b, q0, q_last, &klo, &khi);
  const int jt_begin = klo <= khi ? klo / BN : 0, jt_end = klo <= khi ? khi / BN + 1 : 0;

  load_tile<BM, HD, LD, C::kThreads>(sQ, a.q, b, q0, dm.sq, dm.heads, h, dm.d);
  if (jt_begin < jt_end) load_tile<BN, HD, LD, C::kThreads>(sK, a.k, b, jt_begin * BN, dm.sk, dm.kv_heads, kvh, dm.d);
  cp_async_commit();

  float o[1][NT_O][4];
  zero_acc(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // rows g and g + 8; log2 units
  const int r_local = wm * 16 + g;  // CTA row of this thread's first row
  const int s_col0 = wn * (BN / WN), o_col0 = wn * (HD / WN);

  for (int jt = jt_begin; jt < jt_end; ++jt) {
    const int k0 = jt * BN;
    cp_async_wait<0>();
    __syncthreads();  // K tile (and Q) visible; every warp is done with the previous V tile
    load_tile<BN, HD, LD, C::kThreads>(sV, a.v, b, k0, dm.sk, dm.kv_heads, kvh, dm.dv);
    cp_async_commit();

    float s[1][NT_S][4];
    zero_acc(s);
    warp_gemm<1, NT_S, HD, false, false>(s, sQ, LD, wm * 16, sK, LD, s_col0, 0);

    const bool need_mask =
        k0 + BN > dm.sk || !tile_fully_visible(a.mask, dm, b, q0, q_last, k0, min(k0 + BN, dm.sk) - 1);
    const uint64_t vis = need_mask ? visible_bits<NT_S>(a.mask, dm, b, q0 + r_local, k0 + s_col0, cq) : 0;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[0][nt][e] * a.scale_log2;
        if (need_mask && !bit_set(vis, 4 * nt + e)) x = -INFINITY;
        s[0][nt][e] = x;
        tile_max[e >> 1] = KeepNaN{}(tile_max[e >> 1], x);
      }
    }
    float m_use[2];
    online_softmax_step<WN, BM>(tile_max, row_max, row_sum, o, m_use, sRed, wn, r_local, cq, KeepNaN{});
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[0][nt][e] - m_use[e >> 1]);
        s[0][nt][e] = p;
        row_sum[e >> 1] += p;  // partial: this thread's columns only, reduced at the end
      }
    }
    if constexpr (WN > 1) {
#pragma unroll
      for (int nt = 0; nt < NT_S; ++nt) {
        const int col = s_col0 + nt * 8 + 2 * cq;
        *reinterpret_cast<uint32_t*>(sP + r_local * LDP + col) = pack_bf16(s[0][nt][0], s[0][nt][1]);
        *reinterpret_cast<uint32_t*>(sP + (r_local + 8) * LDP + col) = pack_bf16(s[0][nt][2], s[0][nt][3]);
      }
    }

    __syncthreads();  // every warp is done reading K (and P is complete when WN > 1)
    if (jt + 1 < jt_end) load_tile<BN, HD, LD, C::kThreads>(sK, a.k, b, k0 + BN, dm.sk, dm.kv_heads, kvh, dm.d);
    cp_async_commit();
    cp_async_wait<1>();  // the V tile (older group) has landed
    __syncthreads();

    if constexpr (WN == 1) {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint32_t pa[4] = {pack_bf16(s[0][2 * kk][0], s[0][2 * kk][1]), pack_bf16(s[0][2 * kk][2], s[0][2 * kk][3]),
                                pack_bf16(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]),
                                pack_bf16(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < NT_O / 2; ++np) {
          uint32_t bv[4];
          load_b2<true>(bv, sV, LD, o_col0 + 16 * np, 16 * kk);
          mma_bf16(o[0][2 * np], pa, bv[0], bv[1]);
          mma_bf16(o[0][2 * np + 1], pa, bv[2], bv[3]);
        }
      }
    } else {
      warp_gemm<1, NT_O, BN, false, true>(o, sP, LDP, wm * 16, sV, LD, o_col0, 0);
    }
  }
  cp_async_wait<0>();

  total_row_sums<WN, BM>(row_sum, sRed, wn, r_local, cq);

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = q0 + r_local + 8 * r;
    if (i >= dm.sq) continue;
    const bool empty = row_sum[r] == 0.f;  // no visible key: output 0, lse -inf
    const float inv = empty ? 0.f : 1.f / row_sum[r];
    bf16* orow = a.out + ((static_cast<long long>(b) * dm.sq + i) * dm.heads + h) * dm.dv;
#pragma unroll
    for (int nt = 0; nt < NT_O; ++nt) {
      const int col = o_col0 + nt * 8 + 2 * cq;
      if (col < dm.dv)
        *reinterpret_cast<__nv_bfloat162*>(orow + col) =
            __floats2bfloat162_rn(o[0][nt][2 * r] * inv, o[0][nt][2 * r + 1] * inv);
    }
    if (a.lse != nullptr && wn == 0 && cq == 0)
      a.lse[(static_cast<long long>(b) * dm.heads + h) * dm.sq + i] =
          empty ? -INFINITY : (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
}

template <class C>
void launch_fwd(const FwdArgs& a) {
  g4::cuda::allow_dynamic_smem<fwd_kernel<C>>(C::kSmem);
  const dim3 grid((a.dims.sq + C::BM - 1) / C::BM, a.dims.batch * a.dims.heads);
  fwd_kernel<C><<<grid, C::kThreads, C::kSmem, g4::cuda::stream()>>>(a);
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace

void forward(const FwdArgs& a) {
  const int hd = a.dims.d > a.dims.dv ? a.dims.d : a.dims.dv;
  if (hd <= 64) {
    launch_fwd<FwdCfg<64, 128, 64, 8, 1>>(a);
  } else if (hd <= 128) {
    launch_fwd<FwdCfg<128, 128, 64, 8, 1>>(a);
  } else if (hd <= 256) {
    launch_fwd<FwdCfg<256, 128, 64, 8, 1>>(a);
  } else {
    launch_fwd<FwdCfg<512, 64, 64, 4, 2>>(a);
  }
}

}  // namespace g4::ops::cuda::attn

// The router's top-k of one token, computed by one warp: shared by the router_topk / softmax_topk
// kernels (moe.cu) and the router GEMV whose last block picks the experts (gemv.cu). Included by
// .cu files only.
#pragma once
#include <climits>
#include <cstdint>

#include "ops/cuda/common.cuh"

namespace g4::ops::cuda::topk {

constexpr int kWarp = 32;
constexpr int kMaxExperts = 64 * kWarp;  // the per-lane `taken` mask has 64 bits
constexpr int kMaxK = kWarp;             // lane j keeps choice j
constexpr int kCachedPerLane = 8;        // probabilities a lane keeps in registers

__device__ __forceinline__ bool better(float va, int ia, float vb, int ib) { return va > vb || (va == vb && ia < ib); }

// The k experts of largest probability (lower id on ties: a total order, so every lane agrees),
// in choice order, with weights p / Σ of the chosen p; called by all 32 lanes of a warp. score(e)
// is expert e's router output as a float. kFromLogits: the scores are logits, and each probability
// is softmax_lastdim's, rounded to T as it stores them (its fp32 max and sum over the row taken in
// another order); else the scores are those probabilities. Lane l owns experts l, l+32, ...; each
// of the k rounds takes the warp-wide best.
template <class T, bool kFromLogits, class Score>
__device__ void topk_of_row(Score score, int experts, int k, T* __restrict__ weights, int32_t* __restrict__ indices) {
  const int lane = threadIdx.x % kWarp;
  float mx = -INFINITY, total = 0.0f;
  if constexpr (kFromLogits) {
    for (int e = lane; e < experts; e += kWarp) mx = fmaxf(mx, score(e));
    mx = warp_reduce(mx, MaxOp{});
    if (mx != -INFINITY)  // a row of -inf gets zeros, as softmax_lastdim gives it
      for (int e = lane; e < experts; e += kWarp) total += expf(score(e) - mx);
    total = warp_reduce(total, SumOp{});
  }
  const auto prob = [&](int e) {
    if constexpr (kFromLogits) {
      return to_f32(from_f32<T>(mx == -INFINITY ? 0.f : expf(score(e) - mx) / total));
    } else {
      return score(e);
    }
  };
  // Routers of up to kCachedPerLane·32 experts (26B-A4B has 128) keep each lane's probabilities in
  // registers, computed once instead of once per round: at decode sizes the kernel is latency.
  const bool cached = experts <= kCachedPerLane * kWarp;
  float pv[kCachedPerLane];
  if (cached) {
#pragma unroll
    for (int s = 0; s < kCachedPerLane; ++s) pv[s] = lane + s * kWarp < experts ? prob(lane + s * kWarp) : -INFINITY;
  }
  uint64_t taken = 0;
  float sum = 0.0f, my_v = 0.0f;
  int my_id = 0;
  for (int j = 0; j < k; ++j) {
    float bv = -INFINITY;
    int bi = INT_MAX;
    if (cached) {
#pragma unroll
      for (int s = 0; s < kCachedPerLane; ++s) {
        const int e = lane + s * kWarp;
        if (e < experts && !(taken >> s & 1) && better(pv[s], e, bv, bi)) {
          bv = pv[s];
          bi = e;
        }
      }
    } else {
      for (int s = 0, e = lane; e < experts; ++s, e += kWarp) {
        if (taken >> s & 1) continue;
        const float v = prob(e);
        if (better(v, e, bv, bi)) {
          bv = v;
          bi = e;
        }
      }
    }
    for (int off = kWarp / 2; off > 0; off /= 2) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (bi % kWarp == lane) taken |= uint64_t{1} << (bi / kWarp);
    sum += bv;  // in choice order, as the CPU sums
    if (lane == j) {
      my_v = bv;
      my_id = bi;
    }
  }
  if (lane < k) {
    weights[lane] = from_f32<T>(my_v / sum);
    indices[lane] = my_id;
  }
}

}  // namespace g4::ops::cuda::topk

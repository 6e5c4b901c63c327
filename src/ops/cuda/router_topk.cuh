// The router's top-k of one token by one warp, shared by router_topk / softmax_topk (moe.cu) and the
// decode experts kernels that route for themselves (moe_experts.cu), so both give the same bits.
#pragma once
#include <climits>
#include <cstdint>

#include "ops/cuda/common.cuh"

namespace g4::ops::cuda::topk {

constexpr int kWarp = 32;
constexpr int kMaxExperts = 64 * kWarp;  // the per-lane `taken` mask has 64 bits
constexpr int kCachedPerLane = 8;        // probabilities a lane keeps in registers

__device__ __forceinline__ bool better(float va, int ia, float vb, int ib) { return va > vb || (va == vb && ia < ib); }

// The k best of a token's `experts` scores p (k <= 32), by the calling warp (every lane calls it).
// Lane l owns experts l, l+32, ...; each of the k rounds takes the warp-wide best (largest
// probability, lower id on ties: a total order, so every lane agrees). Lane j < k returns choice j:
// its expert in *id and its weight (probability over the sum of the k chosen, summed in choice
// order as the CPU sums) in *weight. kFromLogits: p are the router's logits, and each expert's
// probability is softmax_lastdim's, rounded to T as it stores them (its fp32 max and sum over the
// row taken in another order); else p are those probabilities.
template <class T, bool kFromLogits>
__device__ void warp_topk(const T* __restrict__ p, int experts, int k, float* weight, int* id) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  float mx = -INFINITY, total = 0.0f;
  if constexpr (kFromLogits) {
    for (int e = lane; e < experts; e += kWarp) mx = fmaxf(mx, to_f32(p[e]));
    mx = warp_reduce(mx, MaxOp{});
    if (mx != -INFINITY)  // a row of -inf gets zeros, as softmax_lastdim gives it
      for (int e = lane; e < experts; e += kWarp) total += expf(to_f32(p[e]) - mx);
    total = warp_reduce(total, SumOp{});
  }
  const auto prob = [&](int e) {
    if constexpr (kFromLogits) {
      return to_f32(from_f32<T>(mx == -INFINITY ? 0.f : expf(to_f32(p[e]) - mx) / total));
    } else {
      return to_f32(p[e]);
    }
  };
  // Routers of up to kCachedPerLane·32 experts (26B-A4B has 128) keep each lane's probabilities in
  // registers, computed once instead of once per round: at decode sizes this is latency.
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
    sum += bv;
    if (lane == j) {
      my_v = bv;
      my_id = bi;
    }
  }
  *weight = my_v / sum;
  *id = my_id;
}

}  // namespace g4::ops::cuda::topk

// The row arithmetic of the fused norm kernels (ops/cuda/fused.cu), shared with the kernels that
// end in those norms (a GEMV whose last CTA norms its output row, ops/cuda/gemv.cu). Each rounds
// where the separate kernels store (ops/cuda/norm.cu, elementwise.cu): the norm's output (x·inv)·w,
// the sum and the scaling.
#pragma once
#include "ops/cuda/common.cuh"

namespace g4::ops::cuda {

// add_rmsnorm, add_rmsnorm_norms and rmsnorm_sum: one block per row, each thread holding up to
// kRowMaxPacks packs of the row (and of the weights) in registers. A decode step runs them on one
// row, where their time is latency: every load is issued before the first reduction, and nothing
// is read twice. Longer rows take the separate ops (fused_rows_fit).
constexpr int kRowMaxThreads = 512;
constexpr int kRowMaxPacks = 4;

// A thread's packs of one row: pack threadIdx.x + i·blockDim.x for i < P, those below nvec ("held").
template <class T, int V, int P>
struct RowPacks {
  Pack<T, V> p[P];

  __device__ __forceinline__ static bool held(int i, int nvec) { return threadIdx.x + i * blockDim.x < nvec; }
  __device__ __forceinline__ static int64_t at(int i) { return int64_t{threadIdx.x + i * blockDim.x} * V; }

  __device__ __forceinline__ void load(const T* __restrict__ row, int nvec) {
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (held(i, nvec)) p[i] = load_pack<T, V>(row + at(i));
  }
  __device__ __forceinline__ void load_cg(const T* row, int nvec) {
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (held(i, nvec)) p[i] = g4::cuda::load_pack_cg<T, V>(row + at(i));
  }
  __device__ __forceinline__ void store(T* __restrict__ row, int nvec) const {
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (held(i, nvec)) store_pack<T, V>(row + at(i), p[i]);
  }
  // The packs whose element e of pack i is f(i, e) rounded to T, for the held packs.
  template <class F>
  __device__ __forceinline__ static RowPacks from(int nvec, F&& f) {
    RowPacks o;
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (held(i, nvec)) {
#pragma unroll
        for (int e = 0; e < V; ++e) o.p[i].v[e] = from_f32<T>(f(i, e));
      }
    return o;
  }
  __device__ __forceinline__ float sum_of_squares(int nvec) const {
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (held(i, nvec)) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float v = to_f32(p[i].v[e]);
          ss += v * v;
        }
      }
    return ss;
  }
};

// The rmsnorm kernel's rounding: (x·inv)·w in fp32, stored in T.
template <class T>
__device__ __forceinline__ float normed(T x, float inv, T w) {
  return to_f32(from_f32<T>((to_f32(x) * inv) * to_f32(w)));
}

// 1 / rms of a row whose sum of squares over its d elements is spread over the block.
__device__ __forceinline__ float inv_rms(float partial_ss, int64_t d, float eps, float* smem) {
  return 1.f / sqrtf(block_sum(partial_ss, smem) / static_cast<float>(d) + eps);
}

// residual + rmsnorm(a, w) (rounded after the norm and after the sum), times scale (rounded) unless
// it is 1, into the thread's packs.
template <class T, int V, int P>
__device__ __forceinline__ RowPacks<T, V, P> residual_plus_normed(const RowPacks<T, V, P>& r, const RowPacks<T, V, P>& a,
                                                                  const RowPacks<T, V, P>& w, float inv, float scale,
                                                                  int nvec) {
  return RowPacks<T, V, P>::from(nvec, [&](int i, int e) {
    const float sum = to_f32(from_f32<T>(to_f32(r.p[i].v[e]) + normed(a.p[i].v[e], inv, w.p[i].v[e])));
    return scale != 1.f ? sum * scale : sum;
  });
}

// rmsnorm(a, wa) + rmsnorm(b, wb) (each norm rounded, then the sum), into the thread's packs.
template <class T, int V, int P>
__device__ __forceinline__ RowPacks<T, V, P> normed_sum(const RowPacks<T, V, P>& a, const RowPacks<T, V, P>& wa,
                                                        const RowPacks<T, V, P>& b, const RowPacks<T, V, P>& wb,
                                                        int64_t d, float eps, float* smem, int nvec) {
  const float inv_a = inv_rms(a.sum_of_squares(nvec), d, eps, smem);
  const float inv_b = inv_rms(b.sum_of_squares(nvec), d, eps, smem);
  return RowPacks<T, V, P>::from(nvec, [&](int i, int e) {
    return normed(a.p[i].v[e], inv_a, wa.p[i].v[e]) + normed(b.p[i].v[e], inv_b, wb.p[i].v[e]);
  });
}

// The norms of add_rmsnorm_norms, passed by value.
template <class T>
struct SumNorms {
  const T* w[3];
  T* y[3];
  float scale[3];
  int count;
};

// rmsnorm_sum_add_norms's first summands: a = rmsnorm(a, wa) + rmsnorm(b, wb) before the sum
// (null pointers in add_rmsnorm_norms).
template <class T>
struct NormedPair {
  const T* b;
  const T* wa;
  const T* wb;
};

// One row, at element offset `off` of residual, a, h and the norms' outputs, by the whole block:
// h = (residual + rmsnorm(a, w))·scale as add_rmsnorm_kernel, stored; then each norm of h, from the
// thread's packs of h. kPair: a is first made from pair as rmsnorm_sum_kernel makes it (rounded).
// The block's threads hold the row: nvec = d / V <= P·blockDim.x. `a` is read past L1 (ld.global.cg):
// other CTAs of the same kernel may have written it. kLateWeights: the norms' weights are loaded
// once h is made, not with the rest (a round of loads more, for a third of the registers: the tail
// of a kernel whose main loop needs few).
template <class T, int V, int P, bool kPair, bool kLateWeights = false>
__device__ __forceinline__ void add_rmsnorm_norms_row(const T* __restrict__ residual, const T* a,
                                                      const T* __restrict__ w, T* __restrict__ h,
                                                      const SumNorms<T>& norms, const NormedPair<T>& pair, int64_t off,
                                                      int64_t d, float eps, float scale, float* smem) {
  const int nvec = static_cast<int>(d / V);
  RowPacks<T, V, P> ap, rp, wp, nw[3];
  ap.load_cg(a + off, nvec);
  RowPacks<T, V, P> bp, wap, wbp;
  if constexpr (kPair) {
    bp.load(pair.b + off, nvec);
    wap.load(pair.wa, nvec);
    wbp.load(pair.wb, nvec);
  }
  rp.load(residual + off, nvec);
  wp.load(w, nvec);
  if constexpr (!kLateWeights) {
#pragma unroll
    for (int n = 0; n < 3; ++n)
      if (n < norms.count) nw[n].load(norms.w[n], nvec);
  }
  if constexpr (kPair) ap = normed_sum(ap, wap, bp, wbp, d, eps, smem, nvec);
  const RowPacks<T, V, P> hp = residual_plus_normed(rp, ap, wp, inv_rms(ap.sum_of_squares(nvec), d, eps, smem), scale, nvec);
  hp.store(h + off, nvec);
  const float inv_h = inv_rms(hp.sum_of_squares(nvec), d, eps, smem);
#pragma unroll
  for (int n = 0; n < 3; ++n) {
    if (n >= norms.count) break;
    if constexpr (kLateWeights) nw[n].load(norms.w[n], nvec);
    const float norm_scale = norms.scale[n];
    RowPacks<T, V, P>::from(nvec, [&](int i, int e) {
      const float y = normed(hp.p[i].v[e], inv_h, nw[n].p[i].v[e]);
      return norm_scale != 1.f ? y * norm_scale : y;
    }).store(norms.y[n] + off, nvec);
  }
}

}  // namespace g4::ops::cuda

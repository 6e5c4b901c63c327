// RMSNorm on the GPU, as Hugging Face's Gemma 4 computes it: x.float(), mean of squares in fp32,
// (mean + eps)^-1/2, times w.float(), rounded once to the output dtype.
// One group of threads per row (see plan_rows), the row held in registers between the passes.
// The backward is one fused pass per row (both row sums, then dx); the weight gradient is summed
// in registers across the rows a thread visits, combined per block into one partial row, and the
// partial rows are added by column_reduce: no atomics, deterministic.
#include <initializer_list>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/norm.h"

namespace g4::ops::cuda {

namespace {

template <class T, int V, int K, bool kCached>
__global__ void rmsnorm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int64_t rows,
                               int nvec, int tpr, float eps) {
  pdl_begin();
  __shared__ float smem[32];
  const int rpb = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr, lane = static_cast<int>(threadIdx.x) % tpr;
  const int64_t d = int64_t{nvec} * V;
  for (int64_t base = int64_t{blockIdx.x} * rpb; base < rows; base += int64_t{gridDim.x} * rpb) {
    const int64_t row = base + group;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * d;
    Pack<T, V> cache[kCached ? K : 1];
    float ss = 0.f;
    if (valid) {
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) {
            cache[k] = load_pack<T, V>(x + off + int64_t{c} * V);
#pragma unroll
            for (int e = 0; e < V; ++e) {
              const float v = to_f32(cache[k].v[e]);
              ss += v * v;
            }
          }
        }
      } else {
        for (int c = lane; c < nvec; c += tpr) {
          const Pack<T, V> p = load_pack<T, V>(x + off + int64_t{c} * V);
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float v = to_f32(p.v[e]);
            ss += v * v;
          }
        }
      }
    }
    ss = row_reduce(ss, SumOp{}, tpr, smem);
    if (!valid) continue;  // no block-wide synchronisation below
    const float inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
    auto out = [&](const Pack<T, V>& p, int c) {
      Pack<T, V> o;
      if (w) {
        const Pack<T, V> wp = load_pack<T, V>(w + int64_t{c} * V);
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>((to_f32(p.v[e]) * inv) * to_f32(wp.v[e]));
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(to_f32(p.v[e]) * inv);
      }
      return o;
    };
    if constexpr (kCached) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int c = lane + k * tpr;
        if (c < nvec) store_pack<T, V>(y + off + int64_t{c} * V, out(cache[k], c));
      }
    } else {
      for (int c = lane; c < nvec; c += tpr) store_pack<T, V>(y + off + int64_t{c} * V, out(load_pack<T, V>(x + off + int64_t{c} * V), c));
    }
  }
}

// With g = dy·w and r = (mean(x²) + eps)^-1/2:  dx = r·g - x · r³ · <g, x> / D.
// Weight gradient dw = Σ_rows dy · x · r:
//  - cached: accumulated per thread in registers, then per block into partial[blockIdx.x, :]
//    (dynamic shared memory of rows_per_block * d floats when a block holds several rows);
//  - uncached (very long rows): r is written to inv_out[row] and the caller reduces columns.
template <class T, int V, int K, bool kCached>
__global__ void rmsnorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                        T* __restrict__ dx, float* __restrict__ partial, float* __restrict__ inv_out,
                                        int64_t rows, int nvec, int tpr, float eps) {
  extern __shared__ float dw_smem[];
  __shared__ float smem[32];
  const int rpb = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr, lane = static_cast<int>(threadIdx.x) % tpr;
  const int64_t d = int64_t{nvec} * V;
  float dw_acc[kCached ? K : 1][V];
#pragma unroll
  for (int k = 0; k < (kCached ? K : 1); ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) dw_acc[k][e] = 0.f;

  for (int64_t base = int64_t{blockIdx.x} * rpb; base < rows; base += int64_t{gridDim.x} * rpb) {
    const int64_t row = base + group;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * d;
    Pack<T, V> cx[kCached ? K : 1], cdy[kCached ? K : 1];
    float ss = 0.f, gx = 0.f;
    auto accumulate = [&](const Pack<T, V>& xp, const Pack<T, V>& dp, int c) {
      Pack<T, V> wp;
      if (w) wp = load_pack<T, V>(w + int64_t{c} * V);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float xv = to_f32(xp.v[e]);
        const float g = w ? to_f32(dp.v[e]) * to_f32(wp.v[e]) : to_f32(dp.v[e]);
        ss += xv * xv;
        gx += g * xv;
      }
    };
    if (valid) {
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) {
            cx[k] = load_pack<T, V>(x + off + int64_t{c} * V);
            cdy[k] = load_pack<T, V>(dy + off + int64_t{c} * V);
            accumulate(cx[k], cdy[k], c);
          }
        }
      } else {
        for (int c = lane; c < nvec; c += tpr)
          accumulate(load_pack<T, V>(x + off + int64_t{c} * V), load_pack<T, V>(dy + off + int64_t{c} * V), c);
      }
    }
    ss = row_reduce(ss, SumOp{}, tpr, smem);
    gx = row_reduce(gx, SumOp{}, tpr, smem);
    if (!valid) continue;  // the loop body below has no block-wide synchronisation
    const float fd = static_cast<float>(d);
    const float r = 1.f / sqrtf(ss / fd + eps);
    const float coef = r * r * r * gx / fd;
    auto grad = [&](const Pack<T, V>& xp, const Pack<T, V>& dp, int c, float* dw_row) {
      Pack<T, V> wp;
      if (w) wp = load_pack<T, V>(w + int64_t{c} * V);
      Pack<T, V> o;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float xv = to_f32(xp.v[e]), dv = to_f32(dp.v[e]);
        const float g = w ? dv * to_f32(wp.v[e]) : dv;
        o.v[e] = from_f32<T>(r * g - coef * xv);
        if (dw_row) dw_row[e] += dv * xv * r;
      }
      store_pack<T, V>(dx + off + int64_t{c} * V, o);
    };
    if constexpr (kCached) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int c = lane + k * tpr;
        if (c < nvec) grad(cx[k], cdy[k], c, w ? dw_acc[k] : nullptr);
      }
    } else {
      for (int c = lane; c < nvec; c += tpr)
        grad(load_pack<T, V>(x + off + int64_t{c} * V), load_pack<T, V>(dy + off + int64_t{c} * V), c, nullptr);
      if (w && lane == 0) inv_out[row] = r;
    }
  }

  if constexpr (kCached) {
    if (!w) return;
    float* dst = partial + int64_t{blockIdx.x} * d;
    if (rpb == 1) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int c = lane + k * tpr;
        if (c < nvec) {
#pragma unroll
          for (int e = 0; e < V; ++e) dst[int64_t{c} * V + e] = dw_acc[k][e];
        }
      }
    } else {
      // Row groups of this block add their partials in a fixed order.
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int c = lane + k * tpr;
        if (c < nvec) {
#pragma unroll
          for (int e = 0; e < V; ++e) dw_smem[group * d + int64_t{c} * V + e] = dw_acc[k][e];
        }
      }
      __syncthreads();
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = dw_smem[j];
        for (int g = 1; g < rpb; ++g) s += dw_smem[g * d + j];
        dst[j] = s;
      }
    }
  }
}

bool all_aligned(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (p && !aligned16(p)) return false;
  return true;
}

}  // namespace

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t rows = leading_rows(x), d = x.size(-1);
  if (rows == 0 || d == 0) return y;
  dispatch_float("rmsnorm", x, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw());
    const T* pw = w.defined() ? static_cast<const T*>(w.raw()) : nullptr;
    T* py = static_cast<T*>(y.raw());
    const bool vec = all_aligned({px, pw, py}) && d % kVec<T> == 0;
    auto launch = [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      auto* kc = rmsnorm_kernel<T, V, kRowCache, true>;
      auto* ku = rmsnorm_kernel<T, V, kRowCache, false>;
      const RowPlan p = plan_rows("rmsnorm", rows, d, V, max_block_threads(reinterpret_cast<const void*>(kc)),
                                  max_block_threads(reinterpret_cast<const void*>(ku)));
      launch_pdl(p.cached ? kc : ku, p.grid, p.block, 0, px, pw, py, rows, p.nvec, p.tpr, static_cast<float>(eps));
    };
    if (vec) {
      launch(std::integral_constant<int, kVec<T>>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
  });
  return y;
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw) {
  const char* op = "rmsnorm_backward";
  const int64_t rows = leading_rows(x), d = x.size(-1);
  dx = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const bool has_w = w.defined();
  if (has_w) dw = Tensor::empty(w.shape(), w.dtype(), Device::CUDA);
  if (d == 0) return;
  if (rows == 0) {
    if (has_w) dw = Tensor::zeros(w.shape(), w.dtype(), Device::CUDA);
    return;
  }
  dispatch_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw());
    const T* pdy = static_cast<const T*>(dy.raw());
    const T* pw = has_w ? static_cast<const T*>(w.raw()) : nullptr;
    T* pdx = static_cast<T*>(dx.raw());
    const bool vec = all_aligned({px, pdy, pw, pdx}) && d % kVec<T> == 0;
    auto launch = [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      auto* kc = rmsnorm_backward_kernel<T, V, kRowCache, true>;
      auto* ku = rmsnorm_backward_kernel<T, V, kRowCache, false>;
      // A quarter of the threads of a forward (the cached kernel needs ~150 registers a thread):
      // bounds the partial rows of dw (grid x d floats).
      const RowPlan p = plan_rows(op, rows, d, V, max_block_threads(reinterpret_cast<const void*>(kc)),
                                  max_block_threads(reinterpret_cast<const void*>(ku)), 512);
      Tensor partial, inv;
      float* pp = nullptr;
      float* pinv = nullptr;
      size_t smem_bytes = 0;
      if (has_w && p.cached) {
        partial = Tensor::empty({static_cast<int64_t>(p.grid), d}, DType::F32, Device::CUDA);
        pp = partial.data<float>();
        // rows_per_block > 1 only when tpr < 256 and the block has <= 256 threads; a cached row has
        // d <= kRowCache * tpr * 8, so rows_per_block * d <= 256 * kRowCache * 8 floats = 32 KiB.
        if (p.rows_per_block > 1) smem_bytes = static_cast<size_t>(p.rows_per_block) * static_cast<size_t>(d) * 4;
      } else if (has_w) {
        inv = Tensor::empty({rows}, DType::F32, Device::CUDA);
        pinv = inv.data<float>();
      }
      G4_CHECK(smem_bytes <= 48 * 1024, op, ": internal error, ", smem_bytes, " bytes of shared memory for ",
               x.describe());
      (p.cached ? kc : ku)<<<p.grid, p.block, smem_bytes, g4::cuda::stream()>>>(pdy, px, pw, pdx, pp, pinv, rows,
                                                                                 p.nvec, p.tpr, static_cast<float>(eps));
      G4_CUDA_CHECK_LAUNCH();
      if (has_w && p.cached) {
        column_reduce(partial, nullptr, nullptr, static_cast<int64_t>(p.grid), d, dw);
      } else if (has_w) {
        column_reduce(dy, &x, pinv, rows, d, dw);
      }
    };
    if (vec) {
      launch(std::integral_constant<int, kVec<T>>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
  });
}

}  // namespace g4::ops::cuda

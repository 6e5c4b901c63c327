// Cross-entropy on the GPU. One CTA per row reads the row once with 16-byte loads and keeps an
// online (max, Σexp) pair per thread in fp32, merged across the block at the end; the softcap is
// applied in registers, so neither fp32 nor softcapped logits are ever stored. The backward
// recomputes softmax from the saved log-sum-exp, with rows on blockIdx.x and column chunks on
// blockIdx.y so that few rows still fill the GPU. The temperature is a multiplication by its
// reciprocal after the softcap (exactly the identity at temperature 1).
#include "ops/cuda/loss.h"

#include <cuda_bf16.h>

#include <cfloat>
#include <type_traits>

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "ops/cuda/index_errors.h"
#include "ops/cuda/vec_io.cuh"

namespace g4::ops::cuda {

namespace {

constexpr int kThreads = 512;

// The logit the loss sees: softcap(x) / temperature.
struct Cap {
  float cap;  // 0: no softcap
  float inv;
  float inv_temperature;
  __device__ float apply(float x) const { return (cap > 0.f ? cap * tanhf(x * inv) : x) * inv_temperature; }
};

__device__ inline float quiet_nan() { return __int_as_float(0x7fc00000); }

// Adds exp(z) to the running pair (m, s) that stands for s * exp(m). m starts at -FLT_MAX rather
// than -inf so that -inf logits and empty threads never form inf - inf.
__device__ inline void online_add(float z, float& m, float& s) {
  if (z > m) {
    s = s * __expf(m - z) + 1.f;
    m = z;
  } else {
    s += __expf(z - m);
  }
}

__device__ inline void combine(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

// Merges every thread's pair; the result is valid in thread 0. Ends with a barrier so that the
// shared scratch can be reused for the next row.
__device__ void block_reduce_pair(float& m, float& s) {
  __shared__ float sm[32], ss[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    m = lane < warps ? sm[lane] : -FLT_MAX;
    s = lane < warps ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  }
  __syncthreads();
}

// vec: the logits base is 16-byte aligned and V is a multiple of the vector width, so every row
// is a whole number of aligned vectors.
template <class T>
__global__ void __launch_bounds__(kThreads)
    ce_rows_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, int64_t n, int64_t v, Cap cap,
                   int64_t ignore, bool vec, float* __restrict__ loss, float* __restrict__ lse, IndexErrorSink sink) {
  g4::cuda::pdl_begin();
  constexpr int K = Vec16<T>::kCount;
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t t = targets[r];
    if (t == ignore || t < 0 || t >= v) {  // the same branch for the whole block
      if (threadIdx.x == 0) {
        const bool bad = t != ignore;
        if (bad) report_index_error(sink, t, r, v);
        loss[r] = bad ? quiet_nan() : 0.f;
        lse[r] = bad ? quiet_nan() : 0.f;
      }
      continue;
    }
    const T* x = logits + r * v;
    float m = -FLT_MAX, s = 0.f;
    if (vec) {
      const int64_t nvec = v / K;
      for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
        float buf[K];
        load_vec(x + i * K, buf);
#pragma unroll
        for (int k = 0; k < K; ++k) online_add(cap.apply(buf[k]), m, s);
      }
    } else {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) online_add(cap.apply(to_float(x[j])), m, s);
    }
    block_reduce_pair(m, s);
    if (threadIdx.x == 0) {
      const float l = m + logf(s);
      lse[r] = l;
      loss[r] = l - cap.apply(to_float(x[t]));
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    ce_rows_backward_kernel(const T* logits, const int64_t* __restrict__ targets, const float* __restrict__ lse,
                            const float* __restrict__ grad, T* dlogits, int64_t n, int64_t v, Cap cap, int64_t ignore,
                            bool vec, IndexErrorSink sink) {
  // logits and dlogits may be the same buffer: no __restrict__ on them, and every element is
  // loaded before the same thread stores it.
  constexpr int K = Vec16<T>::kCount;
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t t = targets[r];
    const bool bad = t != ignore && (t < 0 || t >= v);
    const bool counted = t != ignore && !bad;
    if (bad && threadIdx.x == 0 && blockIdx.y == 0) report_index_error(sink, t, r, v);
    const float fill = bad ? quiet_nan() : 0.f;
    const float l = counted ? lse[r] : 0.f;
    const float g = counted ? grad[r] : 0.f;
    const auto grad_of = [&](int64_t j, float x) -> float {
      if (!counted) return fill;
      float z = x, dz = 1.f;
      if (cap.cap > 0.f) {
        const float th = tanhf(x * cap.inv);
        z = cap.cap * th;
        dz = 1.f - th * th;
      }
      z *= cap.inv_temperature;
      dz *= cap.inv_temperature;
      return (__expf(z - l) - (j == t ? 1.f : 0.f)) * g * dz;
    };
    const T* x = logits + r * v;
    T* d = dlogits + r * v;
    const int64_t first = int64_t{blockIdx.y} * blockDim.x + threadIdx.x;
    const int64_t stride = int64_t{gridDim.y} * blockDim.x;
    if (vec) {
      const int64_t nvec = v / K;
      for (int64_t i = first; i < nvec; i += stride) {
        float buf[K];
        load_vec(x + i * K, buf);
#pragma unroll
        for (int k = 0; k < K; ++k) buf[k] = grad_of(i * K + k, buf[k]);
        store_vec(d + i * K, buf);
      }
    } else {
      for (int64_t j = first; j < v; j += stride) d[j] = from_float<T>(grad_of(j, to_float(x[j])));
    }
  }
}

// Sums the loss rows (double) and counts the rows whose target is not ignored.
__global__ void __launch_bounds__(1024)
    sum_rows_kernel(const float* __restrict__ loss, const int64_t* __restrict__ targets, int64_t n, int64_t ignore,
                    double* __restrict__ out) {
  __shared__ double s_loss[32], s_count[32];
  double a = 0, c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (targets[i] == ignore) continue;
    a += loss[i];
    c += 1;
  }
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    c += __shfl_xor_sync(0xffffffffu, c, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_loss[warp] = a;
    s_count[warp] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double ta = 0, tc = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      ta += s_loss[w];
      tc += s_count[w];
    }
    out[0] = ta;
    out[1] = tc;
  }
}

struct RowsArgs {
  Tensor targets;  // i64 on the GPU, flat
  int64_t n = 0, v = 0;
};

// The targets (checked by ops/loss.cpp, on either device) as flat i64 on the GPU.
RowsArgs rows_args(const Tensor& logits, const Tensor& targets) {
  RowsArgs a;
  const Tensor on_gpu = targets.device() == Device::CUDA ? targets : targets.to(Device::CUDA);
  a.targets = (on_gpu.dtype() == DType::I64 ? on_gpu : on_gpu.to(DType::I64)).reshape({-1});
  a.v = logits.size(-1);
  a.n = a.targets.numel();
  return a;
}

Cap make_cap(double softcap, double temperature) {
  return Cap{static_cast<float>(softcap), softcap > 0 ? static_cast<float>(1.0 / softcap) : 0.f,
             static_cast<float>(1.0 / temperature)};
}

// A per-row f32 tensor on the GPU (lse, grad_rows), converted or copied there when needed.
Tensor row_tensor(const Tensor& t) {
  const Tensor g = t.device() == Device::CUDA ? t : t.to(Device::CUDA);
  return g.dtype() == DType::F32 ? g : g.to(DType::F32);
}

}  // namespace

CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, double softcap, int64_t ignore_index,
                                    double temperature) {
  raise_index_errors(/*wait=*/false);
  const RowsArgs a = rows_args(logits, targets);
  CrossEntropyRows out{Tensor::empty(targets.shape(), DType::F32, Device::CUDA),
                       Tensor::empty(targets.shape(), DType::F32, Device::CUDA)};
  if (a.n == 0) return out;
  const unsigned grid = static_cast<unsigned>(a.n < 2147483647LL ? a.n : 2147483647LL);
  const IndexErrorSink sink = index_error_sink(IndexOp::CrossEntropyRows);
  auto launch = [&](auto* p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    const bool vec = aligned16(p) && a.v % Vec16<T>::kCount == 0;
    g4::cuda::launch_pdl(ce_rows_kernel<T>, grid, kThreads, 0, p, a.targets.data<int64_t>(), a.n, a.v,
                         make_cap(softcap, temperature), ignore_index, vec, out.loss.data<float>(),
                         out.lse.data<float>(), sink);
  };
  if (logits.dtype() == DType::BF16)
    launch(static_cast<const __nv_bfloat16*>(logits.raw()));
  else
    launch(static_cast<const float*>(logits.raw()));
  return out;
}

Tensor cross_entropy_rows_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double softcap,
                                   const Tensor& grad_rows, int64_t ignore_index, Tensor dlogits, double temperature) {
  raise_index_errors(/*wait=*/false);
  const RowsArgs a = rows_args(logits, targets);
  const Tensor l = row_tensor(lse);
  const Tensor g = row_tensor(grad_rows);
  if (!dlogits.defined()) dlogits = Tensor::empty(logits.shape(), logits.dtype(), Device::CUDA);
  if (a.n == 0 || a.v == 0) return dlogits;
  const IndexErrorSink sink = index_error_sink(IndexOp::CrossEntropyRowsBackward);
  auto launch = [&](auto* p, auto* d) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    const bool vec = aligned16(p) && aligned16(d) && a.v % Vec16<T>::kCount == 0;
    const int64_t units = vec ? a.v / Vec16<T>::kCount : a.v;
    // About four units per thread per row chunk; rows beyond 2^31 - 1 are looped over.
    int64_t chunks = (units + kThreads * 4 - 1) / (kThreads * 4);
    chunks = chunks < 1 ? 1 : (chunks > 65535 ? 65535 : chunks);
    const dim3 grid(static_cast<unsigned>(a.n < 2147483647LL ? a.n : 2147483647LL), static_cast<unsigned>(chunks));
    ce_rows_backward_kernel<T><<<grid, kThreads, 0, g4::cuda::stream()>>>(
        p, a.targets.data<int64_t>(), l.data<float>(), g.data<float>(), d, a.n, a.v, make_cap(softcap, temperature),
        ignore_index, vec, sink);
    G4_CUDA_CHECK_LAUNCH();
  };
  if (logits.dtype() == DType::BF16)
    launch(static_cast<const __nv_bfloat16*>(logits.raw()), static_cast<__nv_bfloat16*>(dlogits.raw()));
  else
    launch(static_cast<const float*>(logits.raw()), static_cast<float*>(dlogits.raw()));
  return dlogits;
}

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const CrossEntropyRows rows = cross_entropy_rows(logits, targets, 0.0, ignore_index, 1.0);
  const RowsArgs a = rows_args(logits, targets);
  Tensor sums = Tensor::zeros({2}, DType::F64, Device::CUDA);
  if (a.n > 0) {
    sum_rows_kernel<<<1, 1024, 0, g4::cuda::stream()>>>(rows.loss.data<float>(), a.targets.data<int64_t>(), a.n,
                                                        ignore_index, sums.data<double>());
    G4_CUDA_CHECK_LAUNCH();
  }
  const Tensor host = sums.to(Device::CPU);  // the host waits for the GPU here
  raise_index_errors(/*wait=*/false);        // everything before the copy has finished
  return CrossEntropyResult{host.data<double>()[0], static_cast<int64_t>(host.data<double>()[1])};
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale, int64_t ignore_index) {
  const CrossEntropyRows rows = cross_entropy_rows(logits, targets, 0.0, ignore_index, 1.0);
  Tensor g = Tensor::empty(targets.shape(), DType::F32, Device::CUDA);
  g.fill(grad_scale);
  return cross_entropy_rows_backward(logits, targets, rows.lse, 0.0, g, ignore_index, Tensor(), 1.0);
}

}  // namespace g4::ops::cuda

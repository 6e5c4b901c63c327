// Pointwise ops, activations, softmax and reductions on the GPU. Every kernel reads bf16 or f32,
// computes in fp32 and rounds once on the store. Pointwise kernels are grid-stride loops over
// 16-byte packs of input (8 bf16 or 4 f32) when every pointer is aligned to its pack, with a scalar
// loop for the tail; otherwise they run element by element.
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/fused.h"

namespace g4::ops::cuda {

namespace {

constexpr int kThreads = 256;

// ---- generic pointwise map: NI inputs of dtype T, NO outputs of dtype TO (T unless said), ---------
// ---- f(x[NI], y[NO]) in fp32 ---------------------------------------------------------------------

template <class T, class TO, int NI, int NO>
struct Ptrs {
  const T* in[NI > 0 ? NI : 1];
  TO* out[NO];
};

template <class T, class TO, int V, int NI, int NO, class F>
__global__ void map_kernel(Ptrs<T, TO, NI, NO> p, int64_t n, F f) {
  pdl_begin();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t npack = n / V;
  for (int64_t i = tid; i < npack; i += stride) {
    Pack<T, V> in[NI > 0 ? NI : 1];
#pragma unroll
    for (int k = 0; k < NI; ++k) in[k] = load_pack<T, V>(p.in[k] + i * V);
    Pack<TO, V> out[NO];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float x[NI > 0 ? NI : 1], y[NO];
#pragma unroll
      for (int k = 0; k < NI; ++k) x[k] = to_f32(in[k].v[e]);
      f(x, y);
#pragma unroll
      for (int k = 0; k < NO; ++k) out[k].v[e] = from_f32<TO>(y[k]);
    }
#pragma unroll
    for (int k = 0; k < NO; ++k) store_pack<TO, V>(p.out[k] + i * V, out[k]);
  }
  for (int64_t i = npack * V + tid; i < n; i += stride) {
    float x[NI > 0 ? NI : 1], y[NO];
#pragma unroll
    for (int k = 0; k < NI; ++k) x[k] = to_f32(p.in[k][i]);
    f(x, y);
#pragma unroll
    for (int k = 0; k < NO; ++k) p.out[k][i] = from_f32<TO>(y[k]);
  }
}

// Whether p is aligned to a pack of V elements of T.
template <class T, int V>
bool pack_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T, V>) == 0;
}

// Runs f over n elements of the given GPU tensors (inputs of dtype T, outputs of dtype TO, already
// checked), a 16-byte pack of inputs a thread where every pointer is aligned to its pack.
template <class T, int NI, int NO, class F, class TO = T>
void launch_map(const std::array<const Tensor*, NI>& ins, const std::array<Tensor*, NO>& outs, int64_t n, F f) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  Ptrs<T, TO, NI, NO> p{};
  bool aligned = true;
  for (int k = 0; k < NI; ++k) {
    p.in[k] = static_cast<const T*>(ins[k]->raw());
    aligned = aligned && pack_aligned<T, V>(p.in[k]);
  }
  for (int k = 0; k < NO; ++k) {
    p.out[k] = static_cast<TO*>(outs[k]->raw());
    aligned = aligned && pack_aligned<TO, V>(p.out[k]);
  }
  if (aligned && n >= V) {
    launch_pdl(map_kernel<T, TO, V, NI, NO, F>, grid_for(n / V, kThreads), kThreads, 0, p, n, f);
  } else {
    launch_pdl(map_kernel<T, TO, 1, NI, NO, F>, grid_for(n, kThreads), kThreads, 0, p, n, f);
  }
}

template <class F>
Tensor unary(const char* op, const Tensor& x, F f) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  dispatch_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, 1, 1>({&x}, {&y}, x.numel(), f);
  });
  return y;
}

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  dispatch_float(op, a, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, 2, 1>({&a, &b}, {&y}, a.numel(), f);
  });
  return y;
}

// ---- the functions ------------------------------------------------------------------------------

__device__ __forceinline__ float gelu_derivative(float x) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;
  const float t = tanhf(beta * (x + kappa * x * x * x));
  const float dinner = beta * (1.f + 3.f * kappa * x * x);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * dinner;
}

struct AddF {
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] + x[1]; }
};
struct SubF {
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] - x[1]; }
};
struct MulF {
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] * x[1]; }
};
struct ScaleF {
  float s;
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] * s; }
};
struct GeluF {
  __device__ void operator()(const float* x, float* y) const { y[0] = gelu_value(x[0]); }
};
struct GeluBackwardF {  // (dy, x)
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] * gelu_derivative(x[1]); }
};
struct GeluGateF {  // (g, u)
  __device__ void operator()(const float* x, float* y) const { y[0] = gelu_value(x[0]) * x[1]; }
};
template <class T>
struct GeluMulF {  // (a, b): gelu(a) rounded to T, as gelu_tanh stores it, then times b
  __device__ void operator()(const float* x, float* y) const { y[0] = to_f32(from_f32<T>(gelu_value(x[0]))) * x[1]; }
};
struct GeluGateBackwardF {  // (dy, g, u) -> (dg, du)
  __device__ void operator()(const float* x, float* y) const {
    y[0] = x[0] * x[2] * gelu_derivative(x[1]);
    y[1] = x[0] * gelu_value(x[1]);
  }
};
struct SoftcapF {
  float cap;
  __device__ void operator()(const float* x, float* y) const { y[0] = softcap_value(x[0], cap); }
};
struct SoftcapBackwardF {  // (dy, y): d/dx c·tanh(x/c) = 1 - (y/c)²
  float cap;
  __device__ void operator()(const float* x, float* y) const {
    const float t = x[1] / cap;
    y[0] = x[0] * (1.f - t * t);
  }
};

struct ActivationF {
  Activation act;
  __device__ void operator()(const float* x, float* y) const {
    const float v = x[0];
    switch (act) {
      case Activation::kRelu: y[0] = v > 0.f ? v : 0.f; break;
      case Activation::kSilu: y[0] = v / (1.f + expf(-v)); break;
      case Activation::kSigmoid: y[0] = 1.f / (1.f + expf(-v)); break;
      case Activation::kSoftplus: y[0] = v > 20.f ? v : log1pf(expf(v)); break;
    }
  }
};
struct ActivationBackwardF {  // (dy, x)
  Activation act;
  __device__ void operator()(const float* x, float* y) const {
    const float d = x[0], v = x[1], s = 1.f / (1.f + expf(-v));
    switch (act) {
      case Activation::kRelu: y[0] = v > 0.f ? d : 0.f; break;
      case Activation::kSilu: y[0] = d * s * (1.f + v * (1.f - s)); break;
      case Activation::kSigmoid: y[0] = d * s * (1.f - s); break;
      case Activation::kSoftplus: y[0] = v > 20.f ? d : d * s; break;
    }
  }
};
struct ClampF {
  float lo, hi;
  __device__ void operator()(const float* x, float* y) const { y[0] = fminf(fmaxf(x[0], lo), hi); }
};
struct ClampBackwardF {  // (dy, x)
  float lo, hi;
  __device__ void operator()(const float* x, float* y) const { y[0] = x[1] >= lo && x[1] <= hi ? x[0] : 0.f; }
};

// ---- add_ with a possibly wider accumulator -----------------------------------------------------

template <class TA, class TX, int V>
__global__ void add_inplace_kernel(TA* __restrict__ acc, const TX* __restrict__ x, float alpha, int64_t n) {
  pdl_begin();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t npack = n / V;
  for (int64_t i = tid; i < npack; i += stride) {
    Pack<TA, V> a = load_pack<TA, V>(acc + i * V);
    const Pack<TX, V> b = load_pack<TX, V>(x + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) a.v[e] = from_f32<TA>(to_f32(a.v[e]) + alpha * to_f32(b.v[e]));
    store_pack<TA, V>(acc + i * V, a);
  }
  for (int64_t i = npack * V + tid; i < n; i += stride) acc[i] = from_f32<TA>(to_f32(acc[i]) + alpha * to_f32(x[i]));
}

template <class TA, class TX>
void launch_add_inplace(Tensor& acc, const Tensor& x, float alpha) {
  const int64_t n = acc.numel();
  if (n == 0) return;
  auto* pa = static_cast<TA*>(acc.raw());
  const auto* px = static_cast<const TX*>(x.raw());
  constexpr int V = 16 / (sizeof(TA) > sizeof(TX) ? sizeof(TA) : sizeof(TX));
  if (aligned16(pa) && aligned16(px) && n >= V) {
    launch_pdl(add_inplace_kernel<TA, TX, V>, grid_for(n / V, kThreads), kThreads, 0, pa, px, alpha, n);
  } else {
    launch_pdl(add_inplace_kernel<TA, TX, 1>, grid_for(n, kThreads), kThreads, 0, pa, px, alpha, n);
  }
}

// ---- x [rows, d] * v [d] --------------------------------------------------------------------------

template <class T, int V>
__global__ void mul_rowvec_kernel(const T* __restrict__ x, const T* __restrict__ v, T* __restrict__ y, int64_t n,
                                  int64_t d) {
  pdl_begin();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t npack = n / V, dpack = d / V;  // V > 1 only when d % V == 0
  const bool small = npack <= 0xffffffffLL;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < npack; i += stride) {
    const int64_t j = small ? static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(dpack)) : i % dpack;
    const Pack<T, V> a = load_pack<T, V>(x + i * V);
    const Pack<T, V> b = load_pack<T, V>(v + j * V);
    Pack<T, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(to_f32(a.v[e]) * to_f32(b.v[e]));
    store_pack<T, V>(y + i * V, o);
  }
}

// ---- gelu_gate on [rows, 2I] ------------------------------------------------------------------------

// Forward: y[r, j] = gelu(gu[r, j]) * gu[r, I + j]. Backward (kBackward): dgu[r, j] and
// dgu[r, I + j] from dy[r, j]. One work item is a pack of V columns of one row (V > 1 only when
// I % V == 0 and the pointers are aligned).
template <class T, int V, bool kBackward>
__global__ void gelu_gate_fused_kernel(const T* __restrict__ gu, const T* __restrict__ dy, T* __restrict__ out,
                                       int64_t rows, int64_t inter) {
  pdl_begin();
  const int64_t ipack = inter / V;
  const int64_t npack = rows * ipack;
  const bool small = npack <= 0xffffffffLL;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < npack; i += stride) {
    int64_t r, jp;
    if (small) {
      r = static_cast<uint32_t>(i) / static_cast<uint32_t>(ipack);
      jp = static_cast<uint32_t>(i) - static_cast<uint32_t>(r) * static_cast<uint32_t>(ipack);
    } else {
      r = i / ipack;
      jp = i - r * ipack;
    }
    const T* grow = gu + r * 2 * inter + jp * V;
    const Pack<T, V> g = load_pack<T, V>(grow);
    const Pack<T, V> u = load_pack<T, V>(grow + inter);
    if constexpr (!kBackward) {
      Pack<T, V> o;
#pragma unroll
      for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(gelu_value(to_f32(g.v[e])) * to_f32(u.v[e]));
      store_pack<T, V>(out + r * inter + jp * V, o);
    } else {
      const Pack<T, V> d = load_pack<T, V>(dy + r * inter + jp * V);
      Pack<T, V> dg, du;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float gv = to_f32(g.v[e]), uv = to_f32(u.v[e]), dv = to_f32(d.v[e]);
        dg.v[e] = from_f32<T>(dv * uv * gelu_derivative(gv));
        du.v[e] = from_f32<T>(dv * gelu_value(gv));
      }
      T* orow = out + r * 2 * inter + jp * V;
      store_pack<T, V>(orow, dg);
      store_pack<T, V>(orow + inter, du);
    }
  }
}

template <bool kBackward>
void launch_gelu_gate_fused(const char* op, const Tensor& gu, const Tensor* dy, Tensor& out, int64_t rows,
                            int64_t inter) {
  if (rows * inter == 0) return;
  dispatch_float(op, gu, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* pg = static_cast<const T*>(gu.raw());
    const T* pd = dy ? static_cast<const T*>(dy->raw()) : nullptr;
    T* po = static_cast<T*>(out.raw());
    const bool vec = inter % V == 0 && aligned16(pg) && aligned16(po) && (!pd || aligned16(pd));
    if (vec) {
      launch_pdl(gelu_gate_fused_kernel<T, V, kBackward>, grid_for(rows * inter / V, kThreads), kThreads, 0, pg, pd,
                 po, rows, inter);
    } else {
      launch_pdl(gelu_gate_fused_kernel<T, 1, kBackward>, grid_for(rows * inter, kThreads), kThreads, 0, pg, pd, po,
                 rows, inter);
    }
  });
}

// ---- softmax over rows ----------------------------------------------------------------------------

// One group of tpr threads per row (see plan_rows); thread `lane` owns the column packs
// c = lane + k * tpr. Cached: the packs stay in registers between the passes (max, sum, write).
template <class T, int V, int K, bool kCached>
__global__ void softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int nvec, int tpr) {
  pdl_begin();
  __shared__ float smem[32];
  const int rpb = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr, lane = static_cast<int>(threadIdx.x) % tpr;
  const int64_t d = int64_t{nvec} * V;
  for (int64_t base = int64_t{blockIdx.x} * rpb; base < rows; base += int64_t{gridDim.x} * rpb) {
    const int64_t row = base + group;
    const bool valid = row < rows;
    const T* xr = x + (valid ? row : 0) * d;
    T* yr = y + (valid ? row : 0) * d;
    Pack<T, V> cache[kCached ? K : 1];
    float mx = -INFINITY;
    if (valid) {
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) {
            cache[k] = load_pack<T, V>(xr + int64_t{c} * V);
#pragma unroll
            for (int e = 0; e < V; ++e) mx = fmaxf(mx, to_f32(cache[k].v[e]));
          }
        }
      } else {
        for (int c = lane; c < nvec; c += tpr) {
          const Pack<T, V> p = load_pack<T, V>(xr + int64_t{c} * V);
#pragma unroll
          for (int e = 0; e < V; ++e) mx = fmaxf(mx, to_f32(p.v[e]));
        }
      }
    }
    mx = row_reduce(mx, MaxOp{}, tpr, smem);
    // A row of -inf (all masked) would give NaN; it gets zeros instead (as on the CPU).
    const bool dead = mx == -INFINITY;
    float sum = 0.f;
    if (valid && !dead) {
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) {
#pragma unroll
            for (int e = 0; e < V; ++e) sum += expf(to_f32(cache[k].v[e]) - mx);
          }
        }
      } else {
        for (int c = lane; c < nvec; c += tpr) {
          const Pack<T, V> p = load_pack<T, V>(xr + int64_t{c} * V);
#pragma unroll
          for (int e = 0; e < V; ++e) sum += expf(to_f32(p.v[e]) - mx);
        }
      }
    }
    sum = row_reduce(sum, SumOp{}, tpr, smem);
    if (valid) {
      auto out = [&](const Pack<T, V>& p) {
        Pack<T, V> o;
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(dead ? 0.f : expf(to_f32(p.v[e]) - mx) / sum);
        return o;
      };
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) store_pack<T, V>(yr + int64_t{c} * V, out(cache[k]));
        }
      } else {
        for (int c = lane; c < nvec; c += tpr)
          store_pack<T, V>(yr + int64_t{c} * V, out(load_pack<T, V>(xr + int64_t{c} * V)));
      }
    }
  }
}

// dx = y * (dy - <dy, y>) per row.
template <class T, int V, int K, bool kCached>
__global__ void softmax_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                        int64_t rows, int nvec, int tpr) {
  __shared__ float smem[32];
  const int rpb = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr, lane = static_cast<int>(threadIdx.x) % tpr;
  const int64_t d = int64_t{nvec} * V;
  for (int64_t base = int64_t{blockIdx.x} * rpb; base < rows; base += int64_t{gridDim.x} * rpb) {
    const int64_t row = base + group;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * d;
    Pack<T, V> cdy[kCached ? K : 1], cy[kCached ? K : 1];
    float dot = 0.f;
    if (valid) {
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) {
            cdy[k] = load_pack<T, V>(dy + off + int64_t{c} * V);
            cy[k] = load_pack<T, V>(y + off + int64_t{c} * V);
#pragma unroll
            for (int e = 0; e < V; ++e) dot += to_f32(cdy[k].v[e]) * to_f32(cy[k].v[e]);
          }
        }
      } else {
        for (int c = lane; c < nvec; c += tpr) {
          const Pack<T, V> a = load_pack<T, V>(dy + off + int64_t{c} * V);
          const Pack<T, V> b = load_pack<T, V>(y + off + int64_t{c} * V);
#pragma unroll
          for (int e = 0; e < V; ++e) dot += to_f32(a.v[e]) * to_f32(b.v[e]);
        }
      }
    }
    dot = row_reduce(dot, SumOp{}, tpr, smem);
    if (valid) {
      auto out = [&](const Pack<T, V>& a, const Pack<T, V>& b) {
        Pack<T, V> o;
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(to_f32(b.v[e]) * (to_f32(a.v[e]) - dot));
        return o;
      };
      if constexpr (kCached) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int c = lane + k * tpr;
          if (c < nvec) store_pack<T, V>(dx + off + int64_t{c} * V, out(cdy[k], cy[k]));
        }
      } else {
        for (int c = lane; c < nvec; c += tpr) {
          store_pack<T, V>(dx + off + int64_t{c} * V,
                           out(load_pack<T, V>(dy + off + int64_t{c} * V), load_pack<T, V>(y + off + int64_t{c} * V)));
        }
      }
    }
  }
}

// ---- sum of all elements --------------------------------------------------------------------------

template <class T, int V>
__global__ void sum_partial_kernel(const T* __restrict__ x, int64_t n, float* __restrict__ partial) {
  __shared__ float smem[32];
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t npack = n / V;
  float acc = 0.f;
  for (int64_t i = tid; i < npack; i += stride) {
    const Pack<T, V> p = load_pack<T, V>(x + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) acc += to_f32(p.v[e]);
  }
  for (int64_t i = npack * V + tid; i < n; i += stride) acc += to_f32(x[i]);
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <class T>
__global__ void sum_final_kernel(const float* __restrict__ partial, int count, T* __restrict__ out) {
  __shared__ float smem[32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) out[0] = from_f32<T>(acc);
}

}  // namespace

// ---- public ops -----------------------------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", a, b, AddF{}); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary("sub", a, b, SubF{}); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", a, b, MulF{}); }

Tensor scale(const Tensor& a, double s) { return unary("scale", a, ScaleF{static_cast<float>(s)}); }

void add_(Tensor& acc, const Tensor& x, double alpha) {
  const float al = static_cast<float>(alpha);
  if (acc.dtype() == DType::F32 && x.dtype() == DType::F32) {
    launch_add_inplace<float, float>(acc, x, al);
  } else if (acc.dtype() == DType::F32 && x.dtype() == DType::BF16) {
    launch_add_inplace<float, bf16_t>(acc, x, al);
  } else {  // bf16 += bf16, the one other pair ops/elementwise.cpp lets through
    launch_add_inplace<bf16_t, bf16_t>(acc, x, al);
  }
}

void scale_(Tensor& a, double s) {
  dispatch_float("scale_", a, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, 1, 1>({&a}, {&a}, a.numel(), ScaleF{static_cast<float>(s)});
  });
}

Tensor mul_rowvec(const Tensor& x, const Tensor& v) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t n = x.numel(), d = x.size(-1);
  if (n == 0) return y;
  dispatch_float("mul_rowvec", x, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* px = static_cast<const T*>(x.raw());
    const T* pv = static_cast<const T*>(v.raw());
    T* py = static_cast<T*>(y.raw());
    if (d % V == 0 && aligned16(px) && aligned16(pv) && aligned16(py)) {
      launch_pdl(mul_rowvec_kernel<T, V>, grid_for(n / V, kThreads), kThreads, 0, px, pv, py, n, d);
    } else {
      launch_pdl(mul_rowvec_kernel<T, 1>, grid_for(n, kThreads), kThreads, 0, px, pv, py, n, d);
    }
  });
  return y;
}

Tensor sum_rows(const Tensor& x) {
  const int64_t d = x.size(-1), rows = leading_rows(x);
  Tensor y = Tensor::empty({d}, x.dtype(), Device::CUDA);
  column_reduce(x, nullptr, nullptr, rows, d, y);
  return y;
}

Tensor gelu_tanh(const Tensor& x) { return unary("gelu_tanh", x, GeluF{}); }

Tensor gelu_tanh_backward(const Tensor& dy, const Tensor& x) {
  return binary("gelu_tanh_backward", dy, x, GeluBackwardF{});
}

Tensor gelu_gate(const Tensor& g, const Tensor& u) { return binary("gelu_gate", g, u, GeluGateF{}); }

Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  dispatch_float("gelu_tanh_mul", a, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, 2, 1>({&a, &b}, {&y}, a.numel(), GeluMulF<T>{});
  });
  return y;
}

void gelu_gate_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  dg = Tensor::empty(g.shape(), g.dtype(), Device::CUDA);
  du = Tensor::empty(g.shape(), g.dtype(), Device::CUDA);
  dispatch_float("gelu_gate_backward", g, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, 3, 2>({&dy, &g, &u}, {&dg, &du}, g.numel(), GeluGateBackwardF{});
  });
}

Tensor gelu_gate_fused(const Tensor& gu) {
  const int64_t rows = leading_rows(gu), inter = gu.size(-1) / 2;
  Shape out_shape = gu.shape();
  out_shape.back() = inter;
  Tensor y = Tensor::empty(out_shape, gu.dtype(), Device::CUDA);
  launch_gelu_gate_fused<false>("gelu_gate_fused", gu, nullptr, y, rows, inter);
  return y;
}

Tensor gelu_gate_fused_backward(const Tensor& dy, const Tensor& gu) {
  const int64_t rows = leading_rows(gu), inter = dy.size(-1);
  Tensor dgu = Tensor::empty(gu.shape(), gu.dtype(), Device::CUDA);
  launch_gelu_gate_fused<true>("gelu_gate_fused_backward", gu, &dy, dgu, rows, inter);
  return dgu;
}

Tensor softcap(const Tensor& x, double cap) {
  return unary("softcap", x, SoftcapF{static_cast<float>(cap)});
}

Tensor softcap_to_f32(const Tensor& x, double cap) {
  if (x.dtype() == DType::F32) return softcap(x, cap);
  Tensor y = Tensor::empty(x.shape(), DType::F32, Device::CUDA);
  launch_map<bf16_t, 1, 1, SoftcapF, float>({&x}, {&y}, x.numel(), SoftcapF{static_cast<float>(cap)});
  return y;
}

Tensor softcap_backward(const Tensor& dy, const Tensor& y, double cap) {
  return binary("softcap_backward", dy, y, SoftcapBackwardF{static_cast<float>(cap)});
}

Tensor activation(const Tensor& x, Activation act) { return unary("activation", x, ActivationF{act}); }

Tensor activation_backward(const Tensor& dy, const Tensor& x, Activation act) {
  return binary("activation_backward", dy, x, ActivationBackwardF{act});
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  return unary("clamp", x, ClampF{static_cast<float>(lo), static_cast<float>(hi)});
}

Tensor clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi) {
  return binary("clamp_backward", dy, x, ClampBackwardF{static_cast<float>(lo), static_cast<float>(hi)});
}

Tensor softmax_lastdim(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t rows = leading_rows(x), d = x.size(-1);
  if (rows == 0 || d == 0) return y;
  dispatch_float("softmax_lastdim", x, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw());
    T* py = static_cast<T*>(y.raw());
    const bool vec = aligned16(px) && aligned16(py) && d % kVec<T> == 0;
    auto launch = [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      auto* kc = softmax_kernel<T, V, kRowCache, true>;
      auto* ku = softmax_kernel<T, V, kRowCache, false>;
      const RowPlan p = plan_rows("softmax_lastdim", rows, d, V, max_block_threads(reinterpret_cast<const void*>(kc)),
                                  max_block_threads(reinterpret_cast<const void*>(ku)));
      launch_pdl(p.cached ? kc : ku, p.grid, p.block, 0, px, py, rows, p.nvec, p.tpr);
    };
    if (vec) {
      launch(std::integral_constant<int, kVec<T>>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
  });
  return y;
}

Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y) {
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), Device::CUDA);
  const int64_t rows = leading_rows(y), d = y.size(-1);
  if (rows == 0 || d == 0) return dx;
  dispatch_float("softmax_lastdim_backward", y, [&](auto tag) {
    using T = decltype(tag);
    const T* pdy = static_cast<const T*>(dy.raw());
    const T* py = static_cast<const T*>(y.raw());
    T* pdx = static_cast<T*>(dx.raw());
    const bool vec = aligned16(pdy) && aligned16(py) && aligned16(pdx) && d % kVec<T> == 0;
    auto launch = [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      auto* kc = softmax_backward_kernel<T, V, kRowCache, true>;
      auto* ku = softmax_backward_kernel<T, V, kRowCache, false>;
      const RowPlan p =
          plan_rows("softmax_lastdim_backward", rows, d, V, max_block_threads(reinterpret_cast<const void*>(kc)),
                    max_block_threads(reinterpret_cast<const void*>(ku)));
      (p.cached ? kc : ku)<<<p.grid, p.block, 0, g4::cuda::stream()>>>(pdy, py, pdx, rows, p.nvec, p.tpr);
    };
    if (vec) {
      launch(std::integral_constant<int, kVec<T>>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
    G4_CUDA_CHECK_LAUNCH();
  });
  return dx;
}

Tensor sum_all(const Tensor& x) {
  Tensor out = Tensor::empty({}, x.dtype(), Device::CUDA);
  const int64_t n = x.numel();
  dispatch_float("sum_all", x, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* px = static_cast<const T*>(x.raw());
    const bool vec = aligned16(px) && n >= V;
    // At most 1024 partial sums (one per block), added by one block: a fixed order, no host sync.
    const unsigned grid = std::min(grid_for(vec ? n / V : n, kThreads, 4), 1024u);
    Tensor partial = Tensor::empty({static_cast<int64_t>(grid)}, DType::F32, Device::CUDA);
    float* pp = partial.data<float>();
    cudaStream_t st = g4::cuda::stream();
    if (vec) {
      sum_partial_kernel<T, V><<<grid, kThreads, 0, st>>>(px, n, pp);
    } else {
      sum_partial_kernel<T, 1><<<grid, kThreads, 0, st>>>(px, n, pp);
    }
    G4_CUDA_CHECK_LAUNCH();
    sum_final_kernel<T><<<1, 1024, 0, st>>>(pp, static_cast<int>(grid), static_cast<T*>(out.raw()));
    G4_CUDA_CHECK_LAUNCH();
  });
  return out;
}

}  // namespace g4::ops::cuda

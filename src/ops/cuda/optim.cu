// AdamW and the squared norm on the GPU. The update is one elementwise kernel over four elements
// per thread (vector loads of the master, or of the bf16 parameter and its remainder, and of the f32
// or bf16 moments); every operation is an explicitly rounded
// intrinsic (__fmul_rn, ...) so nvcc cannot contract them into FMAs, which makes the result equal
// to the CPU's f32 loop. The squared norm is a two-stage tree whose shape depends only on n.
#include "ops/cuda/optim.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "core/cuda/runtime.h"
#include "ops/cuda/vec_io.cuh"
#include "ops/master_bits.h"

namespace g4::ops::cuda {

namespace {

constexpr int kThreads = 256;

struct AdamWScalars {
  float gscale, decay, b1, b2, eps, step_size, bc2_sqrt;
};

// The CPU loop of ops/cpu/optim.cpp, operation by operation.
__device__ inline void adamw_one(float& p, float& m, float& v, float g, bool decays, const AdamWScalars& s) {
  if (decays) p = __fmul_rn(p, s.decay);
  m = __fadd_rn(m, __fmul_rn(__fsub_rn(g, m), __fsub_rn(1.f, s.b1)));
  v = __fadd_rn(__fmul_rn(v, s.b2), __fmul_rn(__fmul_rn(__fsub_rn(1.f, s.b2), g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

// Element j, and elements 4i .. 4i+3 in one 16-byte (f32) or 8-byte (bf16) access, widened to
// float; stores round to nearest even.
__device__ inline float load1(const float* x, int64_t j) { return x[j]; }
__device__ inline float load1(const __nv_bfloat16* x, int64_t j) { return __bfloat162float(x[j]); }
__device__ inline void store1(float* x, int64_t j, float f) { x[j] = f; }
__device__ inline void store1(__nv_bfloat16* x, int64_t j, float f) { x[j] = __float2bfloat16_rn(f); }
__device__ inline float4 load4(const float* x, int64_t i) { return reinterpret_cast<const float4*>(x)[i]; }
__device__ inline float4 load4(const __nv_bfloat16* x, int64_t i) {
  const uint2 u = reinterpret_cast<const uint2*>(x)[i];
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ inline void store4(float* x, int64_t i, float4 f) { reinterpret_cast<float4*>(x)[i] = f; }
__device__ inline void store4(__nv_bfloat16* x, int64_t i, float4 f) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(f.x, f.y), hi = __floats2bfloat162_rn(f.z, f.w);
  uint2 u;
  u.x = *reinterpret_cast<unsigned*>(&lo);
  u.y = *reinterpret_cast<unsigned*>(&hi);
  reinterpret_cast<uint2*>(x)[i] = u;
}
__device__ inline float& at(float4& f, int k) { return k == 0 ? f.x : k == 1 ? f.y : k == 2 ? f.z : f.w; }

// The gradient as the update uses it: scaled by grad_scale and the device factor (0 when absent).
struct Grad {
  float gscale, gextra;
  __device__ float operator()(float x) const { return __fmul_rn(__fmul_rn(x, gscale), gextra); }
};

// vec: every pointer (g included) allows 4-element vector access (16 bytes for f32, 8 for bf16). g may be null
// (a zero gradient); extra (a one-element device factor) and mask (per-element decay) may be null.
// The moments m and v are f32 or bf16 (widened on load, rounded on store).
template <class G, class M, class V>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ p, M* __restrict__ m, V* __restrict__ v, const G* __restrict__ g, int64_t n,
                 AdamWScalars s, const float* __restrict__ extra, const uint8_t* __restrict__ mask,
                 __nv_bfloat16* __restrict__ out, bool vec) {
  const Grad scaled{s.gscale, extra ? *extra : 1.f};
  const auto decays = [&](int64_t j) { return !mask || mask[j] != 0; };
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t groups = n / 4;
    for (int64_t i = first; i < groups; i += stride) {
      float4 pp = load4(p, i), mm = load4(m, i), vv = load4(v, i);
      float4 gg = g ? load4(g, i) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        adamw_one(at(pp, k), at(mm, k), at(vv, k), g ? scaled(at(gg, k)) : 0.f, decays(4 * i + k), s);
      store4(p, i, pp);
      store4(m, i, mm);
      store4(v, i, vv);
      if (out) store4(out, i, pp);
    }
    done = groups * 4;
  }
  for (int64_t j = done + first; j < n; j += stride) {
    float pj = p[j], mj = load1(m, j), vj = load1(v, j);
    adamw_one(pj, mj, vj, g ? scaled(load1(g, j)) : 0.f, decays(j), s);
    p[j] = pj;
    store1(m, j, mj);
    store1(v, j, vj);
    if (out) store1(out, j, pj);
  }
}

// The same update of an f32 master kept as a bf16 parameter and an i16 remainder
// (ops/master_bits.h): 4 + 4 bytes of master read and written where an f32 master and its bf16 copy
// take 4 + 6. vec: param, remainder, the moments and g allow 4-element vector access.
template <class G, class M, class V>
__global__ void __launch_bounds__(kThreads)
    adamw_remainders_kernel(uint16_t* __restrict__ param, int16_t* __restrict__ rem, M* __restrict__ m,
                            V* __restrict__ v, const G* __restrict__ g, int64_t n, AdamWScalars s,
                            const float* __restrict__ extra, const uint8_t* __restrict__ mask, bool vec) {
  const Grad scaled{s.gscale, extra ? *extra : 1.f};
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const auto update = [&](uint16_t& pb, int16_t& rb, float& mj, float& vj, float gj, int64_t j) {
    float pj = __uint_as_float(join_master_bits(pb, rb));
    adamw_one(pj, mj, vj, gj, !mask || mask[j] != 0, s);
    split_master_bits(__float_as_uint(pj), pb, rb);
  };
  int64_t done = 0;
  if (vec) {
    const int64_t groups = n / 4;
    for (int64_t i = first; i < groups; i += stride) {
      ushort4 pp = reinterpret_cast<const ushort4*>(param)[i];
      short4 rr = reinterpret_cast<const short4*>(rem)[i];
      float4 mm = load4(m, i), vv = load4(v, i);
      const float4 gg = g ? load4(g, i) : make_float4(0.f, 0.f, 0.f, 0.f);
      update(pp.x, rr.x, mm.x, vv.x, g ? scaled(gg.x) : 0.f, 4 * i);
      update(pp.y, rr.y, mm.y, vv.y, g ? scaled(gg.y) : 0.f, 4 * i + 1);
      update(pp.z, rr.z, mm.z, vv.z, g ? scaled(gg.z) : 0.f, 4 * i + 2);
      update(pp.w, rr.w, mm.w, vv.w, g ? scaled(gg.w) : 0.f, 4 * i + 3);
      reinterpret_cast<ushort4*>(param)[i] = pp;
      reinterpret_cast<short4*>(rem)[i] = rr;
      store4(m, i, mm);
      store4(v, i, vv);
    }
    done = groups * 4;
  }
  for (int64_t j = done + first; j < n; j += stride) {
    float mj = load1(m, j), vj = load1(v, j);
    update(param[j], rem[j], mj, vj, g ? scaled(load1(g, j)) : 0.f, j);
    store1(m, j, mj);
    store1(v, j, vj);
  }
}

constexpr int kNormThreads = 256;
constexpr int kNormMaxBlocks = 1024;

__device__ inline float block_sum(float x) {
  __shared__ float part[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) part[warp] = x;
  __syncthreads();
  float t = 0.f;
  if (warp == 0) {
    t = lane < static_cast<int>(blockDim.x / 32) ? part[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  }
  return t;  // valid in thread 0
}

// Stage 1: each block's Σx² into partial[blockIdx.x]. vec: 16-byte aligned base.
template <class T>
__global__ void __launch_bounds__(kNormThreads)
    sumsq_partial_kernel(const T* __restrict__ x, int64_t n, bool vec, float* __restrict__ partial) {
  constexpr int K = Vec16<T>::kCount;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  float acc = 0.f;
  int64_t done = 0;
  if (vec) {
    const int64_t groups = n / K;
    for (int64_t i = first; i < groups; i += stride) {
      float buf[K];
      load_vec(x + i * K, buf);
#pragma unroll
      for (int k = 0; k < K; ++k) acc = fmaf(buf[k], buf[k], acc);
    }
    done = groups * K;
  }
  for (int64_t j = done + first; j < n; j += stride) {
    const float xj = to_float(x[j]);
    acc = fmaf(xj, xj, acc);
  }
  const float total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Stage 2: one block sums the partials in a fixed order.
__global__ void __launch_bounds__(kNormThreads) sum_partials_kernel(const float* __restrict__ partial, int count,
                                                                     float* __restrict__ out) {
  float acc = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  const float total = block_sum(acc);
  if (threadIdx.x == 0) *out = total;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The scalars exactly as the CPU rounds them (double, then one cast to float).
AdamWScalars scalars(const AdamWHyper& h, bool decay) {
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
  return {static_cast<float>(h.grad_scale), static_cast<float>(decay ? 1.0 - h.lr * h.weight_decay : 1.0),
          static_cast<float>(h.beta1),      static_cast<float>(h.beta2),
          static_cast<float>(h.eps),        static_cast<float>(h.lr / bc1),
          static_cast<float>(bc2_sqrt)};
}

// Calls f(x) with t's elements as float* or __nv_bfloat16* (an undefined t as a null float*).
template <class F>
void with_elements(const Tensor& t, F&& f) {
  void* raw = t.defined() ? const_cast<void*>(t.raw()) : nullptr;
  if (t.defined() && t.dtype() == DType::BF16)
    f(static_cast<__nv_bfloat16*>(raw));
  else
    f(static_cast<float*>(raw));
}

// Whether x (null counts) allows 4-element vector access.
template <class T>
bool aligned4(const T* x) {
  return aligned(x, 4 * sizeof(T));
}

unsigned grid_for(int64_t n) {
  const int64_t work = (n + 3) / 4;
  const int64_t max_blocks = int64_t{g4::cuda::device_sm_count()} * 16;
  return g4::cuda::blocks_for(work < max_blocks * kThreads ? work : max_blocks * kThreads, kThreads);
}
}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const int64_t n = master.numel();
  if (n == 0) return;
  const uint8_t* mask = decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr;
  const float* extra = grad_scale_tensor.defined() ? grad_scale_tensor.data<float>() : nullptr;
  auto* out = param_bf16_out ? static_cast<__nv_bfloat16*>(param_bf16_out->raw()) : nullptr;
  const AdamWScalars s = scalars(h, decay);
  float* p = master.data<float>();
  with_elements(grad, [&](auto* g) {
    with_elements(exp_avg, [&](auto* m) {
      with_elements(exp_avg_sq, [&](auto* v) {
        const bool vec = aligned4(p) && aligned4(m) && aligned4(v) && aligned4(g) && (!out || aligned4(out));
        adamw_kernel<<<grid_for(n), kThreads, 0, g4::cuda::stream()>>>(p, m, v, g, n,
                                                                      s, extra, mask, out, vec);
      });
    });
  });
  G4_CUDA_CHECK_LAUNCH();
}

void adamw_step_remainders(Tensor& param, Tensor& remainder, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                           const AdamWHyper& h, bool decay, const Tensor& decay_mask,
                           const Tensor& grad_scale_tensor) {
  const int64_t n = param.numel();
  if (n == 0) return;
  const uint8_t* mask = decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr;
  const float* extra = grad_scale_tensor.defined() ? grad_scale_tensor.data<float>() : nullptr;
  const AdamWScalars s = scalars(h, decay);
  auto* pb = static_cast<uint16_t*>(param.raw());
  auto* rem = static_cast<int16_t*>(remainder.raw());
  with_elements(grad, [&](auto* g) {
    with_elements(exp_avg, [&](auto* m) {
      with_elements(exp_avg_sq, [&](auto* v) {
        const bool vec = aligned(pb, 8) && aligned(rem, 8) && aligned4(m) && aligned4(v) && aligned4(g);
        adamw_remainders_kernel<<<grid_for(n), kThreads, 0, g4::cuda::stream()>>>(
            pb, rem, m, v, g, n, s, extra, mask, vec);
      });
    });
  });
  G4_CUDA_CHECK_LAUNCH();
}

Tensor squared_norm(const Tensor& g) {
  Tensor out = Tensor::empty({}, DType::F32, Device::CUDA);
  const int64_t n = g.numel();
  if (n == 0) {
    out.fill(0.0);
    return out;
  }
  // The grid depends only on n (never on the GPU model), so the sum's order, and its bits, do too.
  const int64_t work = (n + 7) / 8;
  const int64_t blocks = std::min<int64_t>(kNormMaxBlocks, (work + kNormThreads - 1) / kNormThreads);
  Tensor partial = Tensor::empty({blocks}, DType::F32, Device::CUDA);
  auto launch = [&](auto* x) {
    sumsq_partial_kernel<<<static_cast<unsigned>(blocks), kNormThreads, 0, g4::cuda::stream()>>>(
        x, n, aligned(x, 16), partial.data<float>());
    G4_CUDA_CHECK_LAUNCH();
  };
  if (g.dtype() == DType::BF16)
    launch(static_cast<const __nv_bfloat16*>(g.raw()));
  else
    launch(g.data<float>());
  sum_partials_kernel<<<1, kNormThreads, 0, g4::cuda::stream()>>>(partial.data<float>(), static_cast<int>(blocks),
                                                                   out.data<float>());
  G4_CUDA_CHECK_LAUNCH();
  return out;
}

}  // namespace g4::ops::cuda

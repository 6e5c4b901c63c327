// AdamW and the squared norm on the GPU. The update is one elementwise kernel over four elements
// per thread (16-byte loads of the master and moments); every operation is an explicitly rounded
// intrinsic (__fmul_rn, ...) so nvcc cannot contract them into FMAs, which makes the result equal
// to the CPU's f32 loop. The squared norm is a two-stage tree whose shape depends only on n.
#include "ops/cuda/optim.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "core/cuda/runtime.h"
#include "ops/cuda/vec_io.cuh"

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

__device__ inline float grad_at(const float* g, int64_t j) { return g[j]; }
__device__ inline float grad_at(const __nv_bfloat16* g, int64_t j) { return __bfloat162float(g[j]); }
// Elements 4i .. 4i+3 in one 16-byte (f32) or 8-byte (bf16) load.
__device__ inline float4 grad4_at(const float* g, int64_t i) { return reinterpret_cast<const float4*>(g)[i]; }
__device__ inline float4 grad4_at(const __nv_bfloat16* g, int64_t i) {
  const uint2 u = reinterpret_cast<const uint2*>(g)[i];
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// vec: every pointer (g included) allows 4-element vector access (16 bytes for f32, 8 for bf16). g may be null
// (a zero gradient); extra (a one-element device factor) and mask (per-element decay) may be null.
template <class G>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v, const G* __restrict__ g,
                 int64_t n, AdamWScalars s, const float* __restrict__ extra, const uint8_t* __restrict__ mask,
                 __nv_bfloat16* __restrict__ out, bool vec) {
  const float gextra = extra ? *extra : 1.f;
  const auto scaled = [&](float x) { return __fmul_rn(__fmul_rn(x, s.gscale), gextra); };
  const auto grad = [&](int64_t j) { return g ? scaled(grad_at(g, j)) : 0.f; };
  const auto decays = [&](int64_t j) { return !mask || mask[j] != 0; };
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t groups = n / 4;
    for (int64_t i = first; i < groups; i += stride) {
      float4 pp = reinterpret_cast<const float4*>(p)[i];
      float4 mm = reinterpret_cast<const float4*>(m)[i];
      float4 vv = reinterpret_cast<const float4*>(v)[i];
      float4 gg = g ? grad4_at(g, i) : make_float4(0.f, 0.f, 0.f, 0.f);
      if (g) gg = make_float4(scaled(gg.x), scaled(gg.y), scaled(gg.z), scaled(gg.w));
      adamw_one(pp.x, mm.x, vv.x, gg.x, decays(4 * i), s);
      adamw_one(pp.y, mm.y, vv.y, gg.y, decays(4 * i + 1), s);
      adamw_one(pp.z, mm.z, vv.z, gg.z, decays(4 * i + 2), s);
      adamw_one(pp.w, mm.w, vv.w, gg.w, decays(4 * i + 3), s);
      reinterpret_cast<float4*>(p)[i] = pp;
      reinterpret_cast<float4*>(m)[i] = mm;
      reinterpret_cast<float4*>(v)[i] = vv;
      if (out) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(pp.x, pp.y), hi = __floats2bfloat162_rn(pp.z, pp.w);
        uint2 u;
        u.x = *reinterpret_cast<unsigned*>(&lo);
        u.y = *reinterpret_cast<unsigned*>(&hi);
        reinterpret_cast<uint2*>(out)[i] = u;
      }
    }
    done = groups * 4;
  }
  for (int64_t j = done + first; j < n; j += stride) {
    float pj = p[j], mj = m[j], vj = v[j];
    adamw_one(pj, mj, vj, grad(j), decays(j), s);
    p[j] = pj;
    m[j] = mj;
    v[j] = vj;
    if (out) out[j] = __float2bfloat16_rn(pj);
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

}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const uint8_t* mask = decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr;
  const float* extra = grad_scale_tensor.defined() ? grad_scale_tensor.data<float>() : nullptr;
  auto* out = param_bf16_out ? static_cast<__nv_bfloat16*>(param_bf16_out->raw()) : nullptr;
  const int64_t n = master.numel();
  if (n == 0) return;
  // The scalars exactly as the CPU rounds them (double, then one cast to float).
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
  const AdamWScalars s{static_cast<float>(h.grad_scale), static_cast<float>(decay ? 1.0 - h.lr * h.weight_decay : 1.0),
                       static_cast<float>(h.beta1),      static_cast<float>(h.beta2),
                       static_cast<float>(h.eps),        static_cast<float>(h.lr / bc1),
                       static_cast<float>(bc2_sqrt)};
  float* p = master.data<float>();
  float* m = exp_avg.data<float>();
  float* v = exp_avg_sq.data<float>();
  const int64_t work = (n + 3) / 4;
  const int64_t max_blocks = int64_t{g4::cuda::device_sm_count()} * 16;
  const unsigned blocks = g4::cuda::blocks_for(work < max_blocks * kThreads ? work : max_blocks * kThreads, kThreads);
  const bool vec_common = aligned(p, 16) && aligned(m, 16) && aligned(v, 16) && (!out || aligned(out, 8));
  if (grad.defined() && grad.dtype() == DType::BF16) {
    const auto* g = static_cast<const __nv_bfloat16*>(grad.raw());
    adamw_kernel<__nv_bfloat16><<<blocks, kThreads, 0, g4::cuda::stream()>>>(p, m, v, g, n, s, extra, mask, out,
                                                                               vec_common && aligned(g, 8));
  } else {
    const float* g = grad.defined() ? grad.data<float>() : nullptr;
    adamw_kernel<float><<<blocks, kThreads, 0, g4::cuda::stream()>>>(p, m, v, g, n, s, extra, mask, out,
                                                                       vec_common && (!g || aligned(g, 16)));
  }
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

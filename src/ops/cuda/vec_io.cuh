// 16-byte vector loads and stores of bf16 / f32 rows, converted to and from float registers.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace g4::ops::cuda {

template <class T>
struct Vec16 {
  static constexpr int kCount = 16 / sizeof(T);  // elements per 16-byte vector
};

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) {
  return x;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Loads the 16-byte vector at p (16-byte aligned) into out[Vec16<T>::kCount].
template <class T>
__device__ inline void load_vec(const T* p, float* out) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  if constexpr (sizeof(T) == 2) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(h[k]);
      out[2 * k] = f.x;
      out[2 * k + 1] = f.y;
    }
  } else {
    out[0] = __uint_as_float(u.x);
    out[1] = __uint_as_float(u.y);
    out[2] = __uint_as_float(u.z);
    out[3] = __uint_as_float(u.w);
  }
}

template <class T>
__device__ inline void store_vec(T* p, const float* in) {
  uint4 u;
  if constexpr (sizeof(T) == 2) {
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(in[2 * k], in[2 * k + 1]);
  } else {
    u.x = __float_as_uint(in[0]);
    u.y = __float_as_uint(in[1]);
    u.z = __float_as_uint(in[2]);
    u.w = __float_as_uint(in[3]);
  }
  *reinterpret_cast<uint4*>(p) = u;
}

__host__ __device__ inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace g4::ops::cuda

// Shared plumbing of the CUDA ops: dtype dispatch (bf16, f32), packed 16-byte loads, fp32
// conversions and warp/row reductions. Included by .cu files only.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "core/cuda/pack.cuh"
#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "core/error.h"
#include "core/tensor.h"

namespace g4::ops::cuda {

using bf16_t = __nv_bfloat16;

// Programmatic dependent launch (core/cuda/pdl.cuh): the decode-path kernels use it.
using g4::cuda::launch_pdl;
using g4::cuda::pdl_begin;
using g4::cuda::pdl_begin_after;
using g4::cuda::prefetch_l2;

// Calls fn(T{}) with T = float or bf16_t for `t`'s dtype (checked by the op's dispatcher).
template <class Fn>
decltype(auto) dispatch_float(const char* op, const Tensor& t, Fn&& fn) {
  if (t.dtype() == DType::F32) return fn(float{});
  return fn(bf16_t{});
}

inline int64_t last_dim(const Tensor& t) { return t.dim() == 0 ? 1 : t.size(-1); }
inline int64_t leading_rows(const Tensor& t) {
  const int64_t d = last_dim(t);
  return d == 0 ? 0 : t.numel() / d;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Grid of a grid-stride loop over `work` items, `threads` per block: enough blocks to fill the GPU
// a few times over, never more than there is work.
inline unsigned grid_for(int64_t work, int threads, int blocks_per_sm = 8) {
  const int64_t cap = int64_t{g4::cuda::device_sm_count()} * blocks_per_sm;
  const int64_t want = (work + threads - 1) / threads;
  return static_cast<unsigned>(want < 1 ? 1 : (want < cap ? want : cap));
}

// ---- device-side helpers ----------------------------------------------------------------------

// gelu with the tanh approximation, in PyTorch's order of operations.
__device__ __forceinline__ float gelu_value(float x) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;
  const float inner = beta * (x + kappa * x * x * x);
  return 0.5f * x * (1.f + tanhf(inner));
}

// Gemma's final-logit softcap, cap · tanh(x / cap): ops::softcap_to_f32 and the GPU sampler (which
// caps the LM head's product as it reads it) compute it with these same operations, so both give
// the same bits.
__device__ __forceinline__ float softcap_value(float x, float cap) { return tanhf(x / cap) * cap; }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_f32(float x) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// Packed loads and stores (core/cuda/pack.cuh).
using g4::cuda::load_pack;
using g4::cuda::Pack;
using g4::cuda::store_pack;

// Elements per 16-byte pack.
template <class T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over the threads of one row group: a block holds blockDim.x / tpr groups of `tpr`
// consecutive threads (tpr a multiple of 32). Every thread of the block must call it (it may
// synchronise the block); every thread of a group gets its group's result. `smem` holds 32 floats.
// The order of additions is fixed, so results are deterministic.
template <class Op>
__device__ __forceinline__ float row_reduce(float v, Op op, int tpr, float* smem) {
  v = warp_reduce(v, op);
  if (tpr == 32) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int warps_per_row = tpr >> 5;
  const int first = (warp / warps_per_row) * warps_per_row;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float r = smem[first];
  for (int w = 1; w < warps_per_row; ++w) r = op(r, smem[first + w]);
  __syncthreads();  // smem may be reused by the next reduction
  return r;
}

// Block-wide sum (all threads call it; blockDim.x a multiple of 32, at most 1024); result valid in
// every thread.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  return row_reduce(v, SumOp{}, static_cast<int>(blockDim.x), smem);
}

// ---- row kernels (softmax, rmsnorm) -----------------------------------------------------------
// A [rows, d] tensor is processed by groups of `tpr` threads per row (a multiple of 32), several
// rows per block when rows are short. Each thread keeps up to kRowCache packs of its row in
// registers ("cached") so a row is read from memory once; longer rows are read again per pass.
constexpr int kRowCache = 4;

struct RowPlan {
  int vec = 1;          // elements per pack: 16 bytes' worth when aligned, else 1
  int nvec = 0;         // packs per row
  int tpr = 32;         // threads per row
  int block = 32;       // threads per block (rows_per_block * tpr)
  int rows_per_block = 1;
  bool cached = true;
  unsigned grid = 1;
};

// Most threads per block a kernel can be launched with (its register use bounds it), cached per
// kernel.
inline int max_block_threads(const void* kernel) {
  static std::mutex mu;
  static std::unordered_map<const void*, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(kernel);
  if (it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  G4_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  cache.emplace(kernel, attr.maxThreadsPerBlock);
  return attr.maxThreadsPerBlock;
}

// `vec` is the pack width (1, or 16 bytes' worth when pointers and d allow packs: d % vec == 0);
// max_cached / max_uncached are the block limits of the two kernel variants; `threads_per_sm`
// bounds the grid (the kernels loop over rows).
inline RowPlan plan_rows(const char* op, int64_t rows, int64_t d, int vec, int max_cached, int max_uncached,
                         int threads_per_sm = 2048) {
  G4_CHECK(d < (int64_t{1} << 31), op, ": last dimension ", d, " too large");
  G4_CHECK(d % vec == 0, op, ": internal error, pack width ", vec, " for rows of ", d);
  auto floor32 = [](int n) { n = n < 1024 ? n : 1024; return n < 32 ? 32 : n / 32 * 32; };
  RowPlan p;
  p.vec = vec;
  p.nvec = static_cast<int>(d / vec);
  const int per = (p.nvec + kRowCache - 1) / kRowCache;
  const int want = per < 32 ? 32 : (per + 31) / 32 * 32;
  const int cap_cached = floor32(max_cached);
  p.cached = want <= cap_cached;
  p.tpr = p.cached ? want : floor32(max_uncached);
  const int cap = p.cached ? cap_cached : floor32(max_uncached);
  const int small = cap < 256 ? cap : 256;
  p.rows_per_block = p.tpr < small ? small / p.tpr : 1;
  p.block = p.rows_per_block * p.tpr;
  const int64_t groups = (rows + p.rows_per_block - 1) / p.rows_per_block;
  const int per_sm = threads_per_sm / p.block < 1 ? 1 : threads_per_sm / p.block;
  const int64_t grid_cap = int64_t{g4::cuda::device_sm_count()} * per_sm;
  p.grid = static_cast<unsigned>(groups < 1 ? 1 : (groups < grid_cap ? groups : grid_cap));
  return p;
}

// out[j] = sum over r < rows of a[r, j] * (b ? b[r, j] : 1) * (row_scale ? row_scale[r] : 1), for
// j < d; a (and b) are [rows, d] bf16 or f32 GPU tensors of one dtype, row_scale f32 device memory,
// out a bf16 or f32 GPU tensor of d elements. fp32 accumulation in a fixed order (per-block
// partial sums, then a second pass over the partials): deterministic, no atomics.
void column_reduce(const Tensor& a, const Tensor* b, const float* row_scale, int64_t rows, int64_t d, Tensor& out);

}  // namespace g4::ops::cuda

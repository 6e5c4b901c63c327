// The routed experts at decode sizes (ops::moe_experts) in three kernels and no host
// synchronisation. At a few tokens per step the expert weights dominate the bytes, so each kernel
// streams the weights of the experts that were picked exactly once, in tiles that spread over the
// GPU, and multiplies them by every token that picked the expert:
//   1. gate_up: CTA (column tile, owner y) takes the expert y owns (below), finds the assignments
//      r = t*K + k routed to it (a scan of the [T, K] indices; nothing leaves the device), computes
//      gate and up for its column tile of each of them (fp32 accumulation, rounded to bf16 as the
//      grouped GEMM stores them) and writes act[r] = bf16(gelu(gate) * up), as gelu_gate_fused does.
//   2. down: the same over down [E, I, H]: ys[r] = bf16(act[r] · down_e).
//   3. combine: out[t] = bf16(sum_k weights[t,k] * ys[t*K + k]) in fp32, k in order (moe_unpermute).
// Owners: with fewer assignments than experts (a batch-1 step picks 8 of 128) the grid's rows are
// the assignments and the first assignment of each expert owns it, so no CTA is launched for an
// expert nobody picked; else the rows are the experts. The order in which a CTA finds its
// assignments does not matter: each one is computed on its own.
//
// Each CTA takes a tile of output columns (32 gate + 32 up, or 128 down) down all rows of its
// expert, summing over the rows within the CTA. A thread reads 8 neighbouring columns with one
// 16-byte load when the widths allow (2 with a 4-byte load otherwise), kUnroll rows ahead, and
// multiplies them by only as many chunk rows as hold assignments: at batch 1 each picked expert has
// one token, and the loads, not the FMAs, must be the bound. Measured (bench_gemv): 2.0 TB/s at
// batch 1 on an H200 (48% of a copy). A CTA per block of whole weight rows (contiguous reads, fp32
// partial sums per block reduced by a second kernel) was slower on an H100: 84 against 57 us.
// Splitting each expert's rows over several CTAs (fp32 partial sums added by a further pass) was
// slower at every split tried on an H100: 72-94 against 55 us at one token, 290-545 against 253 at 8.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "core/cuda/runtime.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/moe.h"

namespace g4::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;
using bf162 = __nv_bfloat162;

constexpr int kMaxTokens = static_cast<int>(kMoeExpertsMaxTokens);
constexpr int kThreads = 256;
constexpr int kChunk = 8;   // assignments multiplied per pass over a weight tile
constexpr int kUnroll = 8;  // weight rows loaded ahead per thread: the bytes in flight set the bandwidth
// Column tiles: 32 gate and 32 up columns per CTA of the first product, 128 output columns of the
// second. On an H200 at batch 1, tiles of 16 and 64 were slower (more CTAs, but each reads only 32
// or 128 bytes of a weight row).
constexpr int kGateCols = 32, kDownCols = 128;

__device__ __forceinline__ float round_bf16(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

// The expert owned by this CTA's grid row (see the file comment), or -1 (a later assignment of an
// expert already owned, or an index outside [0, experts)), and the assignments routed to it, into
// list (unordered; their count, at most T since an expert appears once in a token's K choices, in
// *n). One parallel pass over the [T, K] indices decides both, so a CTA waits for one load of them
// rather than a chain. prefetch(e) runs once the expert is known, before that pass.
template <class Prefetch>
__device__ int claim_expert(const int32_t* __restrict__ indices, int assignments, int experts, int* list, int* count,
                            int* n, Prefetch prefetch) {
  const int y = static_cast<int>(blockIdx.y);
  const bool by_assignment = assignments < experts;
  const int e = by_assignment ? indices[y] : y;
  if (e < 0 || e >= experts) return -1;
  prefetch(e);
  if (threadIdx.x == 0) *count = 0;
  __syncthreads();
  bool owned_before = false;  // an earlier assignment picked e: its row owns it
  for (int r = threadIdx.x; r < assignments; r += blockDim.x)
    if (indices[r] == e) {
      if (by_assignment && r < y) {
        owned_before = true;
      } else {
        const int at = atomicAdd(count, 1);
        if (at < kMaxTokens) list[at] = r;
      }
    }
  if (__syncthreads_or(owned_before)) return -1;
  *n = min(*count, kMaxTokens);
  return e;
}

// Asks L2 for the cache line at p (a hint: it changes no value a load returns).
__device__ __forceinline__ void prefetch_line(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Copies rows (of `width` bf16) of `src` into shared memory: row j of the chunk is src row
// row_of(list[j0 + j]).
template <class RowOf>
__device__ void load_rows(const bf16* __restrict__ src, int width, const int* list, int j0, int n, bf16* dst,
                          RowOf row_of) {
  const int pairs = width / 2;
  for (int i = threadIdx.x; i < n * pairs; i += blockDim.x) {
    const int j = i / pairs, p = i - j * pairs;
    reinterpret_cast<bf162*>(dst)[j * pairs + p] =
        reinterpret_cast<const bf162*>(src + static_cast<int64_t>(row_of(list[j0 + j])) * width)[p];
  }
}

// V consecutive bf16 weights as floats, in one aligned load (16 bytes for V = 8, 4 for V = 2).
template <int V>
__device__ __forceinline__ void load_columns(const bf16* __restrict__ w, float (&out)[V]) {
  static_assert(V == 2 || V == 8, "2 or 8 columns per thread");
  const Pack<bf16, V> p = load_pack<bf16, V>(w);
#pragma unroll
  for (int c = 0; c < V; ++c) out[c] = to_f32(p.v[c]);
}

// acc[j] = the chunk's row j (in shared memory, `width` long) times this thread's V weight columns
// at w (rows `stride` apart), over the rows group, group + kGroups, ..., for the first R rows of
// the chunk (0 when !valid; rows past the chunk's count hold stale values that are never stored).
template <int V, int kGroups, int R>
__device__ __forceinline__ void column_products(float (&acc)[kChunk][V], const bf16* __restrict__ w, int64_t stride,
                                                const bf16* rows, int width, int group, bool valid) {
#pragma unroll
  for (int j = 0; j < kChunk; ++j)
#pragma unroll
    for (int c = 0; c < V; ++c) acc[j][c] = 0.f;
  if (!valid) return;
#pragma unroll kUnroll
  for (int i = group; i < width; i += kGroups) {
    float wv[V];
    load_columns<V>(w + i * stride, wv);
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const float v = __bfloat162float(rows[j * width + i]);
#pragma unroll
      for (int c = 0; c < V; ++c) acc[j][c] += v * wv[c];
    }
  }
}

// column_products over as few chunk rows as cover its nt assignments: at decode sizes most picked
// experts have one token, and multiplying all kChunk rows would make the kernels issue-bound.
template <int V, int kGroups>
__device__ __forceinline__ void chunk_products(float (&acc)[kChunk][V], const bf16* __restrict__ w, int64_t stride,
                                               const bf16* rows, int width, int group, bool valid, int nt) {
  if (nt == 1) return column_products<V, kGroups, 1>(acc, w, stride, rows, width, group, valid);
  if (nt == 2) return column_products<V, kGroups, 2>(acc, w, stride, rows, width, group, valid);
  if (nt <= 4) return column_products<V, kGroups, 4>(acc, w, stride, rows, width, group, valid);
  column_products<V, kGroups, kChunk>(acc, w, stride, rows, width, group, valid);
}

// Sums acc over the threads of a warp that hold the same columns of different rows (lanes `span`,
// 2·span, ... apart); nothing when a row's threads fill the warp.
template <int V, int span>
__device__ __forceinline__ void warp_row_sum(float (&acc)[kChunk][V]) {
#pragma unroll
  for (int o = span; o < 32; o <<= 1)
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
#pragma unroll
      for (int c = 0; c < V; ++c) acc[j][c] += __shfl_xor_sync(0xffffffffu, acc[j][c], o);
}

// kCols gate and kCols up columns per CTA, V per thread (8: 16-byte loads, when the widths allow;
// else 2). A row of the tile is 2·kCols/V threads (gate columns, then up columns), so a warp reads
// 32·V/(2·kCols) rows at once.
template <int V>
__global__ void __launch_bounds__(kThreads)
    gate_up_kernel(const bf16* __restrict__ x, const int32_t* __restrict__ indices, int assignments, int experts,
                   int top_k, int H, int I, const bf16* __restrict__ gate_up, bf16* __restrict__ act) {
  pdl_begin();
  constexpr int kCols = kGateCols, kHalf = kCols / V, kRowLanes = 2 * kHalf, kGroups = kThreads / kRowLanes;
  constexpr int kWarps = kThreads / 32;
  static_assert(kRowLanes <= 32, "a tile row within one warp");
  __shared__ int list[kMaxTokens];
  __shared__ int count;
  __shared__ float red[kWarps][kChunk][2 * kCols];
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  bf16* xs = reinterpret_cast<bf16*>(dynamic_smem);  // [kChunk][H]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, c0 = blockIdx.x * kCols;
  const int in_row = threadIdx.x % kRowLanes, group = threadIdx.x / kRowLanes;
  const bool is_up = in_row >= kHalf;
  const int local = V * (in_row % kHalf);  // first of this thread's columns within the tile's half
  const bool valid = c0 + local < I;       // I is a multiple of V, so all V columns are in range together
  const auto weights_of = [&](int e) {
    return gate_up + static_cast<int64_t>(e) * H * 2 * I + (is_up ? I : 0) + c0 + local;
  };
  int n = 0;
  const int e = claim_expert(indices, assignments, experts, list, &count, &n, [&](int e) {
    if (!valid) return;  // the first rows this thread will read, while the assignments are found
    for (int u = 0, i = group; u < kUnroll && i < H; ++u, i += kGroups)
      prefetch_line(weights_of(e) + int64_t{i} * 2 * I);
  });
  if (e < 0 || n == 0) return;
  const bf16* w = weights_of(e);
  for (int j0 = 0; j0 < n; j0 += kChunk) {
    const int nt = min(kChunk, n - j0);
    __syncthreads();  // the previous chunk is done with xs and red
    load_rows(x, H, list, j0, nt, xs, [top_k](int r) { return r / top_k; });
    __syncthreads();
    float acc[kChunk][V];
    chunk_products<V, kGroups>(acc, w, int64_t{2} * I, xs, H, group, valid, nt);
    warp_row_sum<V, kRowLanes>(acc);
    if (lane < kRowLanes) {
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
#pragma unroll
        for (int c = 0; c < V; ++c) red[warp][j][(is_up ? kCols : 0) + local + c] = acc[j][c];
    }
    __syncthreads();
    for (int o = threadIdx.x; o < nt * kCols; o += blockDim.x) {
      const int j = o / kCols, c = o % kCols;
      if (c0 + c >= I) continue;
      float g = 0.f, u = 0.f;
#pragma unroll
      for (int p = 0; p < kWarps; ++p) {
        g += red[p][j][c];
        u += red[p][j][kCols + c];
      }
      act[static_cast<int64_t>(list[j0 + j]) * I + c0 + c] =
          __float2bfloat16_rn(gelu_value(round_bf16(g)) * round_bf16(u));
    }
  }
}

// kCols output columns per CTA, V per thread: a row of the tile is kCols/V threads (part of a
// warp for V = 8, two warps for V = 2).
template <int V>
__global__ void __launch_bounds__(kThreads)
    down_kernel(const bf16* __restrict__ act, const int32_t* __restrict__ indices, int assignments, int experts, int I,
                int H, const bf16* __restrict__ down, bf16* __restrict__ ys) {
  pdl_begin();
  constexpr int kCols = kDownCols, kRowLanes = kCols / V, kGroups = kThreads / kRowLanes;
  // Partial sums left per column: one per warp when a warp holds several rows, else one per row group.
  constexpr int kParts = kRowLanes < 32 ? kThreads / 32 : kGroups;
  __shared__ int list[kMaxTokens];
  __shared__ int count;
  __shared__ float red[kParts][kChunk][kCols];
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  bf16* as = reinterpret_cast<bf16*>(dynamic_smem);  // [kChunk][I]
  const int lane = threadIdx.x % 32, in_row = threadIdx.x % kRowLanes, group = threadIdx.x / kRowLanes;
  const int c0 = blockIdx.x * kCols, col = c0 + V * in_row;
  const bool valid = col < H;  // H is a multiple of V
  int n = 0;
  const int e = claim_expert(indices, assignments, experts, list, &count, &n, [&](int e) {
    if (!valid) return;
    for (int u = 0, i = group; u < kUnroll && i < I; ++u, i += kGroups)
      prefetch_line(down + (static_cast<int64_t>(e) * I + i) * H + col);
  });
  if (e < 0 || n == 0) return;
  const bf16* w = down + static_cast<int64_t>(e) * I * H + col;
  const int part = kRowLanes < 32 ? static_cast<int>(threadIdx.x / 32) : group;
  for (int j0 = 0; j0 < n; j0 += kChunk) {
    const int nt = min(kChunk, n - j0);
    __syncthreads();
    load_rows(act, I, list, j0, nt, as, [](int r) { return r; });
    __syncthreads();
    float acc[kChunk][V];
    chunk_products<V, kGroups>(acc, w, H, as, I, group, valid, nt);
    if constexpr (kRowLanes < 32) warp_row_sum<V, kRowLanes>(acc);
    if (kRowLanes >= 32 || lane < kRowLanes) {
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
#pragma unroll
        for (int c = 0; c < V; ++c) red[part][j][V * in_row + c] = acc[j][c];
    }
    __syncthreads();
    for (int o = threadIdx.x; o < nt * kCols; o += blockDim.x) {
      const int j = o / kCols, c = o % kCols;
      if (c0 + c >= H) continue;
      float y = 0.f;
#pragma unroll
      for (int p = 0; p < kParts; ++p) y += red[p][j][c];
      ys[static_cast<int64_t>(list[j0 + j]) * H + c0 + c] = __float2bfloat16_rn(y);
    }
  }
}

template <class W>
__global__ void combine_kernel(const bf16* __restrict__ ys, const W* __restrict__ weights, int tokens, int top_k, int H,
                               bf16* __restrict__ out) {
  pdl_begin();
  const int64_t total = static_cast<int64_t>(tokens) * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(i / H), c = static_cast<int>(i % H);
    float s = 0.f;
    for (int k = 0; k < top_k; ++k)
      s += to_f32(weights[t * top_k + k]) * __bfloat162float(ys[(static_cast<int64_t>(t) * top_k + k) * H + c]);
    out[i] = __float2bfloat16_rn(s);
  }
}

}  // namespace

Tensor moe_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const Tensor& gate_up,
                   const Tensor& down) {
  const int T = static_cast<int>(x.size(0)), H = static_cast<int>(x.size(1)), K = static_cast<int>(indices.size(1));
  const int E = static_cast<int>(gate_up.size(0)), I = static_cast<int>(down.size(1));
  Tensor out = Tensor::empty({T, H}, DType::BF16, Device::CUDA);
  if (T == 0) return out;
  Tensor act = Tensor::empty({int64_t{T} * K, I}, DType::BF16, Device::CUDA);
  const auto* idx = static_cast<const int32_t*>(indices.raw());
  // 16-byte weight loads when every row of both tensors starts 16-byte aligned.
  const bool wide = I % 8 == 0 && H % 8 == 0 && aligned16(gate_up.raw()) && aligned16(down.raw());
  const int owners = std::min(T * K, E);  // grid rows: assignments or experts (claim_expert)
  Tensor ys = Tensor::empty({int64_t{T} * K, H}, DType::BF16, Device::CUDA);
  const size_t gate_smem = sizeof(bf16) * kChunk * H, down_smem = sizeof(bf16) * kChunk * I;
  // Rows of up to 8192 bf16 in shared memory: 128 KiB for the chunk (the dispatcher bounds H).
  G4_CHECK(down_smem <= sizeof(bf16) * kChunk * 8192, "moe_experts: moe_intermediate_size ", I,
           " is above the 8192 the GPU op takes");
  const auto launch = [&](auto v) {
    constexpr int V = decltype(v)::value;
    constexpr size_t bytes = sizeof(bf16) * kChunk * 8192;
    g4::cuda::allow_dynamic_smem<gate_up_kernel<V>>(bytes);
    g4::cuda::allow_dynamic_smem<down_kernel<V>>(bytes);
    launch_pdl(gate_up_kernel<V>, dim3((I + kGateCols - 1) / kGateCols, owners), kThreads, gate_smem,
               static_cast<const bf16*>(x.raw()), idx, T * K, E, K, H, I, static_cast<const bf16*>(gate_up.raw()),
               static_cast<bf16*>(act.raw()));
    launch_pdl(down_kernel<V>, dim3((H + kDownCols - 1) / kDownCols, owners), kThreads, down_smem,
               static_cast<const bf16*>(act.raw()), idx, T * K, E, I, H, static_cast<const bf16*>(down.raw()),
               static_cast<bf16*>(ys.raw()));
  };
  if (wide)
    launch(std::integral_constant<int, 8>{});
  else
    launch(std::integral_constant<int, 2>{});
  const unsigned blocks = grid_for(int64_t{T} * H, kThreads);
  if (weights.dtype() == DType::F32)
    launch_pdl(combine_kernel<float>, blocks, kThreads, 0, static_cast<const bf16*>(ys.raw()),
               static_cast<const float*>(weights.raw()), T, K, H, static_cast<bf16*>(out.raw()));
  else
    launch_pdl(combine_kernel<bf16>, blocks, kThreads, 0, static_cast<const bf16*>(ys.raw()),
               static_cast<const bf16*>(weights.raw()), T, K, H, static_cast<bf16*>(out.raw()));
  return out;
}

}  // namespace g4::ops::cuda

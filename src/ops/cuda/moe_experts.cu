// The routed experts at decode sizes (ops::moe_experts) in two kernels and no host
// synchronisation. At a few tokens per step the expert weights dominate the bytes, so each kernel
// streams the weights of the experts that were picked exactly once, in tiles that spread over the
// GPU, and multiplies them by every token that picked the expert:
//   1. gate_up: CTA (column tile, owner y) takes the expert y owns (below), finds the assignments
//      r = t*K + k routed to it (a scan of the [T, K] indices; nothing leaves the device), computes
//      gate and up for its column tile of each of them (fp32 accumulation, rounded to bf16 as the
//      grouped GEMM stores them) and writes act[r] = bf16(gelu(gate) * up), as gelu_gate_fused does.
//      With ops::moe_experts_from_logits at batch-1 sizes it first takes the router's top-k itself
//      (InKernelRouting), so no routing kernel runs before it.
//   2. down: the same over down [E, I, H]: ys[r] = bf16(act[r] · down_e); then the combine,
//      out[t] = bf16(sum_k weights[t,k] * ys[t*K + k]) in fp32, k in order (moe_unpermute), for each
//      column tile by the last CTA to finish one of the token's K rows of it (FoldedCombine).
// Each fold takes a kernel boundary (launch, ramp and tail, a few microseconds of latency) off the
// critical path of every MoE layer of a decode step.
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
// batch 1 on an H200 (48% of a copy). These register kernels take the shapes the streamed ones
// below (the default) do not. A CTA per block of whole weight rows (contiguous reads, fp32
// partial sums per block reduced by a second kernel) was slower on an H100: 84 against 57 us.
// Splitting each expert's rows over several CTAs (fp32 partial sums added by a further pass) was
// slower at every split tried on an H100: 72-94 against 55 us at one token, 290-545 against 253 at 8.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "core/cuda/runtime.h"
#include "core/env.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/fused.h"
#include "ops/cuda/moe.h"
#include "ops/cuda/router_topk.cuh"
#include "ops/cuda/tma.cuh"

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

// Routing done by the gate_up kernel itself (moe_experts_from_logits), when `logits` is set: every
// CTA takes the top-k of each token's router logits [T, experts] (bf16) with softmax_topk's
// arithmetic (topk::warp_topk), and CTA (0, 0) also stores them in weights / indices for the down
// kernel. Only where a CTA can afford it: fewer assignments than experts (kMaxRouted at most).
struct InKernelRouting {
  const bf16* logits = nullptr;
  bf16* weights = nullptr;
  int32_t* indices = nullptr;
};
constexpr int kMaxRouted = topk::kCachedPerLane * topk::kWarp;

// The combine folded into the down kernel: out[t] = bf16(sum_k weights[t,k] * ys[t*K + k]) in fp32, k
// in order (moe_unpermute's sum), for each column tile by the last of token t's K expert CTAs to
// finish that tile. done [T, column tiles] counts them; the gate_up kernel zeroes it.
template <class W>
struct FoldedCombine {
  const W* weights;
  int top_k;
  int* done;
  bf16* out;
};

// Makes this CTA's ys stores of a chunk (assignments rows[0..nt)) count toward their tokens'
// combines for column tile blockIdx.x (columns c0.. c0 + kCols), and runs the combine of each token
// this CTA completes, with `threads` threads (0..threads-1; sync() is their barrier). Every thread
// fences its own stores before the count, and the finishing CTA fences before it reads the other
// CTAs' rows (through L2: they were never in its L1). A thread issues all K loads of its column
// before it adds them, in k order.
template <int kCols, class W, class Sync>
__device__ void combine_when_last(const FoldedCombine<W>& cb, const bf16* ys, const int* rows, int nt, int c0, int H,
                                  int threads, int* last, Sync sync) {
  constexpr int kMaxK = 16;  // loads in flight per thread; larger top-k takes them in groups
  __threadfence();
  sync();
  if (static_cast<int>(threadIdx.x) < nt) {
    const int t = rows[threadIdx.x] / cb.top_k;
    last[threadIdx.x] = atomicAdd(&cb.done[t * gridDim.x + blockIdx.x], 1) == cb.top_k - 1 ? t : -1;
  }
  sync();
  __threadfence();
  for (int j = 0; j < nt; ++j) {
    const int t = last[j];
    if (t < 0) continue;
    for (int c = c0 + static_cast<int>(threadIdx.x); c < min(c0 + kCols, H); c += threads) {
      float s = 0.f;
      for (int k0 = 0; k0 < cb.top_k; k0 += kMaxK) {
        float y[kMaxK], w[kMaxK];
#pragma unroll
        for (int k = 0; k < kMaxK; ++k)
          if (k0 + k < cb.top_k) {
            const int r = t * cb.top_k + k0 + k;
            y[k] = __bfloat162float(__ldcg(ys + static_cast<int64_t>(r) * H + c));
            w[k] = to_f32(cb.weights[r]);
          }
#pragma unroll
        for (int k = 0; k < kMaxK; ++k)
          if (k0 + k < cb.top_k) s += w[k] * y[k];
      }
      cb.out[static_cast<int64_t>(t) * H + c] = __float2bfloat16_rn(s);
    }
  }
}

// With routing.logits set, every thread of the CTA takes part in the router's top-k of each token
// (warps in turn, `warps` of them), into `routed` (shared, [assignments]); CTA (0, 0) also stores
// the weights and indices. Returns where the assignments' experts are: `routed`, or `indices`.
__device__ const int32_t* route_in_kernel(const InKernelRouting& routing, const int32_t* indices, int assignments,
                                          int experts, int top_k, int warps, int32_t* routed) {
  if (!routing.logits) return indices;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const bool first_cta = blockIdx.x == 0 && blockIdx.y == 0;
  for (int t = warp; t * top_k < assignments; t += warps) {
    float w;
    int id;
    topk::warp_topk<bf16, true>(routing.logits + static_cast<int64_t>(t) * experts, experts, top_k, &w, &id);
    if (lane < top_k) {
      routed[t * top_k + lane] = id;
      if (first_cta) {
        routing.weights[t * top_k + lane] = __float2bfloat16_rn(w);
        routing.indices[t * top_k + lane] = id;
      }
    }
  }
  __syncthreads();
  return routed;
}

// The folded combine's counts, zeroed by CTA (0, 0) of the gate_up kernel (the down kernel runs
// after it ends).
__device__ __forceinline__ void zero_counts(int* done, int count) {
  if (blockIdx.x == 0 && blockIdx.y == 0)
    for (int i = threadIdx.x; i < count; i += blockDim.x) done[i] = 0;
}

// Copies rows (of `width` bf16) of `src` into shared memory: row j of the chunk is src row
// row_of(list[j0 + j]), with threads 0..threads-1.
template <class RowOf>
__device__ void load_rows(const bf16* __restrict__ src, int width, const int* list, int j0, int n, bf16* dst,
                          RowOf row_of, int threads) {
  const int pairs = width / 2;
  for (int i = threadIdx.x; i < n * pairs; i += threads) {
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
    gate_up_kernel(const bf16* __restrict__ x, const int32_t* indices, InKernelRouting routing, int* done,
                   int done_count, int assignments, int experts, int top_k, int H, int I,
                   const bf16* __restrict__ gate_up, bf16* __restrict__ act) {
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
  zero_counts(done, done_count);
  __shared__ int32_t routed[kMaxRouted];
  indices = route_in_kernel(routing, indices, assignments, experts, top_k, kWarps, routed);
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
    load_rows(x, H, list, j0, nt, xs, [top_k](int r) { return r / top_k; }, kThreads);
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
template <int V, class W>
__global__ void __launch_bounds__(kThreads)
    down_kernel(const bf16* __restrict__ act, const int32_t* __restrict__ indices, int assignments, int experts, int I,
                int H, const bf16* __restrict__ down, bf16* __restrict__ ys, FoldedCombine<W> combine) {
  pdl_begin();
  __shared__ int last[kChunk];
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
    load_rows(act, I, list, j0, nt, as, [](int r) { return r; }, kThreads);
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
    combine_when_last<kCols>(combine, ys, list + j0, nt, c0, H, kThreads, last, [] { __syncthreads(); });
  }
}

// ---- The streamed kernels (the default where they fit; G4_DECODE_EXPERTS_STREAM=0 turns them off) ----
//
// The same two products, with the weights streamed into shared memory by the tensor-memory
// accelerator rather than loaded by every thread. At batch 1 the kernels above keep only as many
// bytes in flight as their registers hold (8 rows ahead a thread, about 5.6 MB over the GPU), and
// longer unrolls did not keep more. Here a producer warp keeps kStreamStages boxes of weight rows
// in flight per CTA (48 KB, two CTAs a multiprocessor), and four consumer warps multiply each box,
// from shared memory, by the chunk's token rows. The tiles, the owners, the in-kernel routing and
// the folded combine are those above; only the order of the additions within a column differs.
// Measured on an H100 (bench_gemv experts, same call): 1.02-1.08x the register kernels from 1 to 128
// tokens, and 26B-A4B generation +2% / +3% / +6% at batch 1 / 4 / 16.
constexpr int kStreamConsumers = 128, kStreamThreads = kStreamConsumers + 32;
constexpr int kStreamStages = 3;
constexpr int kStreamStageBytes = 16384;
constexpr int kStreamWarps = kStreamConsumers / 32;

// gate_up: a stage is kRows weight rows of kGateCols gate columns and the same up columns (two
// boxes); down: kRows rows of kDownCols columns. Each consumer thread takes 8 columns (16 bytes)
// of every kGroups-th row of a stage.
template <bool kGateUp>
struct Stream {
  static constexpr int kBoxCols = kGateUp ? kGateCols : kDownCols;
  static constexpr int kBoxes = kGateUp ? 2 : 1;
  static constexpr int kCols = kBoxCols * kBoxes;
  static constexpr int kRows = kStreamStageBytes / (kCols * 2);
  static constexpr int kBoxBytes = kRows * kBoxCols * 2;
  static constexpr int kRowLanes = kCols / 8;
  static constexpr int kGroups = kStreamConsumers / kRowLanes;
  static constexpr int kRowsPerThread = kRows / kGroups;
  static_assert(kRowLanes <= 32 && kRows % kGroups == 0, "a stage row within one warp");
  // Dynamic shared memory: the stages, the chunk's token rows (`width` bf16 each), the warps' sums.
  static size_t smem_bytes(int width) {
    return 128 + size_t{kStreamStages} * kStreamStageBytes + sizeof(bf16) * kChunk * width +
           sizeof(float) * kStreamWarps * kChunk * kCols;
  }
};

// acc[j] += token row j (shared memory, `width` long) times this thread's 8 columns of a stage's
// rows row0 + group, row0 + group + kGroups, ... (box rows `pitch` bytes apart), rows < width only.
template <class S, int NT>
__device__ __forceinline__ void stream_products(float (&acc)[kChunk][8], const unsigned char* w, int pitch,
                                                const bf16* rows, int width, int row0, int group) {
#pragma unroll
  for (int g = 0; g < S::kRowsPerThread; ++g) {
    const int r = group + g * S::kGroups;
    if (row0 + r >= width) break;
    float wv[8];
    const Pack<bf16, 8> pk = *reinterpret_cast<const Pack<bf16, 8>*>(w + r * pitch);
#pragma unroll
    for (int c = 0; c < 8; ++c) wv[c] = to_f32(pk.v[c]);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float v = __bfloat162float(rows[j * width + row0 + r]);
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[j][c] += v * wv[c];
    }
  }
}

// kGateUp: act[r] = bf16(gelu(gate) * up) over gate_up [E, H, 2I] (in = x, a token's row r / top_k,
// width H, out_cols I); else ys[r] = bf16(act[r] · down_e) over down [E, I, H] (in = act, row r,
// width I, out_cols H). map: the weights as a 3-D tensor map (columns, rows, expert) with boxes of
// kBoxCols x kRows, row-major. gate_up takes the routing and zeroes the counts as gate_up_kernel
// does (routing, done, done_count); down runs the folded combine (combine; W is unused by gate_up).
template <bool kGateUp, class W>
__global__ void __launch_bounds__(kStreamThreads, 2)
    streamed_kernel(const __grid_constant__ CUtensorMap map, const bf16* __restrict__ in, const int32_t* indices,
                    InKernelRouting routing, int* done, int done_count, FoldedCombine<W> combine, int assignments,
                    int experts, int top_k, int width, int out_cols, bf16* __restrict__ out) {
  pdl_begin();
  using S = Stream<kGateUp>;
  __shared__ int list[kMaxTokens];
  __shared__ int count;
  __shared__ int last[kChunk];
  if constexpr (kGateUp) {
    zero_counts(done, done_count);
    __shared__ int32_t routed[kMaxRouted];
    indices = route_in_kernel(routing, indices, assignments, experts, top_k, kStreamThreads / 32, routed);
  }
  __shared__ uint64_t full[kStreamStages], empty[kStreamStages];
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  // The tensor copies write 128-byte aligned boxes (smem_bytes leaves room for the rounding).
  unsigned char* ring =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(dynamic_smem) + 127) & ~uintptr_t{127});
  bf16* xs = reinterpret_cast<bf16*>(ring + kStreamStages * kStreamStageBytes);  // [kChunk][width]
  float* red = reinterpret_cast<float*>(xs + kChunk * width);                     // [warps][kChunk][kCols]
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStreamStages; ++st) {
      tma::mbar_init(&full[st], 1);
      tma::mbar_init(&empty[st], kStreamWarps);
    }
    tma::fence_mbar_init();
  }
  int n = 0;
  const int e = claim_expert(indices, assignments, experts, list, &count, &n, [](int) {});
  if (e < 0 || n == 0) return;
  const int c0 = blockIdx.x * S::kBoxCols, stages = (width + S::kRows - 1) / S::kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == kStreamWarps) {  // the producer
    if (lane == 0) {
      for (int j0 = 0, it = 0; j0 < n; j0 += kChunk)
        for (int rb = 0; rb < stages; ++rb, ++it) {
          const int st = it % kStreamStages;
          tma::mbar_wait(&empty[st], ((it / kStreamStages) & 1) ^ 1);
          tma::mbar_expect_bytes(&full[st], kStreamStageBytes);
          unsigned char* dst = ring + st * kStreamStageBytes;
          tma::load_3d(dst, map, c0, rb * S::kRows, e, &full[st]);
          if constexpr (kGateUp) tma::load_3d(dst + S::kBoxBytes, map, out_cols + c0, rb * S::kRows, e, &full[st]);
        }
    }
    return;
  }
  const int in_row = threadIdx.x % S::kRowLanes, group = threadIdx.x / S::kRowLanes;
  const int box = in_row / (S::kBoxCols / 8), local = 8 * (in_row % (S::kBoxCols / 8));
  const int offset = box * S::kBoxBytes + local * 2;  // this thread's columns in a stage's first row
  const auto consumers_sync = [] { asm volatile("bar.sync 1, %0;\n" ::"n"(kStreamConsumers) : "memory"); };
  for (int j0 = 0, it = 0; j0 < n; j0 += kChunk) {
    const int nt = min(kChunk, n - j0);
    consumers_sync();  // the previous chunk is done with xs and red
    load_rows(in, width, list, j0, nt, xs, [top_k](int r) { return kGateUp ? r / top_k : r; }, kStreamConsumers);
    consumers_sync();
    float acc[kChunk][8];
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[j][c] = 0.f;
    for (int rb = 0; rb < stages; ++rb, ++it) {
      const int st = it % kStreamStages;
      tma::mbar_wait(&full[st], (it / kStreamStages) & 1);
      const unsigned char* w = ring + st * kStreamStageBytes + offset;
      const int row0 = rb * S::kRows;
      if (nt == 1)
        stream_products<S, 1>(acc, w, S::kBoxCols * 2, xs, width, row0, group);
      else if (nt == 2)
        stream_products<S, 2>(acc, w, S::kBoxCols * 2, xs, width, row0, group);
      else if (nt <= 4)
        stream_products<S, 4>(acc, w, S::kBoxCols * 2, xs, width, row0, group);
      else
        stream_products<S, kChunk>(acc, w, S::kBoxCols * 2, xs, width, row0, group);
      __syncwarp();
      if (lane == 0) tma::mbar_arrive(&empty[st]);
    }
    warp_row_sum<8, S::kRowLanes>(acc);
    if (lane < S::kRowLanes) {
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
#pragma unroll
        for (int c = 0; c < 8; ++c) red[(warp * kChunk + j) * S::kCols + box * S::kBoxCols + local + c] = acc[j][c];
    }
    consumers_sync();
    for (int o = threadIdx.x; o < nt * S::kBoxCols; o += kStreamConsumers) {
      const int j = o / S::kBoxCols, c = o % S::kBoxCols;
      if (c0 + c >= out_cols) continue;
      float a = 0.f, u = 0.f;
#pragma unroll
      for (int p = 0; p < kStreamWarps; ++p) {
        a += red[(p * kChunk + j) * S::kCols + c];
        if constexpr (kGateUp) u += red[(p * kChunk + j) * S::kCols + S::kBoxCols + c];
      }
      const int64_t at = static_cast<int64_t>(list[j0 + j]) * out_cols + c0 + c;
      if constexpr (kGateUp)
        out[at] = __float2bfloat16_rn(gelu_value(round_bf16(a)) * round_bf16(u));
      else
        out[at] = __float2bfloat16_rn(a);
    }
    if constexpr (!kGateUp)
      combine_when_last<S::kBoxCols>(combine, out, list + j0, nt, c0, out_cols, kStreamConsumers, last,
                                     consumers_sync);
  }
}

// The weights [E, rows, cols] as the streamed kernels read them: boxes of box_cols x box_rows of one
// expert, row-major.
CUtensorMap expert_rows_map(const Tensor& w, uint32_t box_cols, uint32_t box_rows) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(w.size(2)), static_cast<cuuint64_t>(w.size(1)),
                              static_cast<cuuint64_t>(w.size(0))};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(w.size(2) * 2),
                                 static_cast<cuuint64_t>(w.size(1) * w.size(2) * 2)};
  const cuuint32_t box[3] = {box_cols, box_rows, 1};
  return tma::bf16_map(w.raw(), 3, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_NONE);
}

DecodeExpertsKernel& experts_kernel_choice() {
  static DecodeExpertsKernel choice =
      env_int("G4_DECODE_EXPERTS_STREAM", 1, 0, 1, "on: the streamed kernels where they fit") == 1
          ? DecodeExpertsKernel::Streamed
          : DecodeExpertsKernel::Registers;
  return choice;
}

}  // namespace

void set_decode_experts_kernel(DecodeExpertsKernel kernel) { experts_kernel_choice() = kernel; }
DecodeExpertsKernel decode_experts_kernel() { return experts_kernel_choice(); }

namespace {

// 16-byte weight loads when every row of both tensors starts 16-byte aligned.
bool wide_rows(const Tensor& gate_up, const Tensor& down) {
  const int64_t H = down.size(2), I = down.size(1);
  return I % 8 == 0 && H % 8 == 0 && aligned16(gate_up.raw()) && aligned16(down.raw());
}

// The streamed kernels, when chosen, on wide rows where two CTAs' shared memory fits a multiprocessor.
constexpr size_t kStreamSmemLimit = 110 * 1024;
bool streamed(int64_t H, int64_t I) {
  return decode_experts_kernel() == DecodeExpertsKernel::Streamed && Stream<true>::smem_bytes(H) <= kStreamSmemLimit &&
         Stream<false>::smem_bytes(I) <= kStreamSmemLimit;
}

// moe_experts, with the routing made by the gate_up kernel when routing.logits is set (then
// weights and indices are its outputs, written by that kernel).
Tensor run_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const InKernelRouting& routing,
                   const Tensor& gate_up, const Tensor& down) {
  const int T = static_cast<int>(x.size(0)), H = static_cast<int>(x.size(1)), K = static_cast<int>(indices.size(1));
  const int E = static_cast<int>(gate_up.size(0)), I = static_cast<int>(down.size(1));
  Tensor out = Tensor::empty({T, H}, DType::BF16, Device::CUDA);
  if (T == 0) return out;
  Tensor act = Tensor::empty({int64_t{T} * K, I}, DType::BF16, Device::CUDA);
  const auto* idx = static_cast<const int32_t*>(indices.raw());
  const int owners = std::min(T * K, E);  // grid rows: assignments or experts (claim_expert)
  Tensor ys = Tensor::empty({int64_t{T} * K, H}, DType::BF16, Device::CUDA);
  const size_t gate_smem = sizeof(bf16) * kChunk * H, down_smem = sizeof(bf16) * kChunk * I;
  // Rows of up to 8192 bf16 in shared memory: 128 KiB for the chunk (the dispatcher bounds H).
  G4_CHECK(down_smem <= sizeof(bf16) * kChunk * 8192, "moe_experts: moe_intermediate_size ", I,
           " is above the 8192 the GPU op takes");
  const int down_tiles = (H + kDownCols - 1) / kDownCols;
  Tensor done = Tensor::empty({int64_t{T} * down_tiles}, DType::I32, Device::CUDA);
  const bool wide = wide_rows(gate_up, down), stream = wide && streamed(H, I);
  const int gate_tiles = (I + kGateCols - 1) / kGateCols;
  const auto launch = [&](auto v, auto w) {
    constexpr int V = decltype(v)::value;
    using W = decltype(w);
    const FoldedCombine<W> combine{static_cast<const W*>(weights.raw()), K, done.data<int32_t>(),
                                   static_cast<bf16*>(out.raw())};
    if (stream) {
      g4::cuda::allow_dynamic_smem<streamed_kernel<true, bf16>>(kStreamSmemLimit);
      g4::cuda::allow_dynamic_smem<streamed_kernel<false, W>>(kStreamSmemLimit);
      launch_pdl(streamed_kernel<true, bf16>, dim3(gate_tiles, owners), kStreamThreads,
                 Stream<true>::smem_bytes(H), expert_rows_map(gate_up, Stream<true>::kBoxCols, Stream<true>::kRows),
                 static_cast<const bf16*>(x.raw()), idx, routing, done.data<int32_t>(), T * down_tiles,
                 FoldedCombine<bf16>{}, T * K, E, K, H, I, static_cast<bf16*>(act.raw()));
      launch_pdl(streamed_kernel<false, W>, dim3(down_tiles, owners), kStreamThreads, Stream<false>::smem_bytes(I),
                 expert_rows_map(down, Stream<false>::kBoxCols, Stream<false>::kRows),
                 static_cast<const bf16*>(act.raw()), idx, InKernelRouting{}, nullptr, 0, combine, T * K, E, K, I, H,
                 static_cast<bf16*>(ys.raw()));
      return;
    }
    constexpr size_t bytes = sizeof(bf16) * kChunk * 8192;
    g4::cuda::allow_dynamic_smem<gate_up_kernel<V>>(bytes);
    g4::cuda::allow_dynamic_smem<down_kernel<V, W>>(bytes);
    launch_pdl(gate_up_kernel<V>, dim3(gate_tiles, owners), kThreads, gate_smem,
               static_cast<const bf16*>(x.raw()), idx, routing, done.data<int32_t>(), T * down_tiles, T * K, E, K, H,
               I, static_cast<const bf16*>(gate_up.raw()), static_cast<bf16*>(act.raw()));
    launch_pdl(down_kernel<V, W>, dim3(down_tiles, owners), kThreads, down_smem, static_cast<const bf16*>(act.raw()),
               idx, T * K, E, I, H, static_cast<const bf16*>(down.raw()), static_cast<bf16*>(ys.raw()), combine);
  };
  const auto with_weights = [&](auto v) {
    if (weights.dtype() == DType::F32)
      launch(v, float{});
    else
      launch(v, bf16{});
  };
  if (wide)
    with_weights(std::integral_constant<int, 8>{});
  else
    with_weights(std::integral_constant<int, 2>{});
  return out;
}

}  // namespace

Tensor moe_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const Tensor& gate_up,
                   const Tensor& down) {
  return run_experts(x, weights, indices, InKernelRouting{}, gate_up, down);
}

Tensor moe_experts_from_logits(const Tensor& x, const Tensor& logits, int64_t k, const Tensor& gate_up,
                               const Tensor& down) {
  const int64_t T = x.size(0), E = gate_up.size(0);
  Tensor weights, indices;
  // The gate_up kernel routes when each CTA can afford every token's top-k: fewer assignments than
  // experts (a batch-1 step picks 8 of 128), bf16 logits of at most kMaxRouted experts, and its CTAs
  // in one wave (two a multiprocessor, as both kernels fit). Each wave pays the routing's latency
  // again: at batch 4 of 26B-A4B (704 CTAs, three waves on an H100) it was slower than the separate
  // routing kernel.
  const int64_t ctas = (down.size(1) + kGateCols - 1) / kGateCols * T * k;
  if (T > 0 && T * k < E && E <= kMaxRouted && k <= topk::kWarp && logits.dtype() == DType::BF16 &&
      ctas <= 2 * int64_t{g4::cuda::device_sm_count()}) {
    weights = Tensor::empty({T, k}, DType::BF16, Device::CUDA);
    indices = Tensor::empty({T, k}, DType::I32, Device::CUDA);
    const InKernelRouting routing{static_cast<const bf16*>(logits.raw()), static_cast<bf16*>(weights.raw()),
                                  indices.data<int32_t>()};
    return run_experts(x, weights, indices, routing, gate_up, down);
  }
  softmax_topk(logits, k, weights, indices);
  return moe_experts(x, weights, indices, gate_up, down);
}

}  // namespace g4::ops::cuda

// Arguments of the flash-attention kernels (attention_fwd.cu, attention_bwd.cu), filled by the
// host entry points in attention.cu after the shapes, dtypes and devices have been checked.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention.h"

namespace g4::ops::cuda::attn {

using bf16 = __nv_bfloat16;

// AttentionMask with its optional tensors as i32 device pointers (nullptr when absent).
struct MaskDev {
  int causal;
  long long window, q_start, k_start;
  const int32_t* key_valid;  // [B, Sk]
  const int32_t* q_doc;      // [B, Sq]
  const int32_t* k_doc;      // [B, Sk]
  // [B] with q_doc: 1 where row b's q_doc and k_doc are both non-decreasing, so every document is
  // one contiguous run of queries and of keys and the kernels skip the tiles of other documents
  // (packed rows: most of a causal mask's tiles). 0 (or a row out of order): every tile is
  // visited and masked element by element, which is correct for any ids.
  const int32_t* docs_sorted;
  // [B, Sq] / [B, Sk] block ids (-1: none), causal masks only: a query also sees the later keys of
  // its own block (bidirectional image blocks); the window still bounds how far back it looks.
  const int32_t* q_block;
  const int32_t* k_block;
};

struct Dims {
  int batch, sq, sk, heads, kv_heads, d, dv, group;  // group = heads / kv_heads
};

struct FwdArgs {
  const bf16 *q, *k, *v;  // [B, Sq, nH, d], [B, Sk, nKV, d], [B, Sk, nKV, dv]
  bf16* out;              // [B, Sq, nH, dv]
  float* lse;             // [B, nH, Sq] or nullptr
  Dims dims;
  MaskDev mask;
  float scale_log2;  // scale * log2(e)
  // An instrument (bench_attention --trace): when set, the head-dim-512 softmax group writes the
  // cycle counter at each step of its key loop there (kTraceEvents per tile and warpgroup, for the
  // CTA of head 0's last query tile); nullptr for a forward.
  long long* trace;
};

// The trace's layout: [3 warpgroups (the two P·V ones, then the softmax one)][kTraceTiles][kTraceEvents].
constexpr int kTraceTiles = 256, kTraceEvents = 8;

struct BwdArgs {
  const bf16 *q, *k, *v, *dout;  // dout [B, Sq, nH, dv]
  const float* lse;              // [B, nH, Sq]
  const float* dsum;             // [B, nH, Sq]: rowsum(dout * out)
  float* dq_accum;               // [B, Sq, nH, d] f32, zeroed, scaled by `scale` afterwards
  bf16 *dk, *dv;                 // [B, Sk, nKV, d], [B, Sk, nKV, dv]
  Dims dims;
  MaskDev mask;
  float scale, scale_log2;
};

void forward(const FwdArgs& a);
// The Hopper forward (attention_fwd_wgmma.cu): whether it takes these arguments (d = dv = 256 or
// 512, q, k and v 16-byte aligned for TMA), and the launch with its serial or its pipelined
// schedule.
bool wgmma_forward_fits(const FwdArgs& a);
void forward_wgmma(const FwdArgs& a, bool pipelined);
// The head-dim-512 serial schedule's loads, waits and releases alone, with no arithmetic: nothing is
// written to a.out or a.lse (ForwardKernel::wgmma_loads_only, a benchmark's floor); in clusters of
// G4_ATTENTION_CLUSTER CTAs sharing each K and V load when that is set.
void forward_wgmma_loads_only(const FwdArgs& a);
// The softmax group writing its cycle counters into a.trace, in the clusters forward_wgmma would use.
void forward_wgmma_trace(const FwdArgs& a);
// dsum = rowsum(dout * out) in f32 (the "D" of FlashAttention-2's backward).
void backward_dsum(const bf16* dout, const bf16* out, float* dsum, const Dims& dims);
// Runs the backward `kernel` names (key_chunk 0: default_key_chunk).
void backward(const BwdArgs& a, BackwardKernel kernel, int key_chunk);
// The flash backward (one fused kernel, dQ through f32 atomics).
void backward_flash(const BwdArgs& a);
// The backward over chunks of `key_chunk` keys (a multiple of 128): P and dS in bf16 workspaces,
// the three products on cuBLASLt. Adds into dq_accum (zeroed by the caller) and writes dk, dv.
void backward_chunked(const BwdArgs& a, int key_chunk);
// The chunk that keeps backward_chunked's P and dS workspace within 1 GiB (at most 2048 keys, 1024
// under a sliding window).
int default_key_chunk(const Dims& dims, long long window);
// dq = scale * dq_accum, converted to bf16.
void backward_dq_convert(const float* dq_accum, bf16* dq, long long n, float scale);

}  // namespace g4::ops::cuda::attn

// CUDA attention (flash-style, bf16 in, fp32 accumulate): the GPU definitions of ops/attention.h,
// called by ops/attention.cpp (which checks the arguments) when q lives on the GPU. lse is f32;
// gradients are bf16.
#pragma once
#include "ops/attention.h"

namespace g4::ops::cuda {

// Which forward runs: the FlashAttention-2 kernel on mma.sync (attention_fwd.cu, any head dim), or
// the Hopper one on TMA and wgmma (attention_fwd_wgmma.cu, head dims 256 and 512 with d = dv) with
// its own schedule (at head dim 512 the softmax group, at 256 the serial one) or its pipelined one
// (P·V of one key tile overlapping the next tile's softmax). automatic (measured on an H100,
// bench_attention): the pipelined wgmma one at head dim 256, the other at 512, FlashAttention-2
// elsewhere; a wgmma kernel where it does not apply is an error. wgmma_loads_only is an instrument,
// not a forward: the head-dim-512 serial schedule's TMA loads and barriers with no arithmetic, whose
// output is left unwritten (bench_attention times it as the floor the loads set).
enum class ForwardKernel { automatic, flash2, wgmma, wgmma_pipelined, wgmma_loads_only };

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse = nullptr, ForwardKernel kernel = ForwardKernel::automatic);

// An instrument: the head-dim-512 softmax group (the wgmma forward's schedule there) run once,
// returning the cycle counters its warpgroups read at each step of their key loops in the CTA of
// head 0's last query tile (the most key tiles under a causal mask): int64 [3, tiles, events], the
// warpgroups in the order P·V 0, P·V 1, softmax (events: attention_fwd_wgmma.cu, TraceEvent). It runs
// in the clusters the op would (pairs at an even GQA group, or G4_ATTENTION_CLUSTER); that CTA is the
// first of its cluster.
// bench_attention --trace prints where a tile's time goes.
Tensor attention_trace(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale);

// Which backward runs: the flash kernel (attention_bwd.cu), or the one over chunks of keys whose
// products run on cuBLASLt (attention_bwd_chunked.cu; key_chunk keys per chunk, a multiple of 128,
// 0 for the default). automatic (bench_attention, H100): the chunked one above head dim 256, and
// at 256 unless a sliding window spans at most a quarter of the keys (1.3-1.6x the flash one,
// causal S 1024-8192); the flash one otherwise — the chunked one's products span whole chunks of
// keys, and under a 1024-key window it measured equal at S 4096 and 7% slower at 8192. So Gemma
// 4's sliding layers train on the flash one at the usual lengths.
enum class BackwardKernel { automatic, flash, key_chunked };

// The kernel `automatic` stands for with head dims d (q, k) and dv (v), the mask's window and Sk.
BackwardKernel automatic_backward_kernel(int64_t d, int64_t dv, int64_t window, int64_t sk);

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv, BackwardKernel kernel = BackwardKernel::automatic, int key_chunk = 0);

// out, lse, lse_b f32; out_b bf16 or f32 (checked by ops/attention.cpp).
void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b);

}  // namespace g4::ops::cuda

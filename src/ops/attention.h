// Scaled dot-product attention with grouped KV heads and a mask *description* (never a
// materialised S×S mask on the hot path). Softmax is accumulated in fp32 (f64 for f64 inputs).
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// Which keys a query may see. Query i of the call sits at absolute index q_start + i of the
// sequence; key j at k_start + j (a KV cache or a context-parallel shard sets these).
struct AttentionMask {
  bool causal = true;       // key index <= query index
  int64_t window = 0;       // > 0: causal: q - k < window; bidirectional: |q - k| < window
  int64_t q_start = 0;
  int64_t k_start = 0;
  Tensor key_valid;         // optional [B, Sk] (any int/bool dtype): 0 = padding key, never seen
  Tensor q_doc, k_doc;      // optional [B, Sq] / [B, Sk] i32 document ids: only same-document keys
  // Optional [B, Sq] / [B, Sk] integer block ids, -1 = in no block (Gemma 4's images on sliding
  // layers of a use_bidirectional_attention "vision" model): with causal, a query also sees the
  // later keys of its own block. The window still applies, one-sided (q - k < window), after that
  // OR: transformers clips a block by the window but never hides a future key of the block.
  // Ignored on bidirectional masks. CPU and CUDA attention, and ring attention (ids of the whole
  // sequence, carried with each rank's keys).
  Tensor q_block, k_block;
};

// q [B, Sq, nH, d], k [B, Sk, nKV, d], v [B, Sk, nKV, dv]; nH % nKV == 0 (query head h uses kv
// head h / (nH / nKV)). Returns out [B, Sq, nH, dv]; if lse != nullptr also writes the
// log-sum-exp of the scaled scores, [B, nH, Sq] f32 (f64 for f64 inputs), needed by backward.
// A query that sees no key gets output 0 and lse = -inf; a NaN score makes its row NaN (output and
// lse), as in PyTorch.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse = nullptr);

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv);

// Folds the attention over one more block of keys into a running one (ring attention, which sees
// the keys block by block): out [B, Sq, nH, dv] and lse [B, nH, Sq] hold the attention of the
// queries over the keys so far, out_b and lse_b (attention's out and lse) over the new block.
// In place: lse' = logaddexp(lse, lse_b), out' = e^(lse - lse') out + e^(lse_b - lse') out_b. A
// query the block shows nothing (lse_b = -inf) keeps its row; one that has seen nothing yet (lse =
// -inf) takes the block's. Exact math in fp32 (f64 for f64): on the CPU out, lse, out_b and lse_b
// are all f32 or all f64; on the GPU out and lse are f32 and out_b bf16 or f32, lse_b f32.
void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b);

}  // namespace g4::ops

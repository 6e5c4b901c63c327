// Differentiable versions of the ops the model uses. Each computes the forward with src/ops and,
// when recording, captures what its backward needs. Shapes follow the ops headers.
#pragma once
#include <vector>

#include "autograd/variable.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/moe.h"

namespace g4::ag {

Var add(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var scale(const Var& a, double s);
Var reshape(const Var& x, const Shape& shape);
Var narrow(const Var& x, int64_t dim, int64_t start, int64_t len);
Var concat(const std::vector<Var>& xs, int64_t dim);

Var linear(const Var& x, const Var& w);  // x · wᵀ, w [out, in]
Var matmul(const Var& x, const Var& w);  // x · w, x [..., K], w [K, N] (e.g. probabilities times an embedding table)
Var rmsnorm(const Var& x, const Var& w, double eps);  // w may be an undefined Var (no weight)
Var rope(const Var& x, const Tensor& positions, const Tensor& inv_freq);
Var attention(const Var& q, const Var& k, const Var& v, const ops::AttentionMask& mask, double scale);
Var embedding(const Var& weight, const Tensor& ids, int64_t padding_idx);
Var gelu_tanh(const Var& x);
Var gelu_gate(const Var& g, const Var& u);
Var gelu_gate_fused(const Var& gu);
Var softcap(const Var& x, double cap);
Var softmax_lastdim(const Var& x);
Var activation(const Var& x, ops::Activation act);
Var clamp(const Var& x, double lo, double hi);
Var mul_rowvec(const Var& x, const Var& v);  // x [..., D] * v [D]
Var sum_all(const Var& x);  // [] Var

// Mean cross-entropy over targets != ignore_index, as a [] Var (0 with a zero gradient when none counts).
Var cross_entropy_mean(const Var& logits, const Tensor& targets, int64_t ignore_index = -100);

// The LM head and the loss fused: mean cross-entropy of softcap(x · wᵀ) (softcap 0 = none) over
// targets != ignore_index, `count` of them (known on the host from the batch). It runs chunk_rows
// rows at a time and each chunk's logits live only while its loss and gradients are computed, so
// the [N, V] logits are never stored. The gradients of x and w are computed in the forward, since
// the loss is a scalar; backward only scales them by the gradient that arrives. Equals
// cross_entropy_mean(softcap(linear(x, w))) up to summation order. The loss is [] f32 (f64 for f64).
Var linear_cross_entropy(const Var& x, const Var& w, const Tensor& targets, int64_t count, double softcap = 0,
                         int64_t chunk_rows = 0, int64_t ignore_index = -100);

// The LM head's log-probabilities of given tokens, fused and chunked like linear_cross_entropy:
// log softmax(softcap(x · wᵀ) / temperature)[target] per row (x [..., H], w [V, H], targets [...]),
// 0 where target == ignore_index. The result is [...] f32 (f64 for f64 x). The [N, V] logits are
// never stored: the backward recomputes each chunk's logits from x and w (one more LM-head GEMM)
// and feeds the per-row gradient through softmax - onehot. RL's losses are functions of these.
Var linear_token_logprobs(const Var& x, const Var& w, const Tensor& targets, double softcap = 0,
                          double temperature = 1.0, int64_t chunk_rows = 0, int64_t ignore_index = -100);

// Top-k of router probabilities: renormalised weights (differentiable) and expert ids.
Var router_topk(const Var& probs, int64_t k, Tensor& indices);
Var moe_permute(const Var& x, const ops::MoePlan& plan);
Var grouped_matmul(const Var& xs, const Var& w, const std::vector<int64_t>& offsets,
                   const Tensor& device_offsets = Tensor());
Var moe_unpermute(const Var& ys, const Var& weights, const ops::MoePlan& plan);

}  // namespace g4::ag

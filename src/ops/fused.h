// Fused forms of the norm sequences of a Gemma 4 layer, for forwards without gradients (decoding,
// rollouts, evaluation): at batch 1 a decode step is hundreds of tiny kernels, so each launch saved
// is time saved. Each equals the composition of the separate ops it replaces, with the same
// roundings (every intermediate rounded to the tensors' dtype where the separate op would store
// it); only the order of the fp32 sum of squares may differ. On the GPU each is one kernel when
// the rows suit 16-byte packs (last dim a multiple of 8 for bf16, 4 for f32; aligned), else, and on
// the CPU, the composition itself. No backward: training runs the separate ops.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace g4::ops {

// (residual + rmsnorm(a, w)) · scale, rounded after the norm, the sum and the scaling (scale 1:
// no scaling). residual and a alike [..., D], w [D].
Tensor add_rmsnorm(const Tensor& residual, const Tensor& a, const Tensor& w, double scale, double eps);

// One norm of add_rmsnorm_norms: rmsnorm(h, weight), then times `scale` (1: no scaling).
struct NormOfSum {
  Tensor weight;
  double scale = 1.0;
};

// add_rmsnorm(residual, a, w, scale, eps) = h and the norms that read it: returns {h, rmsnorm(h,
// norms[0].weight) · norms[0].scale, ...}, each rounded after the norm and after its scaling as
// ops::scale rounds. A layer's attention output joins the residual here, and the norms of that
// residual (its MLP's input; an MoE layer's router and experts inputs too) come from the same pass;
// so does a layer's output (scaled by its layer scalar) with the next layer's input norm. At most 3
// norms.
std::vector<Tensor> add_rmsnorm_norms(const Tensor& residual, const Tensor& a, const Tensor& w, double eps,
                                      const std::vector<NormOfSum>& norms, double scale = 1.0);

// add_rmsnorm_norms(residual, linear(x, w_proj), w, eps, norms, scale): a projection that joins the
// residual stream (a layer's attention output, its MLP's down projection, E4B's per-layer
// projection) and the norms that read the sum. x [..., K], w_proj [N, K], residual [..., N]. On the
// GPU, with G4_DECODE_NORMS_IN_GEMV=1, one GEMV launch whose last block to finish makes the norms,
// when x is one row (a batch-1 decode step) and the GEMV takes the shapes; its sums of squares run in
// another order than the separate kernel's.
std::vector<Tensor> linear_add_rmsnorm_norms(const Tensor& x, const Tensor& w_proj, const Tensor& residual,
                                             const Tensor& w, double eps, const std::vector<NormOfSum>& norms,
                                             double scale = 1.0);

// rmsnorm(a, wa) + rmsnorm(b, wb), a and b alike [..., D], wa and wb [D].
Tensor rmsnorm_sum(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb, double eps);

// add_rmsnorm_norms(residual, rmsnorm_sum(a, wa, b, wb, eps), w, eps, norms, scale) in one pass: the
// end of an MoE layer (its dense MLP's and routed experts' outputs, each normed, summed, normed into
// the residual and scaled by the layer scalar) with the next layer's input norm.
std::vector<Tensor> rmsnorm_sum_add_norms(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb,
                                          const Tensor& residual, const Tensor& w, double eps,
                                          const std::vector<NormOfSum>& norms, double scale = 1.0);

// rope(rmsnorm(x, w), positions, inv_freq) (ops/rope.h): x [B, S, nH, d], w [d].
Tensor rmsnorm_rope(const Tensor& x, const Tensor& w, const Tensor& positions, const Tensor& inv_freq, double eps);

// gelu_gate(linear(x, w_gate), linear(x, w_up)) (a gated MLP's first half): x [..., K], the weights
// [N, K]. On the GPU one pass over both weights when x has at most 8 rows (a decode step) and the
// GEMV takes the shapes (ops/cuda/gemv.h).
Tensor gelu_gate_linear(const Tensor& x, const Tensor& w_gate, const Tensor& w_up);

// The attention inputs of one paged step (a decode step) in one pass: returns q =
// rmsnorm_rope(q_raw, wq, positions, inv_freq, eps), and, when k_raw is defined (a layer with keys
// of its own; undefined for a KV-shared layer), writes rmsnorm_rope(k_raw, wk, ...) and
// rmsnorm(v_raw) (no weight) into k_pages / v_pages at `slots`, as write_kv_pages writes them.
// q_raw [B, S, nH, d]; k_raw and v_raw [B, S, nKV, d]; positions [B, S]; slots [B·S].
Tensor norm_rope_write_kv(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                          const Tensor& v_raw, const Tensor& positions, const Tensor& inv_freq, double eps,
                          Tensor& k_pages, Tensor& v_pages, const Tensor& slots);

// router_topk(softmax_lastdim(logits), k, weights, indices) (ops/moe.h): an MoE router's choice
// from its logits [T, E] when the probabilities are not kept (decoding), each probability rounded
// to the logits' dtype as softmax_lastdim stores it. On the GPU one kernel, whose fp32 max and sum
// over a row run in another order than softmax_lastdim's.
void softmax_topk(const Tensor& logits, int64_t k, Tensor& weights, Tensor& indices);

// moe_experts(x, weights, indices, gate_up, down) (ops/moe.h) on softmax_topk(logits, k)'s routing:
// the same values. On the GPU, where every token's top-k is cheap enough for each CTA to take
// (fewer assignments than experts, as in a batch-1 decode step), the first experts kernel routes
// for itself: one kernel fewer on the step's critical path.
Tensor moe_experts_from_logits(const Tensor& x, const Tensor& logits, int64_t k, const Tensor& gate_up,
                               const Tensor& down);

// mul(gelu_tanh(a), b), the gelu rounded to the tensors' dtype as gelu_tanh stores it: the gate of
// E4B's per-layer input (its projection of the residual times the layer's slice of the per-layer
// embedding). a and b alike.
Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b);

// gelu_tanh_mul(linear(x, w), b): x [..., K], w [N, K], b [..., N]. On the GPU one GEMV pass with
// the gate in its epilogue when x has few rows (a decode step) and the GEMV takes the shapes.
Tensor gelu_tanh_mul_linear(const Tensor& x, const Tensor& w, const Tensor& b);

// linear(x, w) for each w of `weights` (a layer's q, k and v projections of the same x): on the GPU
// one launch when x has at most 8 rows and the GEMV takes every weight (at most 3).
std::vector<Tensor> linear_many(const Tensor& x, const std::vector<Tensor>& weights);

}  // namespace g4::ops

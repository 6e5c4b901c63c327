// Pointwise arithmetic and small shape ops. Float ops take f32 or f64 on the CPU, bf16 or f32 on
// the GPU (fp32 arithmetic), and return the input dtype; binary ops need equal shapes and dtypes
// unless stated.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double s);  // a * s
// acc += alpha * x, in place. On the GPU acc may be wider than x: an f32 acc accumulates a bf16 or
// f32 x (gradient accumulation into fp32 buffers); a bf16 acc takes a bf16 x.
void add_(Tensor& acc, const Tensor& x, double alpha = 1.0);
void scale_(Tensor& a, double s);

// x [..., D] * v [D] (v broadcast over rows), and its gradients.
Tensor mul_rowvec(const Tensor& x, const Tensor& v);
Tensor sum_rows(const Tensor& x);  // x [..., D] -> [D]: sum over all leading dims

// gelu with the tanh approximation (HF "gelu_pytorch_tanh").
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_tanh_backward(const Tensor& dy, const Tensor& x);

// gelu_tanh(g) * u and its gradients (the gated MLP activation).
Tensor gelu_gate(const Tensor& g, const Tensor& u);
void gelu_gate_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);

// Same on a fused [N, 2I] tensor whose first I columns are the gate and last I the up: -> [N, I].
Tensor gelu_gate_fused(const Tensor& gu);
Tensor gelu_gate_fused_backward(const Tensor& dy, const Tensor& gu);

// c * tanh(x / c) (final logit soft-capping) and its gradient.
Tensor softcap(const Tensor& x, double cap);
Tensor softcap_backward(const Tensor& dy, const Tensor& y, double cap);  // uses the output y
// softcap(x.to(F32), cap) in one pass (the LM head's bf16 logits, widened as the training loss
// widens them, then capped): the same bits, without the f32 copy in between. Inference only; its
// gradient would be softcap_backward's.
Tensor softcap_to_f32(const Tensor& x, double cap);

// Pointwise activations of the audio tower (torch's definitions; softplus is torch's with beta 1
// and threshold 20: x above 20 passes through) and their gradients from the input x.
enum class Activation { kRelu, kSilu, kSigmoid, kSoftplus };
Tensor activation(const Tensor& x, Activation act);
Tensor activation_backward(const Tensor& dy, const Tensor& x, Activation act);

// torch.clamp(x, lo, hi) and its gradient: dy where lo <= x <= hi, else 0 (bounds may be infinite).
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi);

// Softmax over the last dimension, accumulated in the input precision (f32 on the CPU, fp32 on the
// GPU). A row that is entirely -inf gives zeros.
Tensor softmax_lastdim(const Tensor& x);
Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y);

// Copy of x[..., start:start+len, ...] along dimension `dim`, and the gradient that scatters dy
// back into zeros of the input's shape.
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len);
Tensor narrow_backward(const Tensor& dy, const Shape& input_shape, int64_t dim, int64_t start);
// Concatenation along `dim` (all other dims equal).
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);

// Sum of all elements (accumulated in double on the CPU, fp32 on the GPU), returned as a [] tensor
// of x's dtype on x's device (no host synchronisation).
Tensor sum_all(const Tensor& x);

}  // namespace g4::ops

// Dense matrix products. Tensors with more than two dimensions are treated as matrices whose
// rows are all leading dimensions flattened: a [B,S,K] input is a [B*S, K] matrix.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// C = op(A) · op(B), with op(X) = Xᵀ when the flag is set. A: [M,K] (or [K,M] if trans_a),
// B: [K,N] (or [N,K] if trans_b). Leading dims of A are flattened into M; B must be 2-D.
// Result shape: A's leading dims + [N] when !trans_a, else [M, N]. f32 or f64 on the CPU; bf16 or
// f32 on the GPU (cuBLASLt, fp32 accumulation, no TF32). A and B share one dtype.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// C = alpha · op(A) · op(B) + beta · C into an existing [M,N] tensor (accumulating weight
// gradients; beta = 0 overwrites C, ignoring what it held). On the GPU, C may be f32 while A and B
// are bf16 (fp32 gradient accumulation).
void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha = 1.0,
                double beta = 1.0);

// y = x · Wᵀ for a weight W [out, in] in Hugging Face's Linear layout: x [..., in] -> y [..., out].
Tensor linear(const Tensor& x, const Tensor& w);
// Gradients of linear: dx = dy · W, dW = dyᵀ · x (dW returned as a new tensor).
Tensor linear_backward_input(const Tensor& dy, const Tensor& w);
Tensor linear_backward_weight(const Tensor& dy, const Tensor& x);

}  // namespace g4::ops

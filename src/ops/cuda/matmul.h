// CUDA implementations of ops/matmul.h (cuBLASLt). Same contracts as the CPU ops, for bf16 or f32
// tensors on the GPU; matmul_acc also accumulates bf16 products into an f32 C.
#pragma once
#include "core/tensor.h"

namespace g4::ops::cuda {

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha, double beta);
Tensor linear(const Tensor& x, const Tensor& w);
Tensor linear_backward_input(const Tensor& dy, const Tensor& w);
Tensor linear_backward_weight(const Tensor& dy, const Tensor& x);

}  // namespace g4::ops::cuda

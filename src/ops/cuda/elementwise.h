// CUDA implementations of ops/elementwise.h (same names and arguments; ops/cpu forwards GPU tensors
// here). Float ops take bf16 or f32 tensors and compute in fp32; narrow/concat take any dtype.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace g4::ops::cuda {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double s);
// acc f32 with x bf16 or f32, or acc bf16 with x bf16.
void add_(Tensor& acc, const Tensor& x, double alpha = 1.0);
void scale_(Tensor& a, double s);

Tensor mul_rowvec(const Tensor& x, const Tensor& v);
Tensor sum_rows(const Tensor& x);

Tensor gelu_tanh(const Tensor& x);
Tensor gelu_tanh_backward(const Tensor& dy, const Tensor& x);
Tensor gelu_gate(const Tensor& g, const Tensor& u);
void gelu_gate_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);
Tensor gelu_gate_fused(const Tensor& gu);
Tensor gelu_gate_fused_backward(const Tensor& dy, const Tensor& gu);

Tensor softcap(const Tensor& x, double cap);
Tensor softcap_backward(const Tensor& dy, const Tensor& y, double cap);

Tensor softmax_lastdim(const Tensor& x);
Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y);

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len);
Tensor narrow_backward(const Tensor& dy, const Shape& input_shape, int64_t dim, int64_t start);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);

Tensor sum_all(const Tensor& x);

}  // namespace g4::ops::cuda

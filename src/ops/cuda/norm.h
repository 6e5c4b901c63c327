// CUDA implementation of ops/norm.h (bf16 or f32 x and w, fp32 arithmetic).
#pragma once
#include "core/tensor.h"

namespace g4::ops::cuda {

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw);

}  // namespace g4::ops::cuda

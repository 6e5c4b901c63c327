// RMSNorm over the last dimension: y = x * (mean(x²) + eps)^-0.5 * w (w, not 1 + w; Gemma 4).
// An undefined `w` means a norm without weight (v_norm, the router's norm).
#pragma once
#include "core/tensor.h"

namespace g4::ops {

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps);
// Gradients; dw is only written when w is defined (then shaped like w).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw);

}  // namespace g4::ops

// The CPU reference of ops/attention.h (attention): readable loops and OpenBLAS in f32 or
// f64. Called by the dispatcher (ops/attention.cpp) after it has validated the arguments.
#pragma once
#include "ops/attention.h"

namespace g4::ops::cpu {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace g4::ops::cpu

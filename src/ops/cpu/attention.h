// The CPU reference of ops/attention.h (one (batch, head, query) row at a time in f32 or f64),
// called by ops/attention.cpp once it has checked the arguments.
#pragma once
#include "ops/attention.h"

namespace g4::ops::cpu {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk, Tensor& dv);
void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b);

}  // namespace g4::ops::cpu

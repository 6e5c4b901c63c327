// CUDA attention (flash-style, bf16 in, fp32 accumulate): the GPU definitions of ops/attention.h,
// reached through G4_FORWARD_TO_CUDA when q lives on the GPU. lse is f32; gradients are bf16.
#pragma once
#include "ops/attention.h"

namespace g4::ops::cuda {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse = nullptr);

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv);

}  // namespace g4::ops::cuda

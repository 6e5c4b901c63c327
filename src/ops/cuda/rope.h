// CUDA implementation of ops/rope.h (x bf16 or f32; positions i32 or i64; inv_freq f32; all on
// the GPU).
#pragma once
#include "core/tensor.h"

namespace g4::ops::cuda {

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq);
Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq);

}  // namespace g4::ops::cuda

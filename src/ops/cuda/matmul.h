// CUDA implementations of ops/matmul.h (cuBLASLt). Same contracts as the CPU ops, for bf16 or f32
// tensors on the GPU; matmul_acc also accumulates bf16 products into an f32 C.
#pragma once
#include "ops/matmul.h"

namespace g4::ops::cuda {
#include "ops/backend/matmul.inc"
}  // namespace g4::ops::cuda

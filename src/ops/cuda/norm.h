// CUDA implementation of ops/norm.h (bf16 or f32 x and w, fp32 arithmetic).
#pragma once
#include "ops/norm.h"

namespace g4::ops::cuda {
#include "ops/backend/norm.inc"
}  // namespace g4::ops::cuda

// CUDA implementation of ops/rope.h (x bf16 or f32; positions i32 or i64; inv_freq f32; all on
// the GPU).
#pragma once
#include "ops/rope.h"

namespace g4::ops::cuda {
#include "ops/backend/rope.inc"
}  // namespace g4::ops::cuda

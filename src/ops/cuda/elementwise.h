// CUDA implementations of ops/elementwise.h (same names and arguments; ops/elementwise.cpp and
// ops/shape_ops.cpp check the arguments and call these for GPU tensors). Float ops take bf16 or
// f32 tensors and compute in fp32; narrow/concat take any dtype.
#pragma once
#include <vector>

#include "ops/elementwise.h"

namespace g4::ops::cuda {
#include "ops/backend/elementwise.inc"
#include "ops/backend/shape_ops.inc"
}  // namespace g4::ops::cuda

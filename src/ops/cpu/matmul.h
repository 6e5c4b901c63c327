// The CPU reference of ops/matmul.h (one OpenBLAS gemm per product, f32 or f64), called by
// ops/matmul.cpp once it has checked the arguments.
#pragma once
#include "ops/matmul.h"

namespace g4::ops::cpu {
#include "ops/backend/matmul.inc"
}  // namespace g4::ops::cpu

// The CPU reference of ops/moe.h (loops, and one OpenBLAS gemm per expert group, in f32 or f64),
// called by ops/moe.cpp once it has checked the arguments.
#pragma once
#include "ops/moe.h"

namespace g4::ops::cpu {
#include "ops/backend/moe.inc"
}  // namespace g4::ops::cpu

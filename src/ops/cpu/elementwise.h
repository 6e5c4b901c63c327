// The CPU reference of ops/elementwise.h (loops in f32 or f64), called by ops/elementwise.cpp once
// it has checked the arguments.
#pragma once
#include "ops/elementwise.h"

namespace g4::ops::cpu {
#include "ops/backend/elementwise.inc"
}  // namespace g4::ops::cpu

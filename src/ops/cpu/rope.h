// The CPU reference of ops/rope.h (loops in f32 or f64), called by ops/rope.cpp once it has checked
// the arguments.
#pragma once
#include "ops/rope.h"

namespace g4::ops::cpu {
#include "ops/backend/rope.inc"
}  // namespace g4::ops::cpu

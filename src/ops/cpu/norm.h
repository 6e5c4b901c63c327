// The CPU reference of ops/norm.h (loops in f32 or f64), called by ops/norm.cpp once it has checked
// the arguments.
#pragma once
#include "ops/norm.h"

namespace g4::ops::cpu {
#include "ops/backend/norm.inc"
}  // namespace g4::ops::cpu

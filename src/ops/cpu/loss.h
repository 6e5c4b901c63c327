// The CPU reference of ops/loss.h: plain loops (and OpenBLAS for products) in f32 or f64,
// called by ops/loss.cpp once it has checked the arguments.
#pragma once
#include "ops/loss.h"

namespace g4::ops::cpu {
#include "ops/backend/loss.inc"
}  // namespace g4::ops::cpu

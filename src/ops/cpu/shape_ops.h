// The CPU reference of the shape ops of ops/elementwise.h (narrow, narrow_backward, concat): byte
// copies for any dtype, called by ops/shape_ops.cpp once it has checked the arguments.
#pragma once
#include "ops/elementwise.h"

namespace g4::ops::cpu {
#include "ops/backend/shape_ops.inc"
}  // namespace g4::ops::cpu

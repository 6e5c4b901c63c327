// The CPU reference of ops/paged_attention.h (one (query row, head) at a time in f32 or f64),
// called by ops/paged_attention.cpp once it has checked the arguments.
#pragma once
#include "ops/paged_attention.h"

namespace g4::ops::cpu {
#include "ops/backend/paged_attention.inc"
}  // namespace g4::ops::cpu

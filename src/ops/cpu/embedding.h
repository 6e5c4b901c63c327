// The CPU reference of ops/embedding.h (a row gather (any dtype) and a scatter-add in f32 or f64),
// called by ops/embedding.cpp once it has checked the arguments.
#pragma once
#include "ops/embedding.h"

namespace g4::ops::cpu {
#include "ops/backend/embedding.inc"
}  // namespace g4::ops::cpu

// The CPU reference of ops/loss.h (row by row in double), called by ops/loss.cpp once it has
// checked the arguments.
#pragma once
#include "ops/loss.h"

namespace g4::ops::cpu {
#include "ops/backend/loss.inc"
}  // namespace g4::ops::cpu

// The CPU reference of ops/optim.h (loops in the master's precision), called by ops/optim.cpp once
// it has checked the arguments.
#pragma once
#include "ops/optim.h"

namespace g4::ops::cpu {
#include "ops/backend/optim.inc"
}  // namespace g4::ops::cpu

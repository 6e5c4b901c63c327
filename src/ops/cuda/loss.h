// CUDA implementations of ops/loss.h (see there for the contracts).
#pragma once
#include "ops/loss.h"

namespace g4::ops::cuda {
#include "ops/backend/loss.inc"
}  // namespace g4::ops::cuda

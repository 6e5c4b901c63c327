// CUDA implementations of ops/optim.h (see there for the contracts).
#pragma once
#include "ops/optim.h"

namespace g4::ops::cuda {
#include "ops/backend/optim.inc"
}  // namespace g4::ops::cuda

// CUDA implementations of ops/embedding.h (see there for the contracts).
#pragma once
#include "ops/embedding.h"

namespace g4::ops::cuda {
#include "ops/backend/embedding.inc"
}  // namespace g4::ops::cuda

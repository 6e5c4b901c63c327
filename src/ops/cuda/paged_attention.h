// CUDA paged attention (bf16 pages, fp32 softmax): the GPU definitions of ops/paged_attention.h,
// called by ops/paged_attention.cpp (which checks the arguments) when q lives on the GPU.
#pragma once
#include "ops/paged_attention.h"

namespace g4::ops::cuda {
#include "ops/backend/paged_attention.inc"
}  // namespace g4::ops::cuda

// diffusion::step_stats for logits on the GPU (diffusion/step_stats.h checks the arguments).
#pragma once
#include "diffusion/step_stats.h"

namespace g4::diffusion::cuda {

StepStats step_stats(const Tensor& logits, float temperature, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& draws, DType processed_dtype);

}  // namespace g4::diffusion::cuda

// The GPU path of gen::sample_batch (generate/sampling.h), which checks the arguments and calls
// it for logits on the GPU.
#pragma once
#include <vector>

#include "generate/sampling.h"

namespace g4::gen::cuda {

std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows);

}  // namespace g4::gen::cuda

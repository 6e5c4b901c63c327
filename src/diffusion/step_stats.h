// What one denoising step needs of the denoiser's logits, row by row (DIFFUSION.md §E.1 steps
// 9-12): the temperature-scaled logits (the next step's self-conditioning input), their argmax,
// their entropy, and a token drawn from softmax(processed) by g4's own exponential race (the
// Philox mode; the torch-compatible mode draws on the host, diffusion/sampler.h). On the GPU one
// kernel reads the [R, V] logits once and returns R numbers of each kind, so the vocabulary never
// crosses to the host; the CPU version is the reference it is tested against.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace g4::diffusion {

struct StepStats {
  Tensor processed;              // [R, V] logits / temperature (fp32 division), in the requested dtype
  std::vector<int64_t> argmax;   // first maximum of processed
  std::vector<float> entropy;    // entropy of softmax(processed), nats
  std::vector<int64_t> sample;   // the race's winner per row (empty when no seeds were given)
};

// logits [R, V] f32 (CPU or GPU). seeds/draws: per row, the Philox key and draw index of the
// exponential race (gen::detail::race_noise: token t wins when processed_t - ln E_t is largest);
// empty: no sample. processed_dtype: f32, or bf16 for a bf16 model's self-conditioning input.
StepStats step_stats(const Tensor& logits, float temperature, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& draws, DType processed_dtype = DType::F32);

}  // namespace g4::diffusion

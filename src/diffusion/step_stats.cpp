#include "diffusion/step_stats.h"

#include <cmath>

#include "generate/sampling_math.h"
#ifdef G4_WITH_CUDA
#include "diffusion/cuda/step_stats.h"
#endif

namespace g4::diffusion {

StepStats step_stats(const Tensor& logits, float temperature, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& draws, DType processed_dtype) {
  G4_CHECK(logits.defined() && logits.dim() == 2 && logits.dtype() == DType::F32, "step_stats: logits must be [R, V] f32, got ",
           logits.describe());
  G4_CHECK(std::isfinite(temperature) && temperature > 0, "step_stats: temperature must be finite and > 0, got ",
           temperature);
  const int64_t R = logits.size(0), V = logits.size(1);
  G4_CHECK(seeds.size() == draws.size() && (seeds.empty() || static_cast<int64_t>(seeds.size()) == R),
           "step_stats: ", seeds.size(), " seeds and ", draws.size(), " draws for ", R, " rows");
  G4_CHECK(processed_dtype == DType::F32 || processed_dtype == DType::BF16, "step_stats: processed logits are f32 or bf16");
#ifdef G4_WITH_CUDA
  if (logits.device() == Device::CUDA) return cuda::step_stats(logits, temperature, seeds, draws, processed_dtype);
#endif
  StepStats out;
  Tensor processed = Tensor::empty({R, V}, DType::F32);
  out.argmax.resize(static_cast<size_t>(R));
  out.entropy.resize(static_cast<size_t>(R));
  if (!seeds.empty()) out.sample.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    const float* z = logits.data<float>() + r * V;
    float* p = processed.data<float>() + r * V;
    int64_t best = 0;
    for (int64_t v = 0; v < V; ++v) {
      G4_CHECK(!std::isnan(z[v]), "step_stats: row ", r, " of the logits holds NaN at token ", v);
      p[v] = z[v] / temperature;
      if (p[v] > p[best]) best = v;
    }
    out.argmax[r] = best;
    // H = ln(sum e^(p - max)) - sum (p - max) e^(p - max) / sum e^(p - max)
    const double m = p[best];
    double s = 0, w = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double d = p[v] - m, e = std::exp(d);
      if (e == 0) continue;  // a -inf logit (or one e^-745 below the max) adds nothing, not -inf * 0
      s += e;
      w += d * e;
    }
    out.entropy[r] = static_cast<float>(std::log(s) - w / s);
    if (seeds.empty()) continue;
    int64_t win = 0;
    float win_key = -INFINITY;
    for (int64_t g = 0; g * 4 < V; ++g) {
      float ln_e[4];
      gen::detail::race_noise(seeds[r], draws[r], static_cast<uint64_t>(g), ln_e);
      for (int64_t i = 0; i < 4 && g * 4 + i < V; ++i) {
        const float key = p[g * 4 + i] - ln_e[i];
        if (key > win_key) {
          win_key = key;
          win = g * 4 + i;
        }
      }
    }
    out.sample[r] = win;
  }
  out.processed = processed_dtype == DType::F32 ? processed : processed.to(processed_dtype);
  return out;
}

}  // namespace g4::diffusion

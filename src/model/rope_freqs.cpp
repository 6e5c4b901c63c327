#include "model/rope_freqs.h"

#include <cmath>

namespace g4::model {

Tensor rope_inv_freq(const io::RopeSpec& rope, int64_t d) {
  G4_CHECK(d > 0 && d % 2 == 0, "RoPE needs an even head dim, got ", d);
  Tensor t = Tensor::zeros({d / 2}, DType::F32);
  float* f = t.data<float>();
  int64_t rotated = d / 2;
  if (rope.type == "proportional") {
    rotated = static_cast<int64_t>(std::floor(rope.partial_rotary_factor * static_cast<double>(d) / 2.0));
    rotated = std::min(rotated, d / 2);
  } else {
    G4_CHECK(rope.partial_rotary_factor == 1.0, "rope_type '", rope.type, "' with partial_rotary_factor ",
             rope.partial_rotary_factor, " is not supported (only proportional RoPE rotates part of a head)");
  }
  const float theta = static_cast<float>(rope.theta);
  for (int64_t i = 0; i < rotated; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(d);
    f[i] = 1.0f / std::pow(theta, exponent);
  }
  if (rope.factor != 1.0)
    for (int64_t i = 0; i < d / 2; ++i) f[i] = static_cast<float>(f[i] / rope.factor);
  return t;
}

}  // namespace g4::model

// Rotary embedding on the CPU. Hugging Face computes the angle table as
// float32(position) * inv_freq in float32 and takes cos/sin of that float, then casts them to the
// activation dtype; we do the same per element so fp32 results match bit for bit where possible.
#include "ops/cpu/rope.h"

#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
// Rotates each pair (x[i], x[i + d/2]) by `sign` times its angle; sign = -1 is the inverse
// rotation (the backward pass, since a rotation's transpose is its inverse).
Tensor rotate(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float sign) {
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(2), d = x.size(3), half = d / 2;
  const std::vector<int64_t> pos = cpu::read_indices(positions);
  const float* freq = inv_freq.data<float>();

  return cpu::dispatch_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (x.numel() > (1 << 15))
    for (int64_t t = 0; t < batch * seq; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * freq[i];
        const T c = static_cast<T>(std::cos(angle));
        const T s = static_cast<T>(sign * std::sin(angle));
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t base = (t * heads + h) * d;
          const T x1 = px[base + i], x2 = px[base + i + half];
          py[base + i] = x1 * c - x2 * s;
          py[base + i + half] = x2 * c + x1 * s;
        }
      }
    }
    return y;
  });
}
}  // namespace

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  return rotate("rope", x, positions, inv_freq, 1.0f);
}

Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq) {
  return rotate("rope_backward", dy, positions, inv_freq, -1.0f);
}

}  // namespace g4::ops::cpu

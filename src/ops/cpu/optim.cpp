// AdamW and the squared norm on the CPU: plain loops in the master's precision.
#include "ops/cpu/optim.h"

#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
// One tensor's update in torch's operation order (each line one rounding in T, as torch's
// foreach kernels round).
template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, T gscale, T gextra, T decay, T b1, T b2, T eps,
                  T step_size, T bc2_sqrt, const uint8_t* decay_mask, bf16* out) {
#pragma omp parallel for if (n > 65536)
  for (int64_t j = 0; j < n; ++j) {
    const T gj = g ? (g[j] * gscale) * gextra : T(0);  // factors of 1 are exact
    p[j] *= (!decay_mask || decay_mask[j]) ? decay : T(1);
    m[j] += (gj - m[j]) * (T(1) - b1);  // torch's lerp form
    v[j] = v[j] * b2 + (T(1) - b2) * gj * gj;
    const T denom = std::sqrt(v[j]) / bc2_sqrt + eps;
    p[j] -= step_size * m[j] / denom;
    if (out) out[j] = bf16::from_float(static_cast<float>(p[j]));
  }
}
}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const char* op = "adamw_step";
  const Tensor g = !grad.defined() || grad.dtype() == master.dtype() ? grad : grad.to(master.dtype());
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
  const double decay_factor = decay ? 1.0 - h.lr * h.weight_decay : 1.0;
  bf16* out = param_bf16_out ? param_bf16_out->data<bf16>() : nullptr;
  cpu::dispatch_float(op, master, [&](auto tag) {
    using T = decltype(tag);
    const T extra = grad_scale_tensor.defined() ? static_cast<T>(element_as_double(grad_scale_tensor, 0)) : T(1);
    adamw_update<T>(master.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(), g.defined() ? g.data<T>() : nullptr,
                    master.numel(), static_cast<T>(h.grad_scale), extra,
                    static_cast<T>(decay_factor), static_cast<T>(h.beta1), static_cast<T>(h.beta2),
                    static_cast<T>(h.eps), static_cast<T>(h.lr / bc1), static_cast<T>(bc2_sqrt),
                    decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr, out);
  });
}

Tensor squared_norm(const Tensor& g) {
  double sq = 0;
  if (g.dtype() == DType::BF16) {
    const bf16* d = g.data<bf16>();
    for (int64_t i = 0; i < g.numel(); ++i) sq += static_cast<double>(d[i].to_float()) * d[i].to_float();
    return Tensor::scalar(sq, DType::F32);
  }
  return cpu::dispatch_float("squared_norm", g, [&](auto tag) {
    using T = decltype(tag);
    const T* d = g.data<T>();
    for (int64_t i = 0; i < g.numel(); ++i) sq += static_cast<double>(d[i]) * static_cast<double>(d[i]);
    return Tensor::scalar(sq, g.dtype());
  });
}

}  // namespace g4::ops::cpu

// AdamW and the squared norm on the CPU: plain loops in the master's precision.
#include "ops/cpu/optim.h"

#include <bit>
#include <cmath>
#include <type_traits>

#include "ops/cpu/common.h"
#include "ops/master_bits.h"

namespace g4::ops::cpu {

namespace {
// A moment element as the update reads it (widened from bf16) and stores it (rounded to nearest even).
template <class T>
T load_moment(const T& x) {
  return x;
}
inline float load_moment(const bf16& x) { return x.to_float(); }
template <class T>
void store_moment(T& dst, T x) {
  dst = x;
}
inline void store_moment(bf16& dst, float x) { dst = bf16::from_float(x); }

// The update's scalars, computed in double and each rounded once to T.
template <class T>
struct Scalars {
  T gscale, gextra, decay, b1, b2, eps, step_size, bc2_sqrt;
};

template <class T>
Scalars<T> scalars(const AdamWHyper& h, bool decay, const Tensor& grad_scale_tensor) {
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  return {static_cast<T>(h.grad_scale),
          static_cast<T>(grad_scale_tensor.defined() ? element_as_double(grad_scale_tensor, 0) : 1.0),
          static_cast<T>(decay ? 1.0 - h.lr * h.weight_decay : 1.0),
          static_cast<T>(h.beta1),
          static_cast<T>(h.beta2),
          static_cast<T>(h.eps),
          static_cast<T>(h.lr / bc1),
          static_cast<T>(std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step))))};
}

// One element's update in torch's operation order (each line one rounding in T, as torch's
// foreach kernels round). m and v are updated in T and stored in their own dtype; p steps with
// the unrounded values.
template <class T, class M, class V>
void adamw_one(T& p, M& m_store, V& v_store, T g, bool decays, const Scalars<T>& d) {
  T m = load_moment(m_store), v = load_moment(v_store);
  p *= decays ? d.decay : T(1);
  m += (g - m) * (T(1) - d.b1);  // torch's lerp form
  v = v * d.b2 + (T(1) - d.b2) * g * g;
  const T denom = std::sqrt(v) / d.bc2_sqrt + d.eps;
  p -= d.step_size * m / denom;
  store_moment(m_store, m);
  store_moment(v_store, v);
}

template <class T>
T scaled_grad(const T* g, int64_t j, const Scalars<T>& d) {
  return g ? (g[j] * d.gscale) * d.gextra : T(0);  // factors of 1 are exact
}

template <class T, class M, class V>
void adamw_update(T* p, M* m, V* v, const T* g, int64_t n, const Scalars<T>& d, const uint8_t* decay_mask,
                  bf16* out) {
#pragma omp parallel for if (n > 65536)
  for (int64_t j = 0; j < n; ++j) {
    adamw_one(p[j], m[j], v[j], scaled_grad(g, j, d), !decay_mask || decay_mask[j], d);
    if (out) out[j] = bf16::from_float(static_cast<float>(p[j]));
  }
}

template <class M, class V>
void adamw_update_remainders(uint16_t* param, int16_t* rem, M* m, V* v, const float* g, int64_t n,
                             const Scalars<float>& d, const uint8_t* decay_mask) {
#pragma omp parallel for if (n > 65536)
  for (int64_t j = 0; j < n; ++j) {
    float p = std::bit_cast<float>(join_master_bits(param[j], rem[j]));
    adamw_one(p, m[j], v[j], scaled_grad(g, j, d), !decay_mask || decay_mask[j], d);
    split_master_bits(std::bit_cast<uint32_t>(p), param[j], rem[j]);
  }
}

// Calls f(m, v) with the moments' element pointers: T, or bf16 beside an f32 master.
template <class T, class F>
void with_moments(Tensor& exp_avg, Tensor& exp_avg_sq, F&& f) {
  const bool m16 = exp_avg.dtype() == DType::BF16, v16 = exp_avg_sq.dtype() == DType::BF16;
  if constexpr (std::is_same_v<T, float>) {
    if (m16 && v16) return f(exp_avg.data<bf16>(), exp_avg_sq.data<bf16>());
    if (m16) return f(exp_avg.data<bf16>(), exp_avg_sq.data<T>());
    if (v16) return f(exp_avg.data<T>(), exp_avg_sq.data<bf16>());
  }
  f(exp_avg.data<T>(), exp_avg_sq.data<T>());
}
}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const Tensor g = !grad.defined() || grad.dtype() == master.dtype() ? grad : grad.to(master.dtype());
  bf16* out = param_bf16_out ? param_bf16_out->data<bf16>() : nullptr;
  const uint8_t* mask = decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr;
  cpu::dispatch_float("adamw_step", master, [&](auto tag) {
    using T = decltype(tag);
    const Scalars<T> d = scalars<T>(h, decay, grad_scale_tensor);
    with_moments<T>(exp_avg, exp_avg_sq, [&](auto* m, auto* v) {
      adamw_update<T>(master.data<T>(), m, v, g.defined() ? g.data<T>() : nullptr, master.numel(), d, mask, out);
    });
  });
}

void adamw_step_remainders(Tensor& param, Tensor& remainder, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                           const AdamWHyper& h, bool decay, const Tensor& decay_mask,
                           const Tensor& grad_scale_tensor) {
  const Tensor g = !grad.defined() || grad.dtype() == DType::F32 ? grad : grad.to(DType::F32);
  const Scalars<float> d = scalars<float>(h, decay, grad_scale_tensor);
  with_moments<float>(exp_avg, exp_avg_sq, [&](auto* m, auto* v) {
    adamw_update_remainders(static_cast<uint16_t*>(param.raw()), static_cast<int16_t*>(remainder.raw()), m, v,
                            g.defined() ? g.data<float>() : nullptr, param.numel(), d,
                            decay_mask.defined() ? decay_mask.data<uint8_t>() : nullptr);
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

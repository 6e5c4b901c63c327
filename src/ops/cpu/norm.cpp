// RMSNorm on the CPU. The forward rounds like PyTorch's fp32 code for
// `x * torch.pow(x.pow(2).mean(-1) + eps, -0.5) * w`: the mean is accumulated in double and
// rounded once to the input precision, everything after it is computed in the input precision.
#include "ops/cpu/norm.h"

#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
// (mean(x²) + eps)^-1/2 of one row, rounded to T.
template <class T>
T inv_rms(const T* x, int64_t d, double eps) {
  double ss = 0;
  for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(x[j]) * x[j];
  const T mean = static_cast<T>(ss / static_cast<double>(d));
  return std::pow(mean + static_cast<T>(eps), T(-0.5));
}
}  // namespace

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  return cpu::dispatch_float("rmsnorm", x, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(x), d = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const T* px = x.data<T>();
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    T* py = y.data<T>();
#pragma omp parallel for if (rows * d > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * d;
      const T inv = inv_rms(xr, d, eps);
      for (int64_t j = 0; j < d; ++j) py[r * d + j] = pw ? (xr[j] * inv) * pw[j] : xr[j] * inv;
    }
    return y;
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw) {
  cpu::dispatch_float("rmsnorm_backward", x, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(x), d = x.size(-1);
    dx = Tensor::empty(x.shape(), x.dtype());
    const T* px = x.data<T>();
    const T* pdy = dy.data<T>();
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    T* pdx = dx.data<T>();
    // With g = dy·w and r = (mean(x²) + eps)^-1/2:  dx = r·g - x · r³ · <g, x> / D.
    // dw = Σ_rows dy · x · r; rows are summed serially in double (a race-free, fixed order).
    std::vector<double> dw_acc(pw ? static_cast<size_t>(d) : 0, 0.0);
    std::vector<double> inv(static_cast<size_t>(rows));
#pragma omp parallel for if (rows * d > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * d;
      const T* dyr = pdy + r * d;
      double ss = 0, gx = 0;
      for (int64_t j = 0; j < d; ++j) {
        ss += static_cast<double>(xr[j]) * xr[j];
        gx += static_cast<double>(dyr[j]) * (pw ? pw[j] : T(1)) * xr[j];
      }
      const double rinv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
      inv[r] = rinv;
      const double coef = rinv * rinv * rinv * gx / static_cast<double>(d);
      for (int64_t j = 0; j < d; ++j) {
        const double g = static_cast<double>(dyr[j]) * (pw ? pw[j] : T(1));
        pdx[r * d + j] = static_cast<T>(rinv * g - coef * xr[j]);
      }
    }
    if (pw) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < d; ++j) dw_acc[j] += static_cast<double>(pdy[r * d + j]) * px[r * d + j] * inv[r];
      dw = Tensor::empty(w.shape(), w.dtype());
      for (int64_t j = 0; j < d; ++j) dw.data<T>()[j] = static_cast<T>(dw_acc[j]);
    }
  });
}

}  // namespace g4::ops::cpu

// Pointwise arithmetic, activations, softmax and reductions on the CPU. Each op computes in its
// input precision (as PyTorch's fp32 kernels do), except sums, which accumulate in double.
#include "ops/cpu/elementwise.h"

#include <algorithm>
#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
using cpu::dispatch_float;

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

// y[i] = f(x[i]) for a float tensor; f is called with T values.
template <class F>
Tensor map1(const char* op, const Tensor& x, F f) {
  return dispatch_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const int64_t n = x.numel();
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) py[i] = f(px[i]);
    return y;
  });
}

// y[i] = f(a[i], b[i]) for two float tensors of equal shape and dtype.
template <class F>
Tensor map2(const char* op, const Tensor& a, const Tensor& b, F f) {
  return dispatch_float(op, a, [&](auto tag) {
    using T = decltype(tag);
    Tensor y = Tensor::empty(a.shape(), a.dtype());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* py = y.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) py[i] = f(pa[i], pb[i]);
    return y;
  });
}

// gelu, tanh approximation, written in the same order as PyTorch's kernel so fp32 rounds alike.
template <class T>
T gelu_value(T x) {
  const T beta = T(0.7978845608028654);  // sqrt(2 / pi)
  const T kappa = T(0.044715);
  const T inner = beta * (x + kappa * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(inner));
}

template <class T>
T gelu_derivative(T x) {
  const T beta = T(0.7978845608028654);
  const T kappa = T(0.044715);
  const T t = std::tanh(beta * (x + kappa * x * x * x));
  const T dinner = beta * (T(1) + T(3) * kappa * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return map2("add", a, b, [](auto x, auto y) { return x + y; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return map2("sub", a, b, [](auto x, auto y) { return x - y; });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return map2("mul", a, b, [](auto x, auto y) { return x * y; });
}

Tensor scale(const Tensor& a, double s) {
  return map1("scale", a, [s](auto x) { return x * static_cast<decltype(x)>(s); });
}

void add_(Tensor& acc, const Tensor& x, double alpha) {
  dispatch_float("add_", acc, [&](auto tag) {
    using T = decltype(tag);
    T* pa = acc.data<T>();
    const T* px = x.data<T>();
    const T al = static_cast<T>(alpha);
    const int64_t n = acc.numel();
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) pa[i] += al * px[i];
  });
}

void scale_(Tensor& a, double s) {
  dispatch_float("scale_", a, [&](auto tag) {
    using T = decltype(tag);
    T* p = a.data<T>();
    const T f = static_cast<T>(s);
    const int64_t n = a.numel();
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) p[i] *= f;
  });
}

Tensor mul_rowvec(const Tensor& x, const Tensor& v) {
  return dispatch_float("mul_rowvec", x, [&](auto tag) {
    using T = decltype(tag);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const int64_t rows = cpu::leading_rows(x), d = x.size(-1);
    const T* px = x.data<T>();
    const T* pv = v.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (rows * d > kParallelMin)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < d; ++j) py[r * d + j] = px[r * d + j] * pv[j];
    return y;
  });
}

Tensor sum_rows(const Tensor& x) {
  return dispatch_float("sum_rows", x, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(x), d = x.size(-1);
    const T* px = x.data<T>();
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < d; ++j) acc[j] += px[r * d + j];
    Tensor y = Tensor::empty({d}, x.dtype());
    for (int64_t j = 0; j < d; ++j) y.data<T>()[j] = static_cast<T>(acc[j]);
    return y;
  });
}

Tensor gelu_tanh(const Tensor& x) {
  return map1("gelu_tanh", x, [](auto v) { return gelu_value(v); });
}

Tensor gelu_tanh_backward(const Tensor& dy, const Tensor& x) {
  return map2("gelu_tanh_backward", dy, x, [](auto g, auto v) { return g * gelu_derivative(v); });
}

Tensor gelu_gate(const Tensor& g, const Tensor& u) {
  return map2("gelu_gate", g, u, [](auto a, auto b) { return gelu_value(a) * b; });
}

void gelu_gate_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  dispatch_float("gelu_gate_backward", g, [&](auto tag) {
    using T = decltype(tag);
    dg = Tensor::empty(g.shape(), g.dtype());
    du = Tensor::empty(g.shape(), g.dtype());
    const T* pdy = dy.data<T>();
    const T* pg = g.data<T>();
    const T* pu = u.data<T>();
    T* pdg = dg.data<T>();
    T* pdu = du.data<T>();
    const int64_t n = g.numel();
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      pdg[i] = pdy[i] * pu[i] * gelu_derivative(pg[i]);
      pdu[i] = pdy[i] * gelu_value(pg[i]);
    }
  });
}

Tensor gelu_gate_fused(const Tensor& gu) {
  return dispatch_float("gelu_gate_fused", gu, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(gu), inter = gu.size(-1) / 2;
    Shape out_shape = gu.shape();
    out_shape.back() = inter;
    Tensor y = Tensor::empty(out_shape, gu.dtype());
    const T* p = gu.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (rows * inter > kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* gate = p + r * 2 * inter;
      const T* up = gate + inter;
      for (int64_t j = 0; j < inter; ++j) py[r * inter + j] = gelu_value(gate[j]) * up[j];
    }
    return y;
  });
}

Tensor gelu_gate_fused_backward(const Tensor& dy, const Tensor& gu) {
  return dispatch_float("gelu_gate_fused_backward", gu, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(gu), inter = dy.size(-1);
    Tensor dgu = Tensor::empty(gu.shape(), gu.dtype());
    const T* p = gu.data<T>();
    const T* pdy = dy.data<T>();
    T* pd = dgu.data<T>();
#pragma omp parallel for if (rows * inter > kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* gate = p + r * 2 * inter;
      const T* up = gate + inter;
      const T* d = pdy + r * inter;
      for (int64_t j = 0; j < inter; ++j) {
        pd[r * 2 * inter + j] = d[j] * up[j] * gelu_derivative(gate[j]);
        pd[r * 2 * inter + inter + j] = d[j] * gelu_value(gate[j]);
      }
    }
    return dgu;
  });
}

Tensor softcap(const Tensor& x, double cap) {
  return map1("softcap", x, [cap](auto v) {
    using T = decltype(v);
    const T c = static_cast<T>(cap);
    return std::tanh(v / c) * c;
  });
}

Tensor softcap_to_f32(const Tensor& x, double cap) { return softcap(x.to(DType::F32), cap); }

Tensor softcap_backward(const Tensor& dy, const Tensor& y, double cap) {
  // d/dx c·tanh(x/c) = 1 - tanh² = 1 - (y/c)².
  return map2("softcap_backward", dy, y, [cap](auto d, auto v) {
    using T = decltype(v);
    const T t = v / static_cast<T>(cap);
    return d * (T(1) - t * t);
  });
}

Tensor activation(const Tensor& x, Activation act) {
  return map1("activation", x, [act](auto v) {
    using T = decltype(v);
    switch (act) {
      case Activation::kRelu: return v > T(0) ? v : T(0);
      case Activation::kSilu: return v / (T(1) + std::exp(-v));
      case Activation::kSigmoid: return T(1) / (T(1) + std::exp(-v));
      case Activation::kSoftplus: return v > T(20) ? v : std::log1p(std::exp(v));
    }
    return v;
  });
}

Tensor activation_backward(const Tensor& dy, const Tensor& x, Activation act) {
  return map2("activation_backward", dy, x, [act](auto d, auto v) {
    using T = decltype(v);
    const T s = T(1) / (T(1) + std::exp(-v));
    switch (act) {
      case Activation::kRelu: return v > T(0) ? d : T(0);
      case Activation::kSilu: return d * s * (T(1) + v * (T(1) - s));
      case Activation::kSigmoid: return d * s * (T(1) - s);
      case Activation::kSoftplus: return v > T(20) ? d : d * s;
    }
    return d;
  });
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  return map1("clamp", x, [lo, hi](auto v) {
    using T = decltype(v);
    return std::min(std::max(v, static_cast<T>(lo)), static_cast<T>(hi));
  });
}

Tensor clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi) {
  return map2("clamp_backward", dy, x, [lo, hi](auto d, auto v) {
    using T = decltype(v);
    return v >= static_cast<T>(lo) && v <= static_cast<T>(hi) ? d : T(0);
  });
}

Tensor softmax_lastdim(const Tensor& x) {
  return dispatch_float("softmax_lastdim", x, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(x), d = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const T* px = x.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for if (rows * d > kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * d;
      T* yr = py + r * d;
      T mx = -INFINITY;
      for (int64_t j = 0; j < d; ++j) mx = std::max(mx, xr[j]);
      // A row of -inf (all masked) would give NaN; it gets zeros instead.
      if (mx == T(-INFINITY)) {
        for (int64_t j = 0; j < d; ++j) yr[j] = T(0);
        continue;
      }
      T sum = 0;
      for (int64_t j = 0; j < d; ++j) {
        yr[j] = std::exp(xr[j] - mx);
        sum += yr[j];
      }
      for (int64_t j = 0; j < d; ++j) yr[j] /= sum;
    }
    return y;
  });
}

Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y) {
  return dispatch_float("softmax_lastdim_backward", y, [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = cpu::leading_rows(y), d = y.size(-1);
    Tensor dx = Tensor::empty(y.shape(), y.dtype());
    const T* pdy = dy.data<T>();
    const T* py = y.data<T>();
    T* pdx = dx.data<T>();
    // dx = y · (dy - <dy, y>) row by row.
#pragma omp parallel for if (rows * d > kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(pdy[r * d + j]) * py[r * d + j];
      for (int64_t j = 0; j < d; ++j) pdx[r * d + j] = py[r * d + j] * (pdy[r * d + j] - static_cast<T>(dot));
    }
    return dx;
  });
}

Tensor sum_all(const Tensor& x) {
  return dispatch_float("sum_all", x, [&](auto tag) {
    using T = decltype(tag);
    const T* p = x.data<T>();
    double acc = 0;
    for (int64_t i = 0; i < x.numel(); ++i) acc += p[i];
    return Tensor::scalar(acc, x.dtype());
  });
}

}  // namespace g4::ops::cpu

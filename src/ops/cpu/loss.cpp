// Cross-entropy on the CPU, row by row in double: log-sum-exp with the max subtracted.
#include "ops/cpu/loss.h"

#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
// The targets as int64, each inside [0, V) or ignore_index.
std::vector<int64_t> read_targets(const char* op, const Tensor& logits, const Tensor& targets,
                                  int64_t ignore_index) {
  const std::vector<int64_t> t = cpu::read_indices(targets);
  const int64_t vocab = logits.size(-1);
  for (size_t n = 0; n < t.size(); ++n) {
    G4_CHECK(t[n] == ignore_index || (t[n] >= 0 && t[n] < vocab), op, ": target ", t[n], " of row ", n,
             " is outside [0, ", vocab, ") and is not ignore_index (", ignore_index, ")");
  }
  return t;
}

std::vector<double> read_floats(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = element_as_double(t, static_cast<int64_t>(i));
  return out;
}

// max and log(Σ exp(x - max)) of one row.
template <class T>
double log_sum_exp(const T* x, int64_t v) {
  double mx = -INFINITY;
  for (int64_t j = 0; j < v; ++j) mx = std::max(mx, static_cast<double>(x[j]));
  double s = 0;
  for (int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(x[j]) - mx);
  return mx + std::log(s);
}
}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const std::vector<int64_t> t = read_targets("cross_entropy", logits, targets, ignore_index);
  return cpu::dispatch_float("cross_entropy", logits, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = cpu::leading_rows(logits), v = logits.size(-1);
    const T* p = logits.data<T>();
    double loss = 0;
    int64_t count = 0;
#pragma omp parallel for reduction(+ : loss, count) if (n * v > (1 << 15))
    for (int64_t r = 0; r < n; ++r) {
      if (t[r] == ignore_index) continue;
      loss += log_sum_exp(p + r * v, v) - static_cast<double>(p[r * v + t[r]]);
      count += 1;
    }
    return CrossEntropyResult{loss, count};
  });
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale, int64_t ignore_index) {
  const std::vector<int64_t> t = read_targets("cross_entropy_backward", logits, targets, ignore_index);
  return cpu::dispatch_float("cross_entropy_backward", logits, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = cpu::leading_rows(logits), v = logits.size(-1);
    const T* p = logits.data<T>();
    Tensor grad = Tensor::zeros(logits.shape(), logits.dtype());
    T* g = grad.data<T>();
#pragma omp parallel for if (n * v > (1 << 15))
    for (int64_t r = 0; r < n; ++r) {
      if (t[r] == ignore_index) continue;
      const double lse = log_sum_exp(p + r * v, v);
      for (int64_t j = 0; j < v; ++j) {
        const double softmax = std::exp(static_cast<double>(p[r * v + j]) - lse);
        g[r * v + j] = static_cast<T>(grad_scale * (softmax - (j == t[r] ? 1.0 : 0.0)));
      }
    }
    return grad;
  });
}

namespace {
// The logit the loss sees: softcap * tanh(x / softcap) (or x itself without a cap) over the
// temperature.
double capped(double x, double softcap, double temperature) {
  return (softcap > 0 ? softcap * std::tanh(x / softcap) : x) / temperature;
}
}  // namespace

CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, double softcap, int64_t ignore_index,
                                    double temperature) {
  const char* op = "cross_entropy_rows";
  const std::vector<int64_t> t = read_targets(op, logits, targets, ignore_index);
  return cpu::dispatch_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = cpu::leading_rows(logits), v = logits.size(-1);
    const T* p = logits.data<T>();
    CrossEntropyRows out{Tensor::zeros(targets.shape(), logits.dtype()), Tensor::zeros(targets.shape(), logits.dtype())};
    T* loss = out.loss.data<T>();
    T* lse = out.lse.data<T>();
#pragma omp parallel for if (n * v > (1 << 15))
    for (int64_t r = 0; r < n; ++r) {
      if (t[r] == ignore_index) continue;
      const T* x = p + r * v;
      double mx = -INFINITY;
      for (int64_t j = 0; j < v; ++j) mx = std::max(mx, capped(static_cast<double>(x[j]), softcap, temperature));
      double s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(capped(static_cast<double>(x[j]), softcap, temperature) - mx);
      const double l = mx + std::log(s);
      lse[r] = static_cast<T>(l);
      loss[r] = static_cast<T>(l - capped(static_cast<double>(x[t[r]]), softcap, temperature));
    }
    return out;
  });
}

Tensor cross_entropy_rows_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double softcap,
                                   const Tensor& grad_rows, int64_t ignore_index, Tensor dlogits, double temperature) {
  const char* op = "cross_entropy_rows_backward";
  const std::vector<int64_t> t = read_targets(op, logits, targets, ignore_index);
  return cpu::dispatch_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = cpu::leading_rows(logits), v = logits.size(-1);
    const std::vector<double> l = read_floats(lse), g = read_floats(grad_rows);
    Tensor out = dlogits.defined() ? dlogits : Tensor::empty(logits.shape(), logits.dtype());
    const T* p = logits.data<T>();
    T* d = out.data<T>();
#pragma omp parallel for if (n * v > (1 << 15))
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < v; ++j) {
        const double x = static_cast<double>(p[r * v + j]);
        double grad = 0;
        if (t[r] != ignore_index) {
          const double th = softcap > 0 ? std::tanh(x / softcap) : 0;
          const double z = (softcap > 0 ? softcap * th : x) / temperature;
          const double dz = (softcap > 0 ? 1 - th * th : 1) / temperature;
          grad = g[r] * (std::exp(z - l[r]) - (j == t[r] ? 1.0 : 0.0)) * dz;
        }
        d[r * v + j] = static_cast<T>(grad);  // after reading p[r * v + j]: dlogits may be logits
      }
    }
    return out;
  });
}

}  // namespace g4::ops::cpu

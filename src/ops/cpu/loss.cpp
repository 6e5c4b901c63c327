// Cross-entropy on the CPU, row by row in double: log-sum-exp with the max subtracted.
#include "ops/loss.h"

#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops {

namespace {
// logits [..., V] and targets [...]; returns the targets as int64 after range checks.
std::vector<int64_t> check_targets(const char* op, const Tensor& logits, const Tensor& targets,
                                   int64_t ignore_index) {
  cpu::check_defined(op, "logits", logits);
  cpu::check_defined(op, "targets", targets);
  G4_CHECK(logits.dim() >= 2, op, ": logits must be [N, V], got ", logits.describe());
  const Shape rows(logits.shape().begin(), logits.shape().end() - 1);
  G4_CHECK(targets.shape() == rows, op, ": targets ", targets.describe(), " must be ", shape_str(rows),
           " for logits ", logits.describe());
  const std::vector<int64_t> t = cpu::read_indices(op, "targets", targets);
  const int64_t vocab = logits.size(-1);
  for (size_t n = 0; n < t.size(); ++n) {
    G4_CHECK(t[n] == ignore_index || (t[n] >= 0 && t[n] < vocab), op, ": target ", t[n], " of row ", n,
             " is outside [0, ", vocab, ") and is not ignore_index (", ignore_index, ")");
  }
  return t;
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
  const std::vector<int64_t> t = check_targets("cross_entropy", logits, targets, ignore_index);
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
  const std::vector<int64_t> t = check_targets("cross_entropy_backward", logits, targets, ignore_index);
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

}  // namespace g4::ops

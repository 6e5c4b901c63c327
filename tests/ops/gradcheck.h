// Test helpers for the ops: tolerance comparisons and a finite-difference gradient check.
//
// The gradient check works on a scalar loss L = Σ f(inputs) ∘ dout, where dout is a fixed random
// tensor. The analytic gradients the op's backward returns for that dout must equal the central
// differences (L(x + eps) - L(x - eps)) / 2eps of every input element, in double precision.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace g4::test {

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(element_as_double(t, i)));
  return m;
}

// Σ a ∘ b in double (any float dtypes, equal numel).
inline double dot_all(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += element_as_double(a, i) * element_as_double(b, i);
  return s;
}

// Every element within tol · max|expected| of expected (a norm-relative test that tolerates
// elements near zero). Reports the worst element.
inline void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what = "") {
  ASSERT_EQ(actual.shape(), expected.shape()) << what << ": " << actual.describe() << " vs " << expected.describe();
  const double scale = std::max(max_abs(expected), 1e-30);
  double worst = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = element_as_double(actual, i), e = element_as_double(expected, i);
    const double err = std::isnan(a) != std::isnan(e) ? INFINITY : (std::isnan(a) ? 0.0 : std::abs(a - e));
    if (err > worst) worst = err, at = i;
  }
  EXPECT_LE(worst, tol * scale) << what << ": worst flat index " << at << ": " << element_as_double(actual, at)
                                << " vs expected " << element_as_double(expected, at) << " (scale " << scale << ")";
}

// Bitwise-equal values (same dtype and shape).
inline void expect_equal(const Tensor& actual, const Tensor& expected, const std::string& what = "") {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    ASSERT_EQ(element_as_double(actual, i), element_as_double(expected, i)) << what << " at flat index " << i;
  }
}

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Compares grads[i] (undefined = input i has no gradient) with central differences of
// L = Σ f(inputs) ∘ dout. All inputs must be f64. An element passes when
// |analytic - numeric| <= rtol · (|numeric| + max|numeric| of that input).
inline void expect_gradients(const OpFn& f, const std::vector<Tensor>& inputs, const Tensor& dout,
                             const std::vector<Tensor>& grads, double rtol = 1e-6, double eps = 1e-6) {
  ASSERT_EQ(inputs.size(), grads.size());
  std::vector<Tensor> x;
  for (const Tensor& t : inputs) x.push_back(t.clone());  // perturbed in place below
  for (size_t i = 0; i < x.size(); ++i) {
    if (!grads[i].defined()) continue;
    ASSERT_EQ(x[i].dtype(), DType::F64) << "gradient checks run in double precision";
    ASSERT_EQ(grads[i].shape(), x[i].shape()) << "gradient of input " << i;
    std::vector<double> numeric(static_cast<size_t>(x[i].numel()));
    double* p = x[i].data<double>();
    for (int64_t e = 0; e < x[i].numel(); ++e) {
      const double saved = p[e];
      p[e] = saved + eps;
      const double up = dot_all(f(x), dout);
      p[e] = saved - eps;
      const double down = dot_all(f(x), dout);
      p[e] = saved;
      numeric[e] = (up - down) / (2 * eps);
    }
    double scale = 0;
    for (double v : numeric) scale = std::max(scale, std::abs(v));
    int failures = 0;
    for (int64_t e = 0; e < x[i].numel() && failures < 5; ++e) {
      const double a = element_as_double(grads[i], e);
      if (!(std::abs(a - numeric[e]) <= rtol * (std::abs(numeric[e]) + scale))) {
        ADD_FAILURE() << "input " << i << " " << x[i].describe() << " flat index " << e << ": analytic " << a
                      << ", numeric " << numeric[e] << " (max |grad| " << scale << ")";
        ++failures;
      }
    }
  }
}

// Runs the gradient check with a fresh random dout shaped like f's output.
inline void expect_gradients(const OpFn& f, const std::vector<Tensor>& inputs, uint64_t dout_seed,
                             const std::function<std::vector<Tensor>(const Tensor& dout)>& backward,
                             double rtol = 1e-6) {
  const Tensor dout = randn(f(inputs).shape(), dout_seed, DType::F64);
  expect_gradients(f, inputs, dout, backward(dout), rtol);
}

// Each input converted to f32 (the same values, rounded), for f32-vs-f64 comparisons.
inline std::vector<Tensor> to_f32(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& t : xs) out.push_back(t.defined() && t.dtype() == DType::F64 ? t.to(DType::F32) : t);
  return out;
}

// Checks that a throwing statement's g4::Error message contains every given substring.
template <class Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected g4::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace g4::test

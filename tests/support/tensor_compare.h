// Comparing tensors in tests against reference values.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/tensor.h"

namespace g4::test {

// max |a - b| (as f32) over the rows [.., V] whose entry of `rows` ([B, n] flattened, if given) is
// nonzero; V is the last dimension.
inline double max_diff(const Tensor& a, const Tensor& b, const Tensor& rows = {}) {
  EXPECT_EQ(a.shape(), b.shape());
  const Tensor x = a.to(DType::F32), y = b.to(DType::F32);
  const int64_t V = x.dim() > 0 ? x.size(-1) : 1, R = x.numel() / std::max<int64_t>(V, 1);
  double m = 0;
  for (int64_t r = 0; r < R; ++r) {
    if (rows.defined() && element_as_int(rows, r) == 0) continue;
    for (int64_t v = 0; v < V; ++v)
      m = std::max(m, std::abs(double(x.data<float>()[r * V + v]) - double(y.data<float>()[r * V + v])));
  }
  return m;
}

// ‖a − b‖ and ‖b‖ (L2 over every element, in double): gradients are compared relative to the
// reference's norm.
struct L2Error {
  double diff = 0, norm = 0;
};
inline L2Error l2_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const Tensor x = a.to(DType::F64), y = b.to(DType::F64);
  L2Error e;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double d = x.data<double>()[i] - y.data<double>()[i];
    e.diff += d * d;
    e.norm += y.data<double>()[i] * y.data<double>()[i];
  }
  e.diff = std::sqrt(e.diff);
  e.norm = std::sqrt(e.norm);
  return e;
}

}  // namespace g4::test

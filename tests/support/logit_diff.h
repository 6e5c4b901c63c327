// Comparing logits with a reference: the largest absolute difference over the rows that count.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/tensor.h"

namespace g4::test {

// max |a - b| over the rows [..., V] of two f32 tensors whose row mask (if given, one element per
// row) is nonzero.
inline double max_diff(const Tensor& a, const Tensor& b, const Tensor& rows = {}) {
  EXPECT_EQ(a.shape(), b.shape());
  const int64_t V = a.size(-1), R = a.numel() / V;
  double m = 0;
  for (int64_t r = 0; r < R; ++r) {
    if (rows.defined() && element_as_int(rows, r) == 0) continue;
    for (int64_t v = 0; v < V; ++v)
      m = std::max(m, std::abs(double(a.data<float>()[r * V + v]) - double(b.data<float>()[r * V + v])));
  }
  return m;
}

}  // namespace g4::test

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

}  // namespace g4::test

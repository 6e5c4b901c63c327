// Central finite differences of a scalar loss in one element of an f64 parameter, for gradient checks.
#pragma once
#include <cstdint>
#include <functional>

#include "core/tensor.h"

namespace g4::test {

// (loss(p[i] + h) - loss(p[i] - h)) / 2h, leaving p[i] as it was.
inline double central_difference(Tensor& p, int64_t i, const std::function<double()>& loss, double h = 1e-6) {
  double& x = p.data<double>()[i];
  const double x0 = x;
  x = x0 + h;
  const double up = loss();
  x = x0 - h;
  const double down = loss();
  x = x0;
  return (up - down) / (2 * h);
}

}  // namespace g4::test

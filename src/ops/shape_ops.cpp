// The one entry point of the shape ops of ops/elementwise.h (narrow, concat): arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/cpu/shape_ops.h"

#include "ops/dispatch.h"
#include "ops/elementwise.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/elementwise.h"
#endif

namespace g4::ops {

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len) {
  check_defined("narrow", "x", x);
  const int64_t d = normalize_dim("narrow", x.shape(), dim);
  G4_CHECK(start >= 0 && len >= 0 && start + len <= x.size(d), "narrow: [", start, ", ", start + len,
           ") out of range for dimension ", d, " of ", x.describe());
  return G4_DISPATCH(x, narrow(x, dim, start, len));
}

Tensor narrow_backward(const Tensor& dy, const Shape& input_shape, int64_t dim, int64_t start) {
  check_defined("narrow_backward", "dy", dy);
  const int64_t d = normalize_dim("narrow_backward", input_shape, dim);
  Shape expect = input_shape;
  if (dy.dim() == static_cast<int64_t>(input_shape.size())) expect[d] = dy.size(d);
  G4_CHECK(dy.shape() == expect && start >= 0 && start + dy.size(d) <= input_shape[d], "narrow_backward: dy ",
           dy.describe(), " at offset ", start, " along dimension ", d, " does not fit input shape ",
           shape_str(input_shape));
  return G4_DISPATCH(dy, narrow_backward(dy, input_shape, dim, start));
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  G4_CHECK(!xs.empty(), "concat: no tensors given");
  check_defined("concat", "xs[0]", xs[0]);
  const int64_t d = normalize_dim("concat", xs[0].shape(), dim);
  for (size_t i = 0; i < xs.size(); ++i) {
    check_on("concat", "input", xs[i], xs[0].device());
    Shape a = xs[i].shape(), b = xs[0].shape();
    const bool same_rank = a.size() == b.size();
    if (same_rank) a[d] = b[d] = 0;
    G4_CHECK(same_rank && a == b && xs[i].dtype() == xs[0].dtype(), "concat: input ", i, " ", xs[i].describe(),
             " does not match input 0 ", xs[0].describe(), " outside dimension ", d);
  }
  return G4_DISPATCH(xs[0], concat(xs, dim));
}

}  // namespace g4::ops

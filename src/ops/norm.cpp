// The one entry point of every op in ops/norm.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/norm.h"

#include "ops/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/norm.h"
#endif

namespace g4::ops {

namespace {
void check_args(const char* op, const Tensor& x, const Tensor& w) {
  check_float(op, "x", x);
  G4_CHECK(x.dim() >= 1, op, ": x must be [..., D], got ", x.describe());
  if (w.defined()) {
    check_same_dtype(op, "x", x, "w", w);
    G4_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight ", w.describe(), " must be [D] for x ",
             x.describe());
  }
}
}  // namespace

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  check_args("rmsnorm", x, w);
  return G4_DISPATCH(x, rmsnorm(x, w, eps));
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw) {
  check_args("rmsnorm_backward", x, w);
  check_same_shape("rmsnorm_backward", "dy", dy, "x", x);
  return G4_DISPATCH(dy, rmsnorm_backward(dy, x, w, eps, dx, dw));
}

}  // namespace g4::ops

// The one entry point of every op in ops/norm.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/norm.h"

#include "ops/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/norm.h"
#endif

namespace g4::ops {

Tensor rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  check_norm_args("rmsnorm", "x", x, "weight", w);
  return G4_DISPATCH(x, rmsnorm(x, w, eps));
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, double eps, Tensor& dx, Tensor& dw) {
  check_norm_args("rmsnorm_backward", "x", x, "weight", w);
  check_same_shape("rmsnorm_backward", "dy", dy, "x", x);
  return G4_DISPATCH(dy, rmsnorm_backward(dy, x, w, eps, dx, dw));
}

}  // namespace g4::ops

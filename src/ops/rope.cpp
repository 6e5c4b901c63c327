// The one entry point of every op in ops/rope.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/rope.h"

#include "ops/cpu/rope.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/rope.h"
#endif

namespace g4::ops {

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_rope_args("rope", x, positions, inv_freq);
  return G4_DISPATCH(x, rope(x, positions, inv_freq));
}

Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq) {
  check_rope_args("rope_backward", dy, positions, inv_freq);
  return G4_DISPATCH(dy, rope_backward(dy, positions, inv_freq));
}

}  // namespace g4::ops

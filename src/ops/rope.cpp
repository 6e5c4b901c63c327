// The one entry point of every op in ops/rope.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/rope.h"

#include "ops/cpu/rope.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/rope.h"
#endif

namespace g4::ops {

namespace {
// x [B, S, nH, d] (d even), positions [B, S] of an index dtype, inv_freq f32[d/2], on one device.
void check_args(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_float(op, "x", x);
  check_rank(op, "x", x, 4, "[B, S, nH, d]");
  G4_CHECK(x.size(3) % 2 == 0, op, ": head dim of x ", x.describe(), " must be even");
  check_indices(op, "positions", positions, x.device());
  G4_CHECK(positions.shape() == Shape({x.size(0), x.size(1)}), op, ": positions ", positions.describe(),
           " must be [B, S] for x ", x.describe());
  check_on(op, "inv_freq", inv_freq, x.device());
  G4_CHECK(inv_freq.dtype() == DType::F32 && inv_freq.shape() == Shape({x.size(3) / 2}), op, ": inv_freq ",
           inv_freq.describe(), " must be f32[d/2] for x ", x.describe());
}
}  // namespace

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_args("rope", x, positions, inv_freq);
  return G4_DISPATCH(x, rope(x, positions, inv_freq));
}

Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq) {
  check_args("rope_backward", dy, positions, inv_freq);
  return G4_DISPATCH(dy, rope_backward(dy, positions, inv_freq));
}

}  // namespace g4::ops

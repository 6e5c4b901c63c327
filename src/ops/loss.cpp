// The one entry point of every op in ops/loss.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/loss.h"

#include <cmath>

#include "ops/cpu/loss.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/loss.h"
#endif

namespace g4::ops {

namespace {
// logits [..., V] of a float dtype; targets [...] i32/i64, on the CPU for the CPU op (the GPU op
// uploads CPU targets). Target values are checked by each backend as it reads them.
void check_args(const char* op, const Tensor& logits, const Tensor& targets, double softcap = 0,
                double temperature = 1.0) {
  check_float(op, "logits", logits);
  G4_CHECK(logits.dim() >= 2, op, ": logits must be [N, V], got ", logits.describe());
  check_defined(op, "targets", targets);
  if (!on_gpu(logits)) check_on(op, "targets", targets, Device::CPU);
  const Shape rows(logits.shape().begin(), logits.shape().end() - 1);
  G4_CHECK(targets.shape() == rows, op, ": targets ", targets.describe(), " must be ", shape_str(rows), " for logits ",
           logits.describe());
  G4_CHECK(is_index_dtype(targets.dtype()), op, ": targets must be i32 or i64, got ", targets.describe());
  G4_CHECK(softcap >= 0, op, ": softcap must be >= 0 (0 = none), got ", softcap);
  G4_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
           temperature);
}

// A per-row tensor (lse, grad_rows) has the targets' shape and a float dtype: f32/f64 on the CPU,
// any float on the GPU (which converts it, on either device).
void check_row_tensor(const char* op, const char* name, const Tensor& t, const Tensor& logits, const Tensor& targets) {
  check_defined(op, name, t);
  if (!on_gpu(logits)) check_on(op, name, t, Device::CPU);
  const bool dtype_ok = on_gpu(logits) ? is_floating(t.dtype()) : is_backend_float(t.dtype(), Device::CPU);
  G4_CHECK(t.shape() == targets.shape() && dtype_ok, op, ": ", name, " must be a float tensor of the targets' shape ",
           shape_str(targets.shape()), ", got ", t.describe());
}
}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  check_args("cross_entropy", logits, targets);
  return G4_DISPATCH(logits, cross_entropy(logits, targets, ignore_index));
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale, int64_t ignore_index) {
  check_args("cross_entropy_backward", logits, targets);
  return G4_DISPATCH(logits, cross_entropy_backward(logits, targets, grad_scale, ignore_index));
}

CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, double softcap, int64_t ignore_index,
                                    double temperature) {
  check_args("cross_entropy_rows", logits, targets, softcap, temperature);
  return G4_DISPATCH(logits, cross_entropy_rows(logits, targets, softcap, ignore_index, temperature));
}

Tensor cross_entropy_rows_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double softcap,
                                   const Tensor& grad_rows, int64_t ignore_index, Tensor dlogits, double temperature) {
  const char* op = "cross_entropy_rows_backward";
  check_args(op, logits, targets, softcap, temperature);
  check_row_tensor(op, "lse", lse, logits, targets);
  check_row_tensor(op, "grad_rows", grad_rows, logits, targets);
  if (dlogits.defined()) check_same_shape(op, "dlogits", dlogits, "logits", logits);
  return G4_DISPATCH(logits,
                     cross_entropy_rows_backward(logits, targets, lse, softcap, grad_rows, ignore_index, dlogits,
                                                 temperature));
}

}  // namespace g4::ops

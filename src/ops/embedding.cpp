// The one entry point of every op in ops/embedding.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/embedding.h"

#include "ops/cpu/embedding.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/embedding.h"
#endif

namespace g4::ops {

namespace {
// ids: i32 or i64 of any shape, on the CPU for the CPU op; the GPU op uploads CPU ids itself.
// Their values are checked by each backend as it reads them (the GPU kernels report later).
void check_ids(const char* op, const Tensor& ids, Device device) {
  check_defined(op, "ids", ids);
  if (device == Device::CPU) check_on(op, "ids", ids, Device::CPU);
  G4_CHECK(is_index_dtype(ids.dtype()), op, ": ids must be i32 or i64, got ", ids.describe());
}

// dy [ids..., D] of a float dtype, and its ids.
void check_dy(const char* op, const Tensor& dy, const Tensor& ids) {
  check_float(op, "dy", dy);
  check_ids(op, ids, dy.device());
  Shape want = ids.shape();
  want.push_back(dy.dim() > 0 ? dy.size(-1) : 0);
  G4_CHECK(dy.shape() == want, op, ": dy ", dy.describe(), " must be [ids..., D] for ids ", ids.describe());
}
}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  check_rank("embedding", "weight", weight, 2, "[V, D]");
  check_ids("embedding", ids, weight.device());
  return G4_DISPATCH(weight, embedding(weight, ids));
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx) {
  check_dy("embedding_backward", dy, ids);
  G4_CHECK(vocab >= 0, "embedding_backward: vocab ", vocab, " is negative");
  return G4_DISPATCH(dy, embedding_backward(dy, ids, vocab, padding_idx));
}

void embedding_backward_accumulate(Tensor& dw, const Tensor& dy, const Tensor& ids, int64_t padding_idx) {
  const char* op = "embedding_backward";
  check_dy(op, dy, ids);
  check_rank(op, "dw", dw, 2, "[V, D]");
  check_on(op, "dw", dw, dy.device());
  // The GPU sums into f32 whatever dy's dtype (ops/embedding.h says why).
  const DType want = on_gpu(dy) ? DType::F32 : dy.dtype();
  G4_CHECK(dw.size(1) == dy.size(-1) && dw.dtype() == want, op, ": dw ", dw.describe(), " must be ", dtype_name(want),
           "[V, ", dy.size(-1), "] (dy ", dy.describe(), ")");
  return G4_DISPATCH(dy, embedding_backward_accumulate(dw, dy, ids, padding_idx));
}

}  // namespace g4::ops

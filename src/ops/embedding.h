// Embedding lookup and its gradient.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// weight [V, D]; ids any int dtype, any shape -> [ids..., D]. An id outside [0, V) is an error
// that names the id, its position and V. On the GPU (weight on the GPU, any dtype: it is a
// gather; ids i32/i64 on either device) the ids are checked by the kernel: a bad id gives a row of
// zeros and is raised later, with the same message (ops/device_checks.h).
Tensor embedding(const Tensor& weight, const Tensor& ids);
// dW [V, D]: rows of dy scattered-added by id. Rows whose id == padding_idx get no gradient
// (torch.nn.Embedding's padding_idx); pass -1 for none. On the CPU dW has dy's dtype (f32/f64)
// and the additions run in a fixed order. On the GPU dy may be bf16 or f32 and dW is always f32
// (summing many rows in bf16 would lose most of a frequent token's gradient); the additions are
// fp32 atomics, so their order, and the last bits of a repeated id's row, vary between runs.
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx);
// dw += that scatter-add, into an existing [V, D] buffer (f32 on the GPU, dy's dtype on the
// CPU): gradient accumulation without a [V, D] temporary.
void embedding_backward_accumulate(Tensor& dw, const Tensor& dy, const Tensor& ids, int64_t padding_idx);

}  // namespace g4::ops

// Embedding lookup and its gradient.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// weight [V, D]; ids any int dtype, any shape -> [ids..., D]. An id outside [0, V) is an error
// that names the id, its position and V.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// dW [V, D]: rows of dy scattered-added by id. Rows whose id == padding_idx get no gradient
// (torch.nn.Embedding's padding_idx); pass -1 for none.
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx);

}  // namespace g4::ops

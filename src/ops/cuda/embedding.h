// CUDA implementations of ops/embedding.h (see there for the contracts).
#pragma once
#include "ops/embedding.h"

namespace g4::ops::cuda {

Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx);
void embedding_backward_accumulate(Tensor& dw, const Tensor& dy, const Tensor& ids, int64_t padding_idx);

}  // namespace g4::ops::cuda

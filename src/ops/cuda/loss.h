// CUDA implementations of ops/loss.h (see there for the contracts).
#pragma once
#include "ops/loss.h"

namespace g4::ops::cuda {

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale, int64_t ignore_index);
CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, double softcap, int64_t ignore_index);
Tensor cross_entropy_rows_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double softcap,
                                   const Tensor& grad_rows, int64_t ignore_index, Tensor dlogits);

}  // namespace g4::ops::cuda

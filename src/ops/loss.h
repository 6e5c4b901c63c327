// Cross-entropy over a vocabulary, with ignored targets. Accumulated in double on the CPU.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

struct CrossEntropyResult {
  double loss_sum = 0;   // sum of -log p[target] over counted rows
  int64_t count = 0;     // rows whose target != ignore_index
};

// logits [N, V] f32/f64; targets [N] i64 (or i32). A target outside [0, V) that is not
// ignore_index is an error naming the row.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// d(grad_scale * loss_sum)/dlogits = grad_scale * (softmax - onehot) on counted rows, 0 elsewhere.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale,
                              int64_t ignore_index = -100);

}  // namespace g4::ops

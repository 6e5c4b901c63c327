// Cross-entropy over a vocabulary, with ignored targets. The CPU accumulates in double; the GPU
// reads bf16 (or f32) logits once per pass and accumulates in fp32, never storing fp32 (or
// softcapped) logits.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

struct CrossEntropyResult {
  double loss_sum = 0;   // sum of -log p[target] over counted rows
  int64_t count = 0;     // rows whose target != ignore_index
};

// logits [N, V] f32/f64 (bf16/f32 on the GPU); targets [N] i64 (or i32). A target outside [0, V)
// that is not ignore_index is an error naming the row. On the GPU both numbers are reduced on the
// device and copied back: the host waits for the GPU (a synchronisation per call). Training loops
// on the GPU use cross_entropy_rows instead.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// d(grad_scale * loss_sum)/dlogits = grad_scale * (softmax - onehot) on counted rows, 0 elsewhere.
// On the GPU this recomputes the log-sum-exp (one extra pass over the logits) and does not wait.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, double grad_scale,
                              int64_t ignore_index = -100);

// Per-row losses that stay on the device. The loss sees z = softcap(x) / temperature: with
// softcap > 0 the logits are first mapped through softcap * tanh(x / softcap) (Gemma's
// final_logit_softcapping), then divided by the sampling temperature (RL's log-probs of sampled
// tokens; 1 = none), both inside the op.
struct CrossEntropyRows {
  Tensor loss;  // [N] -log softmax(z)[target]; 0 on ignored rows
  Tensor lse;   // [N] log Σ exp(z) of each row; 0 on ignored rows
};
// logits [..., V] (CPU: f32/f64; GPU: bf16/f32), targets [...] i32/i64, temperature finite and
// > 0. Outputs have the targets' shape and are f32 (f64 for f64 logits on the CPU, for gradient
// checks). On the CPU a bad target is an error at once; on the GPU it makes that row's loss and
// lse NaN and is raised later (ops/device_checks.h).
CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, double softcap = 0,
                                    int64_t ignore_index = -100, double temperature = 1.0);
// dlogits = grad_rows[r] * (softmax(z) - onehot(target)) * dz/dlogits on counted rows, 0 on ignored
// rows, with z as above (dz/dx = (1 - tanh²(x / softcap)) / temperature when softcapped, else
// 1 / temperature). lse is the forward's (same softcap and temperature), grad_rows [...] f32 (f64
// with f64 logits) is d total / d loss[r]. The result has the logits' dtype and shape. When
// `dlogits` is given (same shape, dtype and device as the logits) it is written in place and
// returned, so a chunked caller can reuse one buffer; it may even be the logits tensor itself
// (each element is read before it is overwritten).
Tensor cross_entropy_rows_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double softcap,
                                   const Tensor& grad_rows, int64_t ignore_index = -100, Tensor dlogits = {},
                                   double temperature = 1.0);

}  // namespace g4::ops

// Optimizer arithmetic: the fused AdamW update of one parameter tensor (fp32 master weights and
// moments) and the squared norm used for gradient clipping. The trainer's AdamW (train/adamw.h)
// calls these, so the CPU and the GPU share one definition of the update.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;       // 1-based number of this update, for the bias corrections
  double grad_scale = 1;  // multiplies the gradient first (clipping, loss normalisation)
};

// One torch.optim.AdamW update of one tensor, in place, in the master's precision and in torch's
// operation order (decoupled weight decay, then Adam with bias corrections):
//   g  = grad · grad_scale [· grad_scale_tensor]
//   p ← p · (1 − lr·wd)                    (only when `decay`, and where decay_mask[j] != 0)
//   m ← m + (g − m)·(1 − β1)               (torch's lerp)
//   v ← v·β2 + (1 − β2)·g·g
//   p ← p − (lr / (1 − β1^step)) · m / (sqrt(v) / sqrt(1 − β2^step) + eps)
// master, exp_avg, exp_avg_sq: the same shape and device, f32 (or f64 on the CPU). grad: that
// shape, f32 or bf16 (f64 on the CPU), or undefined for a zero gradient. decay_mask: optional u8
// tensor of the master's shape and device (flat shards of many parameters, parallel/fsdp.h) that
// exempts the elements where it is 0 from weight decay. grad_scale_tensor:
// optional one-element f32 tensor on the master's device, a factor computed there (a clipping
// coefficient) that needs no synchronisation. param_bf16_out: optional bf16 tensor of the
// master's shape and device that receives the updated master rounded to bf16 (the compute copy).
// The GPU uses IEEE-rounded operations without contraction, so it gives the CPU's f32 results.
void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay = true, const Tensor& decay_mask = {}, const Tensor& grad_scale_tensor = {},
                Tensor* param_bf16_out = nullptr);

// Σ g² over all elements as a [] tensor on g's device: f32 (f64 for f64 input on the CPU), summed in
// double on the CPU and in fp32 (a fixed-shape two-stage tree, so deterministic) on the GPU. No
// synchronisation: read it (item()) only when the norm is needed.
Tensor squared_norm(const Tensor& g);

}  // namespace g4::ops

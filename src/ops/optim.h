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
// master, exp_avg, exp_avg_sq: the same shape and device, f32 (or f64 on the CPU). With an f32
// master the moments may also be bf16, each on its own (Transformer Engine FusedAdam's
// exp_avg_dtype / exp_avg_sq_dtype, which NeMo-RL's Gemma 4 recipes set to bfloat16): they are read
// widened to f32, updated as above in f32, and stored rounded to nearest even, while the master's
// step uses the unrounded values, as FusedAdam does. grad: that
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

// The same update for a bf16 parameter whose fp32 master is the parameter's bits joined with a
// 16-bit remainder (ops/master_bits.h; FusedAdam's store_param_remainders): the master is joined,
// updated as adamw_step updates an f32 master, and split again into the parameter (its compute copy)
// and the remainder. param: bf16; remainder: i16 of param's shape and device; the rest as above.
// The master follows the same f32 arithmetic as adamw_step's, bit for bit; the copy differs from
// adamw_step's param_bf16_out only where the master lies exactly halfway between two bf16 values.
void adamw_step_remainders(Tensor& param, Tensor& remainder, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                           const AdamWHyper& h, bool decay = true, const Tensor& decay_mask = {},
                           const Tensor& grad_scale_tensor = {});

// f32 masters into bf16 parameters and i16 remainders and back (CPU tensors of one shape;
// ops/master_bits.h): join_master(split_master(x)) has x's bits.
struct SplitMaster {
  Tensor param, remainder;
};
SplitMaster split_master(const Tensor& master);
Tensor join_master(const Tensor& param, const Tensor& remainder);

// Σ g² over all elements as a [] tensor on g's device: f32 (f64 for f64 input on the CPU), summed in
// double on the CPU and in fp32 (a fixed-shape two-stage tree, so deterministic) on the GPU. No
// synchronisation: read it (item()) only when the norm is needed.
Tensor squared_norm(const Tensor& g);

}  // namespace g4::ops

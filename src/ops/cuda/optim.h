// CUDA implementations of ops/optim.h (see there for the contracts).
#pragma once
#include "ops/optim.h"

namespace g4::ops::cuda {

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out);
Tensor squared_norm(const Tensor& g);

}  // namespace g4::ops::cuda

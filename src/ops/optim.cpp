// The one entry point of every op in ops/optim.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/optim.h"

#include "ops/cpu/optim.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/optim.h"
#endif

namespace g4::ops {

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const char* op = "adamw_step";
  check_float(op, "master", master);
  const Device device = master.device();
  G4_CHECK(device == Device::CPU || master.dtype() == DType::F32, op, ": the GPU keeps f32 master weights, got ",
           master.describe());
  check_same_shape(op, "master", master, "exp_avg", exp_avg);
  check_same_shape(op, "master", master, "exp_avg_sq", exp_avg_sq);
  G4_CHECK(h.step >= 1, op, ": step must be >= 1 (the bias corrections divide by 1 - beta^step), got ", h.step);
  if (grad.defined()) {
    check_on(op, "grad", grad, device);
    // The CPU converts any float gradient to the master's dtype; the GPU reads f32 or bf16.
    const bool dtype_ok = device == Device::CPU ? is_floating(grad.dtype()) : is_backend_float(grad.dtype(), device);
    G4_CHECK(grad.shape() == master.shape() && dtype_ok, op, ": grad ", grad.describe(),
             " must be a float tensor of the master's shape ", master.describe());
  }
  if (decay_mask.defined()) {
    check_on(op, "decay_mask", decay_mask, device);
    G4_CHECK(decay_mask.dtype() == DType::U8 && decay_mask.shape() == master.shape(), op,
             ": decay_mask must be u8 of the master's shape ", master.describe(), ", got ", decay_mask.describe());
  }
  if (grad_scale_tensor.defined()) {
    check_on(op, "grad_scale_tensor", grad_scale_tensor, device);
    G4_CHECK(grad_scale_tensor.numel() == 1 && (device == Device::CPU || grad_scale_tensor.dtype() == DType::F32), op,
             ": grad_scale_tensor must have one element (f32 on the GPU), got ", grad_scale_tensor.describe());
  }
  if (param_bf16_out) {
    check_on(op, "param_bf16_out", *param_bf16_out, device);
    G4_CHECK(param_bf16_out->dtype() == DType::BF16 && param_bf16_out->shape() == master.shape(), op,
             ": param_bf16_out must be bf16 of the master's shape ", master.describe(), ", got ",
             param_bf16_out->describe());
  }
  return G4_DISPATCH(
      master, adamw_step(master, grad, exp_avg, exp_avg_sq, h, decay, decay_mask, grad_scale_tensor, param_bf16_out));
}

Tensor squared_norm(const Tensor& g) {
  check_defined("squared_norm", "g", g);
  G4_CHECK(g.dtype() == DType::BF16 || is_backend_float(g.dtype(), g.device()), "squared_norm: unsupported dtype ",
           g.describe());
  return G4_DISPATCH(g, squared_norm(g));
}

}  // namespace g4::ops

// The one entry point of every op in ops/optim.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/optim.h"

#include "ops/cpu/optim.h"
#include "ops/dispatch.h"
#include "ops/master_bits.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/optim.h"
#endif

namespace g4::ops {

namespace {
// exp_avg and exp_avg_sq have `like`'s shape and device (the master, or the bf16 parameter a
// remainder joins), each in the master's dtype or (with an f32 master) bf16.
void check_moments(const char* op, const Tensor& like, DType master_dtype, const Tensor& exp_avg,
                   const Tensor& exp_avg_sq) {
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}}) {
    check_on(op, name, t, like.device());
    G4_CHECK(t.shape() == like.shape(), op, ": shapes differ: master ", like.describe(), " vs ", name, " ",
             t.describe());
    G4_CHECK(t.dtype() == master_dtype || (t.dtype() == DType::BF16 && master_dtype == DType::F32), op, ": ", name,
             " ", t.describe(), " must be the master's dtype, or bf16 with an f32 master (", dtype_name(master_dtype),
             ")");
  }
}

void check_step_and_grad(const char* op, const Tensor& master, const Tensor& grad, const AdamWHyper& h) {
  G4_CHECK(h.step >= 1, op, ": step must be >= 1 (the bias corrections divide by 1 - beta^step), got ", h.step);
  if (!grad.defined()) return;
  const Device device = master.device();
  check_on(op, "grad", grad, device);
  // The CPU converts any float gradient to the master's dtype; the GPU reads f32 or bf16.
  const bool dtype_ok = device == Device::CPU ? is_floating(grad.dtype()) : is_backend_float(grad.dtype(), device);
  G4_CHECK(grad.shape() == master.shape() && dtype_ok, op, ": grad ", grad.describe(),
           " must be a float tensor of the master's shape ", master.describe());
}

void check_decay_mask(const char* op, const Tensor& decay_mask, const Tensor& master) {
  if (!decay_mask.defined()) return;
  check_on(op, "decay_mask", decay_mask, master.device());
  G4_CHECK(decay_mask.dtype() == DType::U8 && decay_mask.shape() == master.shape(), op,
           ": decay_mask must be u8 of the master's shape ", master.describe(), ", got ", decay_mask.describe());
}

void check_grad_scale(const char* op, const Tensor& grad_scale_tensor, Device device) {
  if (!grad_scale_tensor.defined()) return;
  check_on(op, "grad_scale_tensor", grad_scale_tensor, device);
  G4_CHECK(grad_scale_tensor.numel() == 1 && (device == Device::CPU || grad_scale_tensor.dtype() == DType::F32), op,
           ": grad_scale_tensor must have one element (f32 on the GPU), got ", grad_scale_tensor.describe());
}

void check_split(const char* op, const Tensor& param, const Tensor& remainder) {
  check_on(op, "param", param, param.device());
  check_on(op, "remainder", remainder, param.device());
  G4_CHECK(param.dtype() == DType::BF16 && remainder.dtype() == DType::I16 && param.shape() == remainder.shape(), op,
           ": param must be bf16 and remainder i16 of its shape, got ", param.describe(), " and ", remainder.describe());
}
}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWHyper& h,
                bool decay, const Tensor& decay_mask, const Tensor& grad_scale_tensor, Tensor* param_bf16_out) {
  const char* op = "adamw_step";
  check_float(op, "master", master);
  const Device device = master.device();
  G4_CHECK(device == Device::CPU || master.dtype() == DType::F32, op, ": the GPU keeps f32 master weights, got ",
           master.describe());
  check_moments(op, master, master.dtype(), exp_avg, exp_avg_sq);
  check_step_and_grad(op, master, grad, h);
  check_decay_mask(op, decay_mask, master);
  check_grad_scale(op, grad_scale_tensor, device);
  if (param_bf16_out) {
    check_on(op, "param_bf16_out", *param_bf16_out, device);
    G4_CHECK(param_bf16_out->dtype() == DType::BF16 && param_bf16_out->shape() == master.shape(), op,
             ": param_bf16_out must be bf16 of the master's shape ", master.describe(), ", got ",
             param_bf16_out->describe());
  }
  return G4_DISPATCH(
      master, adamw_step(master, grad, exp_avg, exp_avg_sq, h, decay, decay_mask, grad_scale_tensor, param_bf16_out));
}

void adamw_step_remainders(Tensor& param, Tensor& remainder, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                           const AdamWHyper& h, bool decay, const Tensor& decay_mask,
                           const Tensor& grad_scale_tensor) {
  const char* op = "adamw_step_remainders";
  check_split(op, param, remainder);
  check_moments(op, param, DType::F32, exp_avg, exp_avg_sq);
  check_step_and_grad(op, param, grad, h);
  check_decay_mask(op, decay_mask, param);
  check_grad_scale(op, grad_scale_tensor, param.device());
  G4_DISPATCH(param,
              adamw_step_remainders(param, remainder, grad, exp_avg, exp_avg_sq, h, decay, decay_mask, grad_scale_tensor));
}

SplitMaster split_master(const Tensor& master) {
  check_defined("split_master", "master", master);
  G4_CHECK(master.dtype() == DType::F32 && master.device() == Device::CPU,
           "split_master: master must be an f32 CPU tensor, got ", master.describe());
  SplitMaster out{Tensor::empty(master.shape(), DType::BF16), Tensor::empty(master.shape(), DType::I16)};
  const uint32_t* m = static_cast<const uint32_t*>(master.raw());
  uint16_t* p = static_cast<uint16_t*>(out.param.raw());
  int16_t* r = static_cast<int16_t*>(out.remainder.raw());
  for (int64_t i = 0; i < master.numel(); ++i) split_master_bits(m[i], p[i], r[i]);
  return out;
}

Tensor join_master(const Tensor& param, const Tensor& remainder) {
  const char* op = "join_master";
  check_split(op, param, remainder);
  G4_CHECK(param.device() == Device::CPU, op, ": param and remainder must be CPU tensors, got ", param.describe());
  Tensor master = Tensor::empty(param.shape(), DType::F32);
  const uint16_t* p = static_cast<const uint16_t*>(param.raw());
  const int16_t* r = static_cast<const int16_t*>(remainder.raw());
  uint32_t* m = static_cast<uint32_t*>(master.raw());
  for (int64_t i = 0; i < master.numel(); ++i) m[i] = join_master_bits(p[i], r[i]);
  return master;
}

Tensor squared_norm(const Tensor& g) {
  check_defined("squared_norm", "g", g);
  G4_CHECK(g.dtype() == DType::BF16 || is_backend_float(g.dtype(), g.device()), "squared_norm: unsupported dtype ",
           g.describe());
  return G4_DISPATCH(g, squared_norm(g));
}

}  // namespace g4::ops

// The expert GEMMs of an MoE layer on Hopper tensor cores (wgmma fed by TMA), with each expert's
// row range read from the offsets on the device: nothing about the routing goes to the host, so a
// layer needs no synchronisation and can be captured in a CUDA graph. Rows are sorted by expert
// (ops::moe_plan); w is [E, Kd, Nd]; all operands bf16.
//   forward:      y_e  [n_e, Nd] = xs_e [n_e, Kd] · w_e
//   input grad:   dxs_e [n_e, Kd] = dy_e [n_e, Nd] · w_eᵀ
//   weight grad:  dw_e [Kd, Nd] = xs_eᵀ · dy_e + beta · dw_e   (f32 or bf16 dw; beta·dw alone for
//                 experts with no rows)
#pragma once
#include "core/tensor.h"

namespace g4::ops::cuda {

// Whether the kernels take these operands: bf16 rows and weights, Kd and Nd multiples of 8 (TMA
// row strides are multiples of 16 bytes), 16-byte aligned bases, at most 4096 experts and 2^31 rows.
bool device_grouped_gemm_supported(const Tensor& rows, const Tensor& w);

// offsets: i64 [E+1] on the GPU, from 0 to the rows of xs / dy.
void device_grouped_forward(const Tensor& xs, const Tensor& w, const Tensor& offsets, Tensor& y);
void device_grouped_input_grad(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dxs);
void device_grouped_weight_grad(const Tensor& xs, const Tensor& dy, const Tensor& offsets, Tensor& dw, float beta);

}  // namespace g4::ops::cuda

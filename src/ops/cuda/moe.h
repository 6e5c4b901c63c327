// CUDA implementations of ops/moe.h: routing, the expert-sorted plan (a stable counting sort on the
// device, one small copy of the row counts to the host), permute/unpermute gathers that sum in
// fp32 without atomics, and the grouped matmul over expert row groups (wgmma kernels reading the
// offsets on the device, cuBLAS's grouped GEMM, or one cuBLASLt call per expert). bf16 or f32.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "ops/moe.h"

namespace g4::ops::cuda {
#include "ops/backend/moe.inc"

// How grouped_matmul issues its GEMMs. Auto (the default) takes the wgmma kernels of
// grouped_gemm.h, which read the expert offsets on the device, wherever they apply (bf16, widths
// multiples of 8: every released Gemma 4 MoE); elsewhere cuBLAS's grouped GEMM
// (cublasGemmGroupedBatchedEx, one launch for all experts), falling back to Loop (one cuBLASLt call
// per non-empty expert) if cuBLAS rejects the problem. Device insists on the wgmma kernels (an error
// where they do not apply); Grouped and Loop keep to cuBLAS. The environment variable
// G4_GROUPED_GEMM=auto|device|grouped|loop sets the initial choice; benchmarks switch explicitly.
// On the cuBLAS paths, weight gradients written in f32 from bf16 operands always take the loop
// (cuBLAS has no grouped form).
enum class GroupedGemmBackend { Auto, Device, Grouped, Loop };
void set_grouped_gemm_backend(GroupedGemmBackend backend);
// ops::grouped_matmul_takes_device_offsets for GPU tensors: the device kernels chosen (Auto or Device) and
// they take the operands.
bool grouped_matmul_takes_device_offsets(const Tensor& rows, const Tensor& w);
GroupedGemmBackend grouped_gemm_backend();

// Which kernels moe_experts runs: Streamed (the default, 2-8% faster on an H100 from 1 to 128
// tokens, docs/performance.md) has a producer warp stream the weights into shared memory with the
// tensor-memory accelerator, where the widths are multiples of 8 and two CTAs' shared memory fits a
// multiprocessor; Registers (everywhere else) loads them into each thread's registers.
// G4_DECODE_EXPERTS_STREAM=0 sets Registers initially; tests and benchmarks switch explicitly.
enum class DecodeExpertsKernel { Registers, Streamed };
void set_decode_experts_kernel(DecodeExpertsKernel kernel);
DecodeExpertsKernel decode_experts_kernel();

// ops::moe_experts_from_logits (ops/fused.h) on the GPU.
Tensor moe_experts_from_logits(const Tensor& x, const Tensor& logits, int64_t k, const Tensor& gate_up,
                               const Tensor& down);

}  // namespace g4::ops::cuda

// CUDA implementations of ops/moe.h: routing, the expert-sorted plan (a stable counting sort on the
// device, one small copy of the row counts to the host), permute/unpermute gathers that sum in
// fp32 without atomics, and the grouped matmul over expert row groups (cuBLAS grouped GEMM, or one
// cuBLASLt call per expert). bf16 or f32 tensors.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "ops/moe.h"

namespace g4::ops::cuda {

void router_topk(const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices);
Tensor router_topk_backward(const Tensor& dweights, const Tensor& probs, const Tensor& indices);
MoePlan moe_plan(const Tensor& indices, int64_t num_experts);
Tensor moe_permute(const Tensor& x, const MoePlan& plan);
Tensor moe_permute_backward(const Tensor& dxs, const MoePlan& plan);
Tensor moe_unpermute(const Tensor& ys, const Tensor& weights, const MoePlan& plan);
void moe_unpermute_backward(const Tensor& dout, const Tensor& ys, const Tensor& weights, const MoePlan& plan,
                            Tensor& dys, Tensor& dweights);
Tensor grouped_matmul(const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                      const Tensor& device_offsets);
void grouped_matmul_backward(const Tensor& dy, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                             Tensor& dxs, Tensor& dw, const Tensor& device_offsets, double dw_beta);

// How grouped_matmul issues its GEMMs: Auto (the default) uses cuBLAS's grouped GEMM
// (cublasGemmGroupedBatchedEx, one launch for all experts) and falls back to Loop (one cuBLASLt
// call per non-empty expert) if cuBLAS rejects the problem. The environment variable
// G4_GROUPED_GEMM=grouped|loop sets the initial choice; benchmarks switch explicitly. Weight
// gradients written in f32 from bf16 operands always take the loop (cuBLAS has no grouped form).
enum class GroupedGemmBackend { Auto, Grouped, Loop };
void set_grouped_gemm_backend(GroupedGemmBackend backend);
GroupedGemmBackend grouped_gemm_backend();

}  // namespace g4::ops::cuda

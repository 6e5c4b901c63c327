// Row-major GEMMs on the GPU through cuBLASLt, shared by the dense matmuls and the MoE grouped
// matmul. g4 tensors are row-major; cuBLAS is column-major: a row-major C = op(A)·op(B) is the
// column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so every call swaps the operands (see gemm.cpp).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace g4::ops::cuda {

// C[m, n] = alpha · op(A) · op(B) + beta · C, all row-major, with op(X) = Xᵀ when the flag is set.
// A is stored [m, k] (trans_a: [k, m]) with row stride lda; B [k, n] (trans_b: [n, k]) with row
// stride ldb; C [m, n] with row stride ldc. A and B: bf16 or f32 (same); C: A's dtype, or f32 with
// bf16 A/B. Compute is fp32 (no TF32). Queued on g4::cuda::stream(); descriptors and the chosen
// algorithm are cached per shape, dtypes and pointer alignment.
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
                   int64_t lda, const void* b, int64_t ldb, DType ab_dtype, float beta, void* c, int64_t ldc,
                   DType c_dtype);

// `batch` independent products of the same shape: operand i starts at a + i·stride_a (b, c likewise;
// strides in elements). One cuBLASLt launch; stride 0 is not allowed for c.
void gemm_rowmajor_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
                           int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                           DType ab_dtype, float beta, void* c, int64_t ldc, int64_t stride_c, DType c_dtype,
                           int64_t batch);

}  // namespace g4::ops::cuda

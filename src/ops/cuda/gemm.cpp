// cuBLASLt plans for row-major GEMMs: one matmul descriptor, three layouts and the heuristic's
// algorithm per distinct problem, created on first use and kept for the life of the process.
#include "ops/cuda/gemm.h"

#include <cublasLt.h>

#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/gemv.h"

namespace g4::ops::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F32: return CUDA_R_32F;
    default: G4_FAIL("gemm: unsupported dtype ", dtype_name(t), " on the GPU (bf16 or f32)");
  }
}

// The largest power of two (at most 256) dividing the address: cuBLASLt's heuristic assumes
// 256-byte aligned buffers unless told otherwise, and row slices of a tensor often are not.
// With batches, every operand's start counts: the stride (in bytes) is or-ed in.
uint32_t alignment(const void* p, int64_t stride_bytes) {
  const auto v = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(stride_bytes);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

struct Key {
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldc;
  DType ab, c;
  uint32_t align_a, align_b, align_c;
  bool accumulate;
  int64_t batch, stride_a, stride_b, stride_c;
  auto tie() const {
    return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldc, ab, c, align_a, align_b, align_c, accumulate, batch,
                    stride_a, stride_b, stride_c);
  }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLAS's A, B, C (see make_plan)
  cublasLtMatmulAlgo_t algo{};
};

Plan make_plan(const Key& key) {
  // Column-major view: cuBLAS's A is our B (stored [k, n] row-major = [n, k] column-major, or
  // transposed), cuBLAS's B is our A, and the column-major result [n, m] is our row-major [m, n].
  Plan p;
  const cudaDataType_t ab = cuda_type(key.ab), ct = cuda_type(key.c);
  G4_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  G4_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  G4_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  G4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, ab, u(key.trans_b ? key.k : key.n), u(key.trans_b ? key.n : key.k),
                                             key.ldb));
  G4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, ab, u(key.trans_a ? key.m : key.k), u(key.trans_a ? key.k : key.m),
                                             key.lda));
  G4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ct, u(key.n), u(key.m), key.ldc));
  if (key.batch > 1) {
    const auto set_batch = [&](cublasLtMatrixLayout_t layout, int64_t stride) {
      const int32_t count = static_cast<int32_t>(key.batch);
      G4_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      G4_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                       sizeof(stride)));
    };
    set_batch(p.a, key.stride_b);  // cuBLAS's A is our B
    set_batch(p.b, key.stride_a);
    set_batch(p.c, key.stride_c);
  }

  cublasLtMatmulPreference_t pref = nullptr;
  G4_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = g4::cuda::blaslt_workspace_bytes();
  G4_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // Our A is cuBLAS's B and vice versa.
  G4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b,
                                                       sizeof(uint32_t)));
  G4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a,
                                                       sizeof(uint32_t)));
  G4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c,
                                                       sizeof(uint32_t)));
  G4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c,
                                                       sizeof(uint32_t)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g4::cuda::blaslt_handle(), p.op, p.a, p.b, p.c, p.c, pref,
                                                           1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  G4_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "gemm: cuBLASLt has no algorithm for [", key.m, ", ", key.k,
           "] x [", key.k, ", ", key.n, "] (trans_a ", key.trans_a, ", trans_b ", key.trans_b, ", ", dtype_name(key.ab),
           " -> ", dtype_name(key.c), ", lda ", key.lda, ", ldb ", key.ldb, ", ldc ", key.ldc, "; status ",
           cublasGetStatusString(st), ")");
  p.algo = result.algo;
  return p;
}

const Plan& plan_for(const Key& key) {
  static std::mutex mu;
  static auto* plans = new std::map<Key, Plan>;  // never destroyed: see core/cuda/runtime.cpp
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(key)).first;
  return it->second;
}

}  // namespace

void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
                   int64_t lda, const void* b, int64_t ldb, DType ab_dtype, float beta, void* c, int64_t ldc,
                   DType c_dtype) {
  gemm_rowmajor_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, ab_dtype, beta, c, ldc, 0, c_dtype, 1);
}

void gemm_rowmajor_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
                           int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                           DType ab_dtype, float beta, void* c, int64_t ldc, int64_t stride_c, DType c_dtype,
                           int64_t batch) {
  G4_CHECK(batch >= 0 && batch <= std::numeric_limits<int32_t>::max(), "gemm: batch count ", batch, " out of range");
  G4_CHECK(batch <= 1 || (stride_a >= 0 && stride_b >= 0 && stride_c > 0), "gemm: batch strides a ", stride_a, ", b ",
           stride_b, ", c ", stride_c, " must be >= 0 (c > 0)");
  if (batch == 0) return;
  if (batch == 1) stride_a = stride_b = stride_c = 0;
  G4_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size [", m, ", ", k, "] x [", k, ", ", n, "]");
  G4_CHECK(c_dtype == ab_dtype || (ab_dtype == DType::BF16 && c_dtype == DType::F32), "gemm: ", dtype_name(ab_dtype),
           " inputs cannot produce ", dtype_name(c_dtype), " (C takes the inputs' dtype, or f32 with bf16 inputs)");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // An empty sum: C = beta·C. cuBLASLt does not take k = 0.
    G4_CHECK(beta == 0.0f || beta == 1.0f, "gemm: k = 0 with beta ", beta, " is not supported");
    if (beta == 0.0f)
      for (int64_t i = 0; i < batch; ++i)
        G4_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(c) + i * stride_c * dtype_size(c_dtype),
                                        static_cast<size_t>(ldc) * dtype_size(c_dtype), 0,
                                        static_cast<size_t>(n) * dtype_size(c_dtype), static_cast<size_t>(m),
                                        g4::cuda::stream()));
    return;
  }
  G4_CHECK(lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n) && ldc >= n, "gemm: row strides lda ", lda, ", ldb ",
           ldb, ", ldc ", ldc, " too small for [", m, ", ", k, "] x [", k, ", ", n, "]");
  // A decode step's few rows against a weight matrix: one pass over W (gemv.h), where faster.
  if (batch == 1 && !trans_a && trans_b && gemv_preferred(m, n, k) && gemv_fits(m, k, a, lda, b, ldb, ab_dtype, c_dtype)) {
    gemv_rowmajor(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, c_dtype);
    return;
  }
  const Key key{trans_a, trans_b, m, n, k, lda, ldb, ldc, ab_dtype, c_dtype, alignment(a, stride_a * dtype_size(ab_dtype)),
                alignment(b, stride_b * dtype_size(ab_dtype)), alignment(c, stride_c * dtype_size(c_dtype)), beta != 0.0f, batch, stride_a, stride_b, stride_c};
  const Plan& p = plan_for(key);
  G4_CUBLAS_CHECK(cublasLtMatmul(g4::cuda::blaslt_handle(), p.op, &alpha, b, p.a, a, p.b, &beta, c, p.c, c, p.c,
                                 &p.algo, g4::cuda::blaslt_workspace(), g4::cuda::blaslt_workspace_bytes(),
                                 g4::cuda::stream()));
}

}  // namespace g4::ops::cuda

// Typed front door to OpenBLAS gemm (row-major), shared by matmul, linear and grouped_matmul.
#pragma once
#include <cblas.h>

#include <algorithm>
#include <cstdint>

namespace g4::ops::cpu {

// C[M,N] = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions lda/ldb/ldc.
// Degenerate sizes are handled here because BLAS rejects zero leading dimensions.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // empty sum: C = beta · C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto i32 = [](int64_t v) { return static_cast<blasint>(std::max<int64_t>(v, 1)); };
  if constexpr (sizeof(T) == sizeof(float)) {
    cblas_sgemm(CblasRowMajor, ta, tb, i32(m), i32(n), i32(k), alpha, a, i32(lda), b, i32(ldb), beta, c, i32(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, i32(m), i32(n), i32(k), alpha, a, i32(lda), b, i32(ldb), beta, c, i32(ldc));
  }
}

}  // namespace g4::ops::cpu

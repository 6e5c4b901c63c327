// Dense products on the CPU: every variant reduces to one row-major BLAS gemm.
#include "ops/cpu/matmul.h"

#include "ops/cpu/blas.h"
#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
using cpu::gemm;

// op(A)·op(B) (checked by ops/matmul.cpp) as a gemm problem. A is seen as the matrix [rows, cols]
// with all leading dims flattened into rows; B is 2-D.
struct GemmShape {
  int64_t m, n, k;
  int64_t a_cols, b_cols;  // leading dimensions as stored
};

GemmShape plan_gemm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const int64_t a_rows = cpu::leading_rows(a), a_cols = a.size(-1);
  const int64_t b_rows = b.size(0), b_cols = b.size(1);
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t n = trans_b ? b_rows : b_cols;
  return {m, n, k, a_cols, b_cols};
}

Shape result_shape(const Tensor& a, const GemmShape& g, bool trans_a) {
  if (trans_a) return {g.m, g.n};
  Shape s = a.shape();
  s.back() = g.n;
  return s;
}

Tensor matmul_impl(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const GemmShape g = plan_gemm(a, b, trans_a, trans_b);
  return cpu::dispatch_float(op, a, [&](auto tag) {
    using T = decltype(tag);
    Tensor c = Tensor::empty(result_shape(a, g, trans_a), a.dtype());
    gemm<T>(trans_a, trans_b, g.m, g.n, g.k, T(1), a.data<T>(), g.a_cols, b.data<T>(), g.b_cols, T(0), c.data<T>(),
            g.n);
    return c;
  });
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  return matmul_impl("matmul", a, b, trans_a, trans_b);
}

void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha, double beta) {
  const GemmShape g = plan_gemm(a, b, trans_a, trans_b);
  cpu::dispatch_float("matmul_acc", a, [&](auto tag) {
    using T = decltype(tag);
    gemm<T>(trans_a, trans_b, g.m, g.n, g.k, static_cast<T>(alpha), a.data<T>(), g.a_cols, b.data<T>(), g.b_cols,
            static_cast<T>(beta), c.data<T>(), g.n);
  });
}

Tensor linear(const Tensor& x, const Tensor& w) {
  // A 1-D x is one row; the matmul needs a matrix.
  const Tensor x2 = x.dim() == 1 ? x.reshape({1, x.size(0)}) : x;
  Tensor y = matmul_impl("linear", x2, w, false, true);
  return x.dim() == 1 ? y.reshape({w.size(0)}) : y;
}

Tensor linear_backward_input(const Tensor& dy, const Tensor& w) {
  const Tensor dy2 = dy.dim() == 1 ? dy.reshape({1, dy.size(0)}) : dy;
  Tensor dx = matmul_impl("linear_backward_input", dy2, w, false, false);
  return dy.dim() == 1 ? dx.reshape({w.size(1)}) : dx;
}

Tensor linear_backward_weight(const Tensor& dy, const Tensor& x) {
  // dW[out, in] = dyᵀ · x: both flattened to [rows, ·] matrices.
  const Tensor dy2 = dy.reshape({cpu::leading_rows(dy), dy.size(-1)});
  const Tensor x2 = x.reshape({cpu::leading_rows(x), x.size(-1)});
  return matmul_impl("linear_backward_weight", dy2, x2, true, false);
}

}  // namespace g4::ops::cpu

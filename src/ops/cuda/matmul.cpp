// Dense products on the GPU: every variant is one cuBLASLt call (ops/cuda/gemm.h).
#include "ops/cuda/matmul.h"

#include "ops/cuda/gemm.h"

namespace g4::ops::cuda {

namespace {

// Product of every dimension but the last (not numel / last: that is 0 / 0 for an empty last one).
int64_t leading_rows(const Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

struct GemmShape {
  int64_t m, n, k;
  int64_t a_cols, b_cols;  // row strides as stored
};

// op(A)·op(B), checked by ops/matmul.cpp.
GemmShape plan_gemm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const int64_t a_rows = leading_rows(a), a_cols = a.size(-1);
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t n = trans_b ? b.size(0) : b.size(1);
  return {m, n, k, a_cols, b.size(1)};
}

Tensor matmul_impl(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const GemmShape g = plan_gemm(a, b, trans_a, trans_b);
  Shape shape = a.shape();
  if (trans_a) {
    shape = {g.m, g.n};
  } else {
    shape.back() = g.n;
  }
  Tensor c = Tensor::empty(shape, a.dtype(), Device::CUDA);
  gemm_rowmajor(trans_a, trans_b, g.m, g.n, g.k, 1.0f, a.raw(), g.a_cols, b.raw(), g.b_cols, a.dtype(), 0.0f, c.raw(),
                g.n, c.dtype());
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  return matmul_impl(a, b, trans_a, trans_b);
}

void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha, double beta) {
  const GemmShape g = plan_gemm(a, b, trans_a, trans_b);
  gemm_rowmajor(trans_a, trans_b, g.m, g.n, g.k, static_cast<float>(alpha), a.raw(), g.a_cols, b.raw(), g.b_cols,
                a.dtype(), static_cast<float>(beta), c.raw(), g.n, c.dtype());
}

Tensor linear(const Tensor& x, const Tensor& w) {
  const Tensor x2 = x.dim() == 1 ? x.reshape({1, x.size(0)}) : x;
  Tensor y = matmul_impl(x2, w, false, true);
  return x.dim() == 1 ? y.reshape({w.size(0)}) : y;
}

Tensor linear_backward_input(const Tensor& dy, const Tensor& w) {
  const Tensor dy2 = dy.dim() == 1 ? dy.reshape({1, dy.size(0)}) : dy;
  Tensor dx = matmul_impl(dy2, w, false, false);
  return dy.dim() == 1 ? dx.reshape({w.size(1)}) : dx;
}

Tensor linear_backward_weight(const Tensor& dy, const Tensor& x) {
  const Tensor dy2 = dy.reshape({leading_rows(dy), dy.size(-1)});
  const Tensor x2 = x.reshape({leading_rows(x), x.size(-1)});
  return matmul_impl(dy2, x2, true, false);
}

}  // namespace g4::ops::cuda

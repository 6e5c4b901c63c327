// Dense products on the GPU: every variant is one cuBLASLt call (ops/cuda/gemm.h).
#include "ops/cuda/matmul.h"

#include "ops/cuda/checks.h"
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

GemmShape plan_gemm(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_gpu_float(op, "A", a);
  check_gpu_float(op, "B", b);
  G4_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: A ", a.describe(), " vs B ", b.describe());
  G4_CHECK(a.dim() >= 2, op, ": A must have at least 2 dimensions, got ", a.describe());
  G4_CHECK(b.dim() == 2, op, ": B must be 2-D, got ", b.describe());
  const int64_t a_rows = leading_rows(a), a_cols = a.size(-1);
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t k_b = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  G4_CHECK(k == k_b, op, ": inner dimensions differ: A ", a.describe(), (trans_a ? " (transposed)" : ""), " and B ",
           b.describe(), (trans_b ? " (transposed)" : ""));
  return {m, n, k, a_cols, b.size(1)};
}

Tensor matmul_impl(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const GemmShape g = plan_gemm(op, a, b, trans_a, trans_b);
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
  return matmul_impl("matmul", a, b, trans_a, trans_b);
}

void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha, double beta) {
  const GemmShape g = plan_gemm("matmul_acc", a, b, trans_a, trans_b);
  check_gpu_float("matmul_acc", "C", c);
  G4_CHECK(c.dtype() == a.dtype() || c.dtype() == DType::F32, "matmul_acc: C ", c.describe(),
           " must have A's dtype or be f32 (A ", a.describe(), ")");
  G4_CHECK(c.dim() >= 1 && c.size(-1) == g.n && c.numel() == g.m * g.n, "matmul_acc: C ", c.describe(),
           " does not match the product of A ", a.describe(), " and B ", b.describe(), " ([", g.m, ", ", g.n, "])");
  gemm_rowmajor(trans_a, trans_b, g.m, g.n, g.k, static_cast<float>(alpha), a.raw(), g.a_cols, b.raw(), g.b_cols,
                a.dtype(), static_cast<float>(beta), c.raw(), g.n, c.dtype());
}

Tensor linear(const Tensor& x, const Tensor& w) {
  check_gpu_float("linear", "x", x);
  check_gpu_float("linear", "weight", w);
  G4_CHECK(x.dim() >= 1, "linear: x must be [..., in], got ", x.describe());
  G4_CHECK(w.dim() == 2, "linear: weight must be [out, in], got ", w.describe());
  G4_CHECK(x.size(-1) == w.size(1), "linear: x ", x.describe(), " does not match weight ", w.describe(),
           " (x's last dim must equal in = weight dim 1)");
  const Tensor x2 = x.dim() == 1 ? x.reshape({1, x.size(0)}) : x;
  Tensor y = matmul_impl("linear", x2, w, false, true);
  return x.dim() == 1 ? y.reshape({w.size(0)}) : y;
}

Tensor linear_backward_input(const Tensor& dy, const Tensor& w) {
  check_gpu_float("linear_backward_input", "dy", dy);
  check_gpu_float("linear_backward_input", "weight", w);
  G4_CHECK(w.dim() == 2, "linear_backward_input: weight must be [out, in], got ", w.describe());
  G4_CHECK(dy.dim() >= 1 && dy.size(-1) == w.size(0), "linear_backward_input: dy ", dy.describe(),
           " does not match weight ", w.describe(), " (dy's last dim must equal out = weight dim 0)");
  const Tensor dy2 = dy.dim() == 1 ? dy.reshape({1, dy.size(0)}) : dy;
  Tensor dx = matmul_impl("linear_backward_input", dy2, w, false, false);
  return dy.dim() == 1 ? dx.reshape({w.size(1)}) : dx;
}

Tensor linear_backward_weight(const Tensor& dy, const Tensor& x) {
  check_gpu_float("linear_backward_weight", "dy", dy);
  check_gpu_float("linear_backward_weight", "x", x);
  G4_CHECK(dy.dim() >= 1 && x.dim() >= 1 && leading_rows(dy) == leading_rows(x), "linear_backward_weight: dy ",
           dy.describe(), " and x ", x.describe(), " must have the same rows");
  const Tensor dy2 = dy.reshape({leading_rows(dy), dy.size(-1)});
  const Tensor x2 = x.reshape({leading_rows(x), x.size(-1)});
  return matmul_impl("linear_backward_weight", dy2, x2, true, false);
}

}  // namespace g4::ops::cuda

// The one entry point of every op in ops/matmul.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/matmul.h"

#include "ops/cpu/matmul.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/matmul.h"
#endif

namespace g4::ops {

namespace {

struct ProductShape {
  int64_t m, n;
};

// op(A)·op(B) is defined: one float dtype and device, A with at least 2 dims (the leading ones
// flattened into rows), B 2-D, equal inner dimensions.
ProductShape check_product(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_same_dtype(op, "A", a, "B", b);
  G4_CHECK(a.dim() >= 2, op, ": A must have at least 2 dimensions, got ", a.describe());
  G4_CHECK(b.dim() == 2, op, ": B must be 2-D, got ", b.describe());
  const int64_t a_rows = leading_rows(a), a_cols = a.size(-1);
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t k_b = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  G4_CHECK(k == k_b, op, ": inner dimensions differ: A ", a.describe(), (trans_a ? " (transposed)" : ""), " and B ",
           b.describe(), (trans_b ? " (transposed)" : ""));
  return {m, n};
}

// w is a Linear weight [out, in] in x's dtype and device.
void check_weight(const char* op, const Tensor& x, const char* x_name, const Tensor& w) {
  G4_CHECK(w.defined() && w.dim() == 2, op, ": weight must be [out, in], got ", w.describe());
  check_same_dtype(op, x_name, x, "weight", w);
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_product("matmul", a, b, trans_a, trans_b);
  return G4_DISPATCH(a, matmul(a, b, trans_a, trans_b));
}

void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, Tensor& c, double alpha, double beta) {
  const ProductShape p = check_product("matmul_acc", a, b, trans_a, trans_b);
  check_float("matmul_acc", "C", c, a.device());
  // The GPU accumulates bf16 products into an f32 C (fp32 gradient buffers).
  G4_CHECK(c.dtype() == a.dtype() || (on_gpu(a) && c.dtype() == DType::F32), "matmul_acc: dtypes differ: A ",
           a.describe(), " vs C ", c.describe());
  // C may carry A's leading dims (e.g. [B, S, N]) as long as it is [M, N] once flattened.
  G4_CHECK(c.dim() >= 1 && c.size(-1) == p.n && c.numel() == p.m * p.n, "matmul_acc: C ", c.describe(),
           " does not match the product of A ", a.describe(), " and B ", b.describe(), " ([", p.m, ", ", p.n, "])");
  return G4_DISPATCH(a, matmul_acc(a, b, trans_a, trans_b, c, alpha, beta));
}

Tensor linear(const Tensor& x, const Tensor& w) {
  check_defined("linear", "x", x);
  G4_CHECK(x.dim() >= 1, "linear: x must be [..., in], got ", x.describe());
  check_weight("linear", x, "x", w);
  G4_CHECK(x.size(-1) == w.size(1), "linear: x ", x.describe(), " does not match weight ", w.describe(),
           " (x's last dim must equal in = weight dim 1)");
  return G4_DISPATCH(x, linear(x, w));
}

Tensor linear_backward_input(const Tensor& dy, const Tensor& w) {
  check_defined("linear_backward_input", "dy", dy);
  check_weight("linear_backward_input", dy, "dy", w);
  G4_CHECK(dy.dim() >= 1 && dy.size(-1) == w.size(0), "linear_backward_input: dy ", dy.describe(),
           " does not match weight ", w.describe(), " (dy's last dim must equal out = weight dim 0)");
  return G4_DISPATCH(dy, linear_backward_input(dy, w));
}

Tensor linear_backward_weight(const Tensor& dy, const Tensor& x) {
  check_same_dtype("linear_backward_weight", "dy", dy, "x", x);
  G4_CHECK(dy.dim() >= 1 && x.dim() >= 1 && leading_rows(dy) == leading_rows(x), "linear_backward_weight: dy ",
           dy.describe(), " and x ", x.describe(), " must have the same rows");
  return G4_DISPATCH(dy, linear_backward_weight(dy, x));
}

}  // namespace g4::ops

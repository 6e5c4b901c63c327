// The one entry point of every op in ops/elementwise.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/elementwise.h"

#include "ops/cpu/elementwise.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/elementwise.h"
#endif

namespace g4::ops {

namespace {
// x [..., D] with at least one dimension.
void check_rows(const char* op, const char* name, const Tensor& x) {
  check_float(op, name, x);
  G4_CHECK(x.dim() >= 1, op, ": ", name, " must be [..., D], got ", x.describe());
}

void check_cap(const char* op, double cap) { G4_CHECK(cap > 0, op, ": cap must be positive, got ", cap); }

// The binary pointwise ops take one float dtype, device and shape; returns `a`, the tensor the
// call is dispatched on.
const Tensor& pointwise(const char* op, const char* name_a, const Tensor& a, const char* name_b, const Tensor& b) {
  check_same_shape(op, name_a, a, name_b, b);
  return a;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return G4_DISPATCH(pointwise("add", "a", a, "b", b), add(a, b)); }

Tensor sub(const Tensor& a, const Tensor& b) { return G4_DISPATCH(pointwise("sub", "a", a, "b", b), sub(a, b)); }

Tensor mul(const Tensor& a, const Tensor& b) { return G4_DISPATCH(pointwise("mul", "a", a, "b", b), mul(a, b)); }

Tensor scale(const Tensor& a, double s) {
  check_float("scale", "a", a);
  return G4_DISPATCH(a, scale(a, s));
}

void add_(Tensor& acc, const Tensor& x, double alpha) {
  if (on_gpu(acc)) {
    // The GPU also accumulates a bf16 x into an f32 acc (fp32 gradient buffers).
    check_float("add_", "acc", acc);
    check_float("add_", "x", x, Device::CUDA);
    G4_CHECK(acc.shape() == x.shape(), "add_: shapes differ: acc ", acc.describe(), " vs x ", x.describe());
    G4_CHECK(acc.dtype() == x.dtype() || acc.dtype() == DType::F32, "add_: acc ", acc.describe(),
             " cannot accumulate x ", x.describe(), " (the GPU takes f32 += f32 or bf16, bf16 += bf16)");
  } else {
    check_same_shape("add_", "acc", acc, "x", x);
  }
  return G4_DISPATCH(acc, add_(acc, x, alpha));
}

void scale_(Tensor& a, double s) {
  check_float("scale_", "a", a);
  return G4_DISPATCH(a, scale_(a, s));
}

Tensor mul_rowvec(const Tensor& x, const Tensor& v) {
  check_same_dtype("mul_rowvec", "x", x, "v", v);
  G4_CHECK(x.dim() >= 1 && v.dim() == 1 && v.size(0) == x.size(-1), "mul_rowvec: v ", v.describe(),
           " must be [D] for x ", x.describe());
  return G4_DISPATCH(x, mul_rowvec(x, v));
}

Tensor sum_rows(const Tensor& x) {
  check_rows("sum_rows", "x", x);
  return G4_DISPATCH(x, sum_rows(x));
}

Tensor gelu_tanh(const Tensor& x) {
  check_float("gelu_tanh", "x", x);
  return G4_DISPATCH(x, gelu_tanh(x));
}

Tensor gelu_tanh_backward(const Tensor& dy, const Tensor& x) {
  return G4_DISPATCH(pointwise("gelu_tanh_backward", "dy", dy, "x", x), gelu_tanh_backward(dy, x));
}

Tensor gelu_gate(const Tensor& g, const Tensor& u) {
  return G4_DISPATCH(pointwise("gelu_gate", "g", g, "u", u), gelu_gate(g, u));
}

void gelu_gate_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  check_same_shape("gelu_gate_backward", "g", g, "u", u);
  check_same_shape("gelu_gate_backward", "dy", dy, "g", g);
  return G4_DISPATCH(dy, gelu_gate_backward(dy, g, u, dg, du));
}

Tensor gelu_gate_fused(const Tensor& gu) {
  check_float("gelu_gate_fused", "gu", gu);
  G4_CHECK(gu.dim() >= 1 && gu.size(-1) % 2 == 0, "gelu_gate_fused: gu must be [..., 2I], got ", gu.describe());
  return G4_DISPATCH(gu, gelu_gate_fused(gu));
}

Tensor gelu_gate_fused_backward(const Tensor& dy, const Tensor& gu) {
  check_same_dtype("gelu_gate_fused_backward", "dy", dy, "gu", gu);
  G4_CHECK(
      gu.dim() >= 1 && dy.dim() == gu.dim() && gu.size(-1) == 2 * dy.size(-1) && leading_rows(gu) == leading_rows(dy),
      "gelu_gate_fused_backward: dy ", dy.describe(), " must be [..., I] for gu ", gu.describe(), " [..., 2I]");
  return G4_DISPATCH(dy, gelu_gate_fused_backward(dy, gu));
}

Tensor softcap(const Tensor& x, double cap) {
  check_cap("softcap", cap);
  check_float("softcap", "x", x);
  return G4_DISPATCH(x, softcap(x, cap));
}

Tensor softcap_to_f32(const Tensor& x, double cap) {
  check_cap("softcap_to_f32", cap);
  check_float("softcap_to_f32", "x", x);
  return G4_DISPATCH(x, softcap_to_f32(x, cap));
}

Tensor softcap_backward(const Tensor& dy, const Tensor& y, double cap) {
  check_cap("softcap_backward", cap);
  check_same_shape("softcap_backward", "dy", dy, "y", y);
  return G4_DISPATCH(dy, softcap_backward(dy, y, cap));
}

Tensor activation(const Tensor& x, Activation act) {
  check_float("activation", "x", x);
  return G4_DISPATCH(x, activation(x, act));
}

Tensor activation_backward(const Tensor& dy, const Tensor& x, Activation act) {
  pointwise("activation_backward", "dy", dy, "x", x);
  return G4_DISPATCH(dy, activation_backward(dy, x, act));
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  G4_CHECK(lo <= hi, "clamp: lower bound ", lo, " above upper bound ", hi);
  check_float("clamp", "x", x);
  return G4_DISPATCH(x, clamp(x, lo, hi));
}

Tensor clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi) {
  pointwise("clamp_backward", "dy", dy, "x", x);
  return G4_DISPATCH(dy, clamp_backward(dy, x, lo, hi));
}

Tensor softmax_lastdim(const Tensor& x) {
  check_rows("softmax_lastdim", "x", x);
  return G4_DISPATCH(x, softmax_lastdim(x));
}

Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y) {
  check_same_shape("softmax_lastdim_backward", "dy", dy, "y", y);
  check_rows("softmax_lastdim_backward", "y", y);
  return G4_DISPATCH(dy, softmax_lastdim_backward(dy, y));
}

Tensor sum_all(const Tensor& x) {
  check_float("sum_all", "x", x);
  return G4_DISPATCH(x, sum_all(x));
}

}  // namespace g4::ops

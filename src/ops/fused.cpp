// The one entry point of the ops in ops/fused.h: arguments are checked here; a GPU call whose rows
// suit the fused kernel goes to it, every other call runs the separate ops it stands for (on the
// CPU that composition is the reference). The kernels read the norm weights in 16-byte packs too,
// so a weight that is a view at an unaligned offset (Tensor::slice0) takes the separate ops, as
// ops::rmsnorm itself checks its weight's alignment.
#include "ops/fused.h"

#include <initializer_list>

#include "core/env.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/paged_attention.h"
#include "ops/rope.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/fused.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/moe.h"
#endif

namespace g4::ops {

namespace {

// x [..., D] and its weight w [D] (the fused norms all have weights).
void check_normed(const char* op, const char* name, const Tensor& x, const char* w_name, const Tensor& w) {
  check_defined(op, w_name, w);
  check_norm_args(op, name, x, w_name, w);
}

// residual alike a, and at most 3 norms of a's width (add_rmsnorm_norms, rmsnorm_sum_add_norms).
void check_residual_and_norms(const char* op, const Tensor& residual, const Tensor& a,
                              const std::vector<NormOfSum>& norms) {
  check_same_dtype(op, "residual", residual, "a", a);
  check_same_shape(op, "residual", residual, "a", a);
  G4_CHECK(norms.size() <= 3, op, ": at most 3 norms, got ", norms.size());
  for (const NormOfSum& n : norms) check_normed(op, "a", a, "norms[i].weight", n.weight);
}

#ifdef G4_WITH_CUDA
// Whether the register-resident row kernels take every one of these tensors and norm weights.
bool rows_fit(std::initializer_list<const Tensor*> tensors, const std::vector<NormOfSum>& norms) {
  bool fits = true;
  for (const Tensor* t : tensors) fits = fits && cuda::fused_rows_fit(*t);
  for (const NormOfSum& n : norms) fits = fits && cuda::fused_rows_fit(n.weight);
  return fits;
}
#endif

}  // namespace

Tensor add_rmsnorm(const Tensor& residual, const Tensor& a, const Tensor& w, double scale, double eps) {
  check_normed("add_rmsnorm", "a", a, "w", w);
  check_same_dtype("add_rmsnorm", "residual", residual, "a", a);
  check_same_shape("add_rmsnorm", "residual", residual, "a", a);
#ifdef G4_WITH_CUDA
  if (on_gpu(a) && cuda::fused_rows_fit(a) && cuda::fused_rows_fit(residual) && cuda::fused_rows_fit(w))
    return cuda::add_rmsnorm(residual, a, w, scale, eps);
#endif
  const Tensor h = add(residual, rmsnorm(a, w, eps));
  return scale == 1.0 ? h : ops::scale(h, scale);
}

std::vector<Tensor> add_rmsnorm_norms(const Tensor& residual, const Tensor& a, const Tensor& w, double eps,
                                      const std::vector<NormOfSum>& norms, double scale) {
  const char* op = "add_rmsnorm_norms";
  check_normed(op, "a", a, "w", w);
  check_residual_and_norms(op, residual, a, norms);
#ifdef G4_WITH_CUDA
  if (on_gpu(a) && rows_fit({&a, &residual, &w}, norms)) return cuda::add_rmsnorm_norms(residual, a, w, eps, norms, scale);
#endif
  std::vector<Tensor> out{add_rmsnorm(residual, a, w, scale, eps)};
  for (const NormOfSum& n : norms) {
    const Tensor y = rmsnorm(out[0], n.weight, eps);
    out.push_back(n.scale == 1.0 ? y : ops::scale(y, n.scale));
  }
  return out;
}

std::vector<Tensor> linear_add_rmsnorm_norms(const Tensor& x, const Tensor& w_proj, const Tensor& residual,
                                             const Tensor& w, double eps, const std::vector<NormOfSum>& norms,
                                             double scale) {
  const char* op = "linear_add_rmsnorm_norms";
  check_float(op, "x", x);
  check_same_dtype(op, "x", x, "w_proj", w_proj);
  G4_CHECK(x.dim() >= 1 && w_proj.dim() == 2 && w_proj.size(1) == x.size(-1), op, ": weight ", w_proj.describe(),
           " must be [N, K] for x ", x.describe());
  Shape shape = x.shape();
  shape.back() = w_proj.size(0);
  G4_CHECK(residual.shape() == shape, op, ": residual ", residual.describe(), " must have the product's shape ",
           shape_str(shape));
  check_same_dtype(op, "x", x, "residual", residual);
  check_normed(op, "residual", residual, "w", w);
  for (const NormOfSum& n : norms) check_normed(op, "residual", residual, "norms[i].weight", n.weight);
  G4_CHECK(norms.size() <= 3, op, ": at most 3 norms, got ", norms.size());
#ifdef G4_WITH_CUDA
  // Opt-in (G4_DECODE_NORMS_IN_GEMV=1) until it has run on a GPU: written in session 41, which had none.
  static const bool in_gemv = env_int("G4_DECODE_NORMS_IN_GEMV", 0, 0, 1, "two launches") == 1;
  const int64_t rows = leading_rows(x), n = w_proj.size(0), k = x.size(-1);
  if (in_gemv && on_gpu(x) && x.dtype() == DType::BF16 && cuda::gemv_preferred(rows, n, k) &&
      cuda::gemv_fits(rows, k, x.raw(), k, w_proj.raw(), k, DType::BF16, DType::BF16) && cuda::gemv_norms_fit(rows, n) &&
      rows_fit({&residual, &w}, norms)) {
    Tensor y = Tensor::empty(shape, DType::BF16, Device::CUDA);
    std::vector<Tensor> out{Tensor::empty(shape, DType::BF16, Device::CUDA)};
    std::vector<cuda::GemvNorm> gemv_norms;
    for (const NormOfSum& nrm : norms) {
      out.push_back(Tensor::empty(shape, DType::BF16, Device::CUDA));
      gemv_norms.push_back({nrm.weight.raw(), out.back().raw(), static_cast<float>(nrm.scale)});
    }
    cuda::gemv_add_rmsnorm_norms(rows, n, k, x.raw(), k, w_proj.raw(), k, y.raw(), residual.raw(), w.raw(),
                                 out[0].raw(), gemv_norms, static_cast<float>(eps), static_cast<float>(scale));
    return out;
  }
#endif
  return add_rmsnorm_norms(residual, linear(x, w_proj), w, eps, norms, scale);
}

Tensor rmsnorm_sum(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb, double eps) {
  check_normed("rmsnorm_sum", "a", a, "wa", wa);
  check_normed("rmsnorm_sum", "b", b, "wb", wb);
  check_same_dtype("rmsnorm_sum", "a", a, "b", b);
  check_same_shape("rmsnorm_sum", "a", a, "b", b);
#ifdef G4_WITH_CUDA
  if (on_gpu(a) && cuda::fused_rows_fit(a) && cuda::fused_rows_fit(b) && cuda::fused_rows_fit(wa) &&
      cuda::fused_rows_fit(wb))
    return cuda::rmsnorm_sum(a, wa, b, wb, eps);
#endif
  return add(rmsnorm(a, wa, eps), rmsnorm(b, wb, eps));
}

std::vector<Tensor> rmsnorm_sum_add_norms(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb,
                                          const Tensor& residual, const Tensor& w, double eps,
                                          const std::vector<NormOfSum>& norms, double scale) {
  const char* op = "rmsnorm_sum_add_norms";
  check_normed(op, "a", a, "wa", wa);
  check_normed(op, "b", b, "wb", wb);
  check_normed(op, "a", a, "w", w);
  check_same_dtype(op, "a", a, "b", b);
  check_same_shape(op, "a", a, "b", b);
  check_residual_and_norms(op, residual, a, norms);
#ifdef G4_WITH_CUDA
  if (on_gpu(a) && rows_fit({&a, &b, &wa, &wb, &residual, &w}, norms))
    return cuda::rmsnorm_sum_add_norms(a, wa, b, wb, residual, w, eps, norms, scale);
#endif
  return add_rmsnorm_norms(residual, rmsnorm_sum(a, wa, b, wb, eps), w, eps, norms, scale);
}

Tensor rmsnorm_rope(const Tensor& x, const Tensor& w, const Tensor& positions, const Tensor& inv_freq, double eps) {
  check_normed("rmsnorm_rope", "x", x, "w", w);
#ifdef G4_WITH_CUDA
  if (on_gpu(x) && cuda::rmsnorm_rope_fits(x) && cuda::fused_rows_fit(w)) {
    check_rope_args("rmsnorm_rope", x, positions, inv_freq);
    return cuda::rmsnorm_rope(x, w, positions, inv_freq, eps);
  }
#endif
  return rope(rmsnorm(x, w, eps), positions, inv_freq);
}

Tensor gelu_gate_linear(const Tensor& x, const Tensor& w_gate, const Tensor& w_up) {
  check_float("gelu_gate_linear", "x", x);
  check_same_dtype("gelu_gate_linear", "x", x, "w_gate", w_gate);
  check_same_shape("gelu_gate_linear", "w_gate", w_gate, "w_up", w_up);
  G4_CHECK(x.dim() >= 1 && w_gate.dim() == 2 && w_gate.size(1) == x.size(-1), "gelu_gate_linear: weights ",
           w_gate.describe(), " must be [N, K] for x ", x.describe());
#ifdef G4_WITH_CUDA
  const int64_t rows = leading_rows(x), n = w_gate.size(0), k = x.size(-1);
  if (on_gpu(x) && x.dtype() == DType::BF16 && cuda::gemv_preferred(rows, n, k) &&
      cuda::gemv_fits(rows, k, x.raw(), k, w_gate.raw(), k, DType::BF16, DType::BF16) &&
      cuda::gemv_fits(rows, k, x.raw(), k, w_up.raw(), k, DType::BF16, DType::BF16)) {
    Shape shape = x.shape();
    shape.back() = n;
    Tensor y = Tensor::empty(shape, DType::BF16, Device::CUDA);
    cuda::gemv_gelu_gate(rows, n, k, x.raw(), k, w_gate.raw(), w_up.raw(), k, y.raw(), n);
    return y;
  }
#endif
  return gelu_gate(linear(x, w_gate), linear(x, w_up));
}

Tensor norm_rope_write_kv(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                          const Tensor& v_raw, const Tensor& positions, const Tensor& inv_freq, double eps,
                          Tensor& k_pages, Tensor& v_pages, const Tensor& slots) {
  const char* op = "norm_rope_write_kv";
  check_rank(op, "q_raw", q_raw, 4, "[B, S, nH, d]");
  check_normed(op, "q_raw", q_raw, "wq", wq);
  // The keys and values as write_kv_pages takes them: [T, nKV, d] views.
  Tensor k_rows, v_rows;
  if (k_raw.defined()) {
    check_rank(op, "k_raw", k_raw, 4, "[B, S, nKV, d]");
    check_normed(op, "k_raw", k_raw, "wk", wk);
    check_same_shape(op, "k_raw", k_raw, "v_raw", v_raw);
    G4_CHECK(k_raw.size(0) == q_raw.size(0) && k_raw.size(1) == q_raw.size(1), op, ": k_raw ", k_raw.describe(),
             " and q_raw ", q_raw.describe(), " hold different tokens");
    const int64_t T = k_raw.size(0) * k_raw.size(1);
    k_rows = k_raw.reshape({T, k_raw.size(2), k_raw.size(3)});
    v_rows = v_raw.reshape({T, v_raw.size(2), v_raw.size(3)});
  }
#ifdef G4_WITH_CUDA
  if (on_gpu(q_raw) && cuda::norm_rope_write_kv_fits(q_raw, wq, k_raw, wk, v_raw, k_pages, v_pages, slots)) {
    check_rope_args(op, q_raw, positions, inv_freq);
    if (k_raw.defined()) check_write_kv_pages_args(op, k_rows, v_rows, k_pages, v_pages, slots);
    return cuda::norm_rope_write_kv(q_raw, wq, k_raw, wk, v_raw, positions, inv_freq, eps, k_pages, v_pages, slots);
  }
#endif
  const Tensor q = rmsnorm_rope(q_raw, wq, positions, inv_freq, eps);
  if (k_raw.defined())
    write_kv_pages(rmsnorm_rope(k_raw, wk, positions, inv_freq, eps).reshape(k_rows.shape()),
                   rmsnorm(v_raw, Tensor(), eps).reshape(v_rows.shape()), k_pages, v_pages, slots);
  return q;
}

void softmax_topk(const Tensor& logits, int64_t k, Tensor& weights, Tensor& indices) {
  check_float("softmax_topk", "logits", logits);
  check_rank("softmax_topk", "logits", logits, 2, "[T, E]");
  G4_CHECK(k >= 1 && k <= logits.size(1), "softmax_topk: k = ", k, " must be in [1, ", logits.size(1),
           "] for logits ", logits.describe());
#ifdef G4_WITH_CUDA
  if (on_gpu(logits) && logits.dtype() != DType::F64) return cuda::softmax_topk(logits, k, weights, indices);
#endif
  router_topk(softmax_lastdim(logits), k, weights, indices);
}

Tensor moe_experts_from_logits(const Tensor& x, const Tensor& logits, int64_t k, const Tensor& gate_up,
                               const Tensor& down) {
  const char* op = "moe_experts_from_logits";
  check_moe_experts_operands(op, x, gate_up, down);
  check_float(op, "logits", logits);
  check_rank(op, "logits", logits, 2, "[T, E]");
  G4_CHECK(logits.size(0) == x.size(0) && logits.size(1) == gate_up.size(0), op, ": logits ", logits.describe(),
           " must be [T, E] for x ", x.describe(), " and gate_up ", gate_up.describe());
  G4_CHECK(k >= 1 && k <= logits.size(1), op, ": k = ", k, " must be in [1, ", logits.size(1), "] for logits ",
           logits.describe());
#ifdef G4_WITH_CUDA
  if (on_gpu(x) && on_gpu(logits) && logits.dtype() != DType::F64)
    return cuda::moe_experts_from_logits(x, logits, k, gate_up, down);
#endif
  Tensor weights, indices;
  softmax_topk(logits, k, weights, indices);
  return moe_experts(x, weights, indices, gate_up, down);
}

Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b) {
  check_same_shape("gelu_tanh_mul", "a", a, "b", b);
#ifdef G4_WITH_CUDA
  if (on_gpu(a) && (a.dtype() == DType::BF16 || a.dtype() == DType::F32)) return cuda::gelu_tanh_mul(a, b);
#endif
  return mul(gelu_tanh(a), b);
}

Tensor gelu_tanh_mul_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_float("gelu_tanh_mul_linear", "x", x);
  check_same_dtype("gelu_tanh_mul_linear", "x", x, "w", w);
  check_same_dtype("gelu_tanh_mul_linear", "x", x, "b", b);
  G4_CHECK(x.dim() >= 1 && w.dim() == 2 && w.size(1) == x.size(-1), "gelu_tanh_mul_linear: weight ", w.describe(),
           " must be [N, K] for x ", x.describe());
  Shape shape = x.shape();
  shape.back() = w.size(0);
  G4_CHECK(b.shape() == shape, "gelu_tanh_mul_linear: b ", b.describe(), " must have the product's shape ",
           shape_str(shape));
#ifdef G4_WITH_CUDA
  const int64_t rows = leading_rows(x), n = w.size(0), k = x.size(-1);
  if (on_gpu(x) && x.dtype() == DType::BF16 && cuda::gemv_preferred(rows, n, k) &&
      cuda::gemv_fits(rows, k, x.raw(), k, w.raw(), k, DType::BF16, DType::BF16)) {
    Tensor y = Tensor::empty(shape, DType::BF16, Device::CUDA);
    cuda::gemv_gelu_mul(rows, n, k, x.raw(), k, w.raw(), k, b.raw(), y.raw(), n);
    return y;
  }
#endif
  return gelu_tanh_mul(linear(x, w), b);
}

std::vector<Tensor> linear_many(const Tensor& x, const std::vector<Tensor>& weights) {
  check_float("linear_many", "x", x);
  G4_CHECK(x.dim() >= 1, "linear_many: x must be [..., K], got ", x.describe());
  for (const Tensor& w : weights) {
    check_same_dtype("linear_many", "x", x, "w", w);
    G4_CHECK(w.dim() == 2 && w.size(1) == x.size(-1), "linear_many: weight ", w.describe(), " must be [N, K] for x ",
             x.describe());
  }
  std::vector<Tensor> out;
#ifdef G4_WITH_CUDA
  const int64_t rows = leading_rows(x), k = x.size(-1);
  bool one_launch = on_gpu(x) && x.dtype() == DType::BF16 && !weights.empty() && weights.size() <= 3;
  for (const Tensor& w : weights)
    one_launch = one_launch && cuda::gemv_preferred(rows, w.size(0), k) &&
                 cuda::gemv_fits(rows, k, x.raw(), k, w.raw(), k, DType::BF16, DType::BF16);
  if (one_launch) {
    std::vector<cuda::GemvProduct> products;
    for (const Tensor& w : weights) {
      Shape shape = x.shape();
      shape.back() = w.size(0);
      out.push_back(Tensor::empty(shape, DType::BF16, Device::CUDA));
      products.push_back({w.raw(), w.size(0), k, out.back().raw(), w.size(0)});
    }
    cuda::gemv_many(rows, k, x.raw(), k, products);
    return out;
  }
#endif
  for (const Tensor& w : weights) out.push_back(linear(x, w));
  return out;
}

}  // namespace g4::ops

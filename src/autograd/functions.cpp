#include "autograd/functions.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace g4::ag {

namespace {
// Output Var that records when any input requires a gradient.
Var result(Tensor value, bool recording) { return Var(std::move(value), recording); }
}  // namespace

Var add(const Var& a, const Var& b) {
  const bool rec = should_record({&a, &b});
  Var out = result(ops::add(a.value(), b.value()), rec);
  if (rec) {
    auto ai = a.impl(), bi = b.impl(), oi = out.impl();
    record({oi}, [ai, bi, oi] {
      accumulate_grad(ai, oi->grad);
      accumulate_grad(bi, oi->grad);
    });
  }
  return out;
}

Var mul(const Var& a, const Var& b) {
  const bool rec = should_record({&a, &b});
  Var out = result(ops::mul(a.value(), b.value()), rec);
  if (rec) {
    auto ai = a.impl(), bi = b.impl(), oi = out.impl();
    record({oi}, [ai, bi, oi] {
      if (ai->requires_grad) accumulate_grad(ai, ops::mul(oi->grad, bi->value));
      if (bi->requires_grad) accumulate_grad(bi, ops::mul(oi->grad, ai->value));
    });
  }
  return out;
}

Var scale(const Var& a, double s) {
  const bool rec = should_record({&a});
  Var out = result(ops::scale(a.value(), s), rec);
  if (rec) {
    auto ai = a.impl(), oi = out.impl();
    record({oi}, [ai, oi, s] { accumulate_grad(ai, ops::scale(oi->grad, s)); });
  }
  return out;
}

Var reshape(const Var& x, const Shape& shape) {
  const bool rec = should_record({&x});
  Var out = result(x.value().reshape(shape), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi] { accumulate_grad(xi, oi->grad.reshape(xi->value.shape())); });
  }
  return out;
}

Var narrow(const Var& x, int64_t dim, int64_t start, int64_t len) {
  const bool rec = should_record({&x});
  Var out = result(ops::narrow(x.value(), dim, start, len), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi, dim, start] {
      accumulate_grad(xi, ops::narrow_backward(oi->grad, xi->value.shape(), dim, start));
    });
  }
  return out;
}

Var concat(const std::vector<Var>& xs, int64_t dim) {
  std::vector<Tensor> values;
  bool rec = false;
  for (const Var& x : xs) {
    values.push_back(x.value());
    rec = rec || should_record({&x});
  }
  Var out = result(ops::concat(values, dim), rec);
  if (rec) {
    std::vector<std::shared_ptr<VarImpl>> ins;
    for (const Var& x : xs) ins.push_back(x.impl());
    auto oi = out.impl();
    record({oi}, [ins, oi, dim] {
      int64_t start = 0;
      for (const auto& xi : ins) {
        const int64_t len = xi->value.size(dim);
        if (xi->requires_grad) accumulate_grad(xi, ops::narrow(oi->grad, dim, start, len));
        start += len;
      }
    });
  }
  return out;
}

namespace {

// True when w keeps an f32 gradient for a lower-precision value (a bf16 model's weights): its
// weight-gradient GEMMs then write or add into that f32 gradient directly, with no product in the
// value's dtype and no conversion pass.
bool gemm_into_fp32_grad(const VarImpl& w) { return w.requires_grad && w.fp32_grad && w.value.dtype() != DType::F32; }

// w's f32 gradient as a GEMM output, and the beta to use: 0 writes a new gradient, 1 adds to the
// one already there.
Tensor& fp32_grad_target(const std::shared_ptr<VarImpl>& w, double& beta) {
  beta = w->grad.defined() ? 1.0 : 0.0;
  if (!w->grad.defined()) {
    w->grad = Tensor::empty(w->value.shape(), DType::F32, w->value.device());
    w->grad_owned = true;
  }
  return owned_grad(w);
}

}  // namespace

Var linear(const Var& x, const Var& w) {
  const bool rec = should_record({&x, &w});
  Var out = result(ops::linear(x.value(), w.value()), rec);
  if (rec) {
    auto xi = x.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi] {
      if (xi->requires_grad) accumulate_grad(xi, ops::linear_backward_input(oi->grad, wi->value));
      if (gemm_into_fp32_grad(*wi)) {
        // dW [out, in] = dyᵀ · x over all leading rows.
        const auto rows = [](const Tensor& t) { return t.reshape({outer_size(t.shape(), t.dim() - 1), t.size(-1)}); };
        double beta = 0;
        Tensor& g = fp32_grad_target(wi, beta);
        ops::matmul_acc(rows(oi->grad), rows(xi->value), true, false, g, 1.0, beta);
      } else if (wi->requires_grad) {
        accumulate_grad(wi, ops::linear_backward_weight(oi->grad, xi->value));
      }
    });
  }
  return out;
}

Var matmul(const Var& x, const Var& w) {
  const bool rec = should_record({&x, &w});
  Var out = result(ops::matmul(x.value(), w.value()), rec);
  if (rec) {
    auto xi = x.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi] {
      if (xi->requires_grad) accumulate_grad(xi, ops::matmul(oi->grad, wi->value, false, true));  // dy · wᵀ
      if (!wi->requires_grad) return;
      // dW [K, N] = xᵀ · dy over all leading rows.
      const auto rows = [](const Tensor& t) { return t.reshape({outer_size(t.shape(), t.dim() - 1), t.size(-1)}); };
      if (gemm_into_fp32_grad(*wi)) {
        double beta = 0;
        Tensor& g = fp32_grad_target(wi, beta);
        ops::matmul_acc(rows(xi->value), rows(oi->grad), true, false, g, 1.0, beta);
      } else {
        accumulate_grad(wi, ops::matmul(rows(xi->value), rows(oi->grad), true, false));
      }
    });
  }
  return out;
}

Var rmsnorm(const Var& x, const Var& w, double eps) {
  const bool rec = should_record({&x, w.defined() ? &w : nullptr});
  const Tensor wv = w.defined() ? w.value() : Tensor();
  Var out = result(ops::rmsnorm(x.value(), wv, eps), rec);
  if (rec) {
    auto xi = x.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi, eps] {
      Tensor dx, dw;
      ops::rmsnorm_backward(oi->grad, xi->value, wi ? wi->value : Tensor(), eps, dx, dw);
      accumulate_grad(xi, dx);
      if (wi) accumulate_grad(wi, dw);
    });
  }
  return out;
}

Var rope(const Var& x, const Tensor& positions, const Tensor& inv_freq) {
  const bool rec = should_record({&x});
  Var out = result(ops::rope(x.value(), positions, inv_freq), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi, positions, inv_freq] {
      accumulate_grad(xi, ops::rope_backward(oi->grad, positions, inv_freq));
    });
  }
  return out;
}

Var attention(const Var& q, const Var& k, const Var& v, const ops::AttentionMask& mask, double scale) {
  const bool rec = should_record({&q, &k, &v});
  Tensor lse;
  Var out = result(ops::attention(q.value(), k.value(), v.value(), mask, scale, rec ? &lse : nullptr), rec);
  if (rec) {
    auto qi = q.impl(), ki = k.impl(), vi = v.impl(), oi = out.impl();
    const Tensor out_value = out.value();
    record({oi}, [qi, ki, vi, oi, out_value, lse, mask, scale] {
      Tensor dq, dk, dv;
      ops::attention_backward(oi->grad, qi->value, ki->value, vi->value, out_value, lse, mask, scale, dq, dk, dv);
      accumulate_grad(qi, dq);
      accumulate_grad(ki, dk);
      accumulate_grad(vi, dv);
    });
  }
  return out;
}

Var embedding(const Var& weight, const Tensor& ids, int64_t padding_idx) {
  const bool rec = should_record({&weight});
  Var out = result(ops::embedding(weight.value(), ids), rec);
  if (rec) {
    auto wi = weight.impl(), oi = out.impl();
    record({oi}, [wi, oi, ids, padding_idx] {
      // A tied embedding already holds the LM head's [V, D] gradient: add into it rather than
      // allocating a second [V, D] buffer (on the GPU, where it is f32, that is 3 GB at Gemma 4's size).
      Tensor& g = wi->grad;
      const DType want = wi->fp32_grad ? DType::F32 : wi->value.dtype();
      // (The GPU adds into f32 only: a bf16 activation table's second use takes the path below.)
      if (g.defined() && g.dtype() == want && g.device() == oi->grad.device() &&
          (want == DType::F32 || g.device() == Device::CPU)) {
        ops::embedding_backward_accumulate(owned_grad(wi), oi->grad, ids, padding_idx);
        return;
      }
      // The GPU kernel sums rows in f32; a table that is an activation (a slice of a parameter, a
      // tower's rows) takes its gradient in its own dtype, as the ops upstream of it expect.
      Tensor dw = ops::embedding_backward(oi->grad, ids, wi->value.size(0), padding_idx);
      if (!wi->fp32_grad && dw.dtype() != wi->value.dtype()) dw = dw.to(wi->value.dtype());
      accumulate_grad(wi, dw);
    });
  }
  return out;
}

Var gelu_tanh(const Var& x) {
  const bool rec = should_record({&x});
  Var out = result(ops::gelu_tanh(x.value()), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi] { accumulate_grad(xi, ops::gelu_tanh_backward(oi->grad, xi->value)); });
  }
  return out;
}

Var gelu_gate(const Var& g, const Var& u) {
  const bool rec = should_record({&g, &u});
  Var out = result(ops::gelu_gate(g.value(), u.value()), rec);
  if (rec) {
    auto gi = g.impl(), ui = u.impl(), oi = out.impl();
    record({oi}, [gi, ui, oi] {
      Tensor dg, du;
      ops::gelu_gate_backward(oi->grad, gi->value, ui->value, dg, du);
      accumulate_grad(gi, dg);
      accumulate_grad(ui, du);
    });
  }
  return out;
}

Var gelu_gate_fused(const Var& gu) {
  const bool rec = should_record({&gu});
  Var out = result(ops::gelu_gate_fused(gu.value()), rec);
  if (rec) {
    auto gi = gu.impl(), oi = out.impl();
    record({oi}, [gi, oi] { accumulate_grad(gi, ops::gelu_gate_fused_backward(oi->grad, gi->value)); });
  }
  return out;
}

Var softcap(const Var& x, double cap) {
  const bool rec = should_record({&x});
  Var out = result(ops::softcap(x.value(), cap), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    const Tensor y = out.value();
    record({oi}, [xi, oi, y, cap] { accumulate_grad(xi, ops::softcap_backward(oi->grad, y, cap)); });
  }
  return out;
}

namespace {
// A pointwise op whose gradient is a function of (dy, x).
template <class Backward>
Var pointwise_of_input(const Var& x, Tensor y, Backward backward) {
  const bool rec = should_record({&x});
  Var out = result(std::move(y), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi, backward] { accumulate_grad(xi, backward(oi->grad, xi->value)); });
  }
  return out;
}
}  // namespace

Var activation(const Var& x, ops::Activation act) {
  return pointwise_of_input(x, ops::activation(x.value(), act),
                            [act](const Tensor& dy, const Tensor& xv) { return ops::activation_backward(dy, xv, act); });
}

Var clamp(const Var& x, double lo, double hi) {
  return pointwise_of_input(x, ops::clamp(x.value(), lo, hi),
                            [lo, hi](const Tensor& dy, const Tensor& xv) { return ops::clamp_backward(dy, xv, lo, hi); });
}

Var mul_rowvec(const Var& x, const Var& v) {
  const bool rec = should_record({&x, &v});
  Var out = result(ops::mul_rowvec(x.value(), v.value()), rec);
  if (!rec) return out;
  auto xi = x.impl(), vi = v.impl(), oi = out.impl();
  record({oi}, [xi, vi, oi] {
    const Tensor& dy = oi->grad;
    if (xi->requires_grad) accumulate_grad(xi, ops::mul_rowvec(dy, vi->value));
    if (vi->requires_grad) accumulate_grad(vi, ops::sum_rows(ops::mul(dy, xi->value)));  // dv = Σ_rows dy ∘ x
  });
  return out;
}

Var softmax_lastdim(const Var& x) {
  const bool rec = should_record({&x});
  Var out = result(ops::softmax_lastdim(x.value()), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    const Tensor y = out.value();
    record({oi}, [xi, oi, y] { accumulate_grad(xi, ops::softmax_lastdim_backward(oi->grad, y)); });
  }
  return out;
}

Var sum_all(const Var& x) {
  const bool rec = should_record({&x});
  Var out = result(ops::sum_all(x.value()), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    record({oi}, [xi, oi] { accumulate_grad(xi, Tensor::full(xi->value.shape(), oi->grad.item(), xi->value.dtype(), xi->value.device())); });
  }
  return out;
}

Var cross_entropy_mean(const Var& logits, const Tensor& targets, int64_t ignore_index) {
  const bool rec = should_record({&logits});
  const Tensor flat = logits.value().reshape({-1, logits.value().size(-1)});
  const Tensor tflat = targets.reshape({-1});
  const ops::CrossEntropyResult r = ops::cross_entropy(flat, tflat, ignore_index);
  const double mean = r.count > 0 ? r.loss_sum / static_cast<double>(r.count) : 0.0;
  // On the GPU the sum came back to the host (a synchronisation); the fused
  // linear_cross_entropy below avoids it.
  Var out = result(Tensor::scalar(mean, logits.value().dtype(), logits.value().device()), rec);
  if (rec) {
    auto li = logits.impl(), oi = out.impl();
    const int64_t count = r.count;
    record({oi}, [li, oi, tflat, ignore_index, count] {
      // No counted token: the loss is the constant 0. Its gradient is zero rather than absent, so
      // the backward of everything before it still runs (a data-parallel rank with no labels
      // must still take part in its peers' exchanges).
      if (count == 0) {
        accumulate_grad(li, Tensor::zeros(li->value.shape(), li->value.dtype(), li->value.device()));
        return;
      }
      const double g = oi->grad.item() / static_cast<double>(count);
      const Tensor lflat = li->value.reshape({-1, li->value.size(-1)});
      Tensor d = ops::cross_entropy_backward(lflat, tflat, g, ignore_index);
      accumulate_grad(li, d.reshape(li->value.shape()));
    });
  }
  return out;
}

namespace {
// The fused LM head's operands: hidden states as [N, H] rows, their targets as [N] on the
// hidden states' device, and the rows per chunk.
struct HeadRows {
  Tensor x2, t1;
  int64_t n = 0, chunk_rows = 0;
};

HeadRows head_rows(const char* op, const Tensor& xv, const Tensor& wv, const Tensor& targets, int64_t chunk_rows) {
  const int64_t H = xv.size(-1), V = wv.size(0);
  G4_CHECK(wv.dim() == 2 && wv.size(1) == H, op, ": weight ", wv.describe(), " for hidden states ", xv.describe());
  HeadRows r;
  r.x2 = xv.reshape({-1, H});
  r.n = r.x2.size(0);
  G4_CHECK(targets.numel() == r.n, op, ": ", targets.describe(), " targets for ", r.n, " rows");
  r.t1 = targets.reshape({-1});
  if (r.t1.device() != xv.device()) r.t1 = r.t1.to(xv.device());  // uploaded once, not per chunk
  // About 2 GiB of bf16 logits per chunk (4096 rows of a 262 144-token vocabulary). Each chunk's
  // weight-gradient GEMM reads and writes the whole f32 [V, H] gradient, so small chunks turn it
  // memory-bound (512-row chunks ran the 26B-A4B LM head's dW at a third of the GEMM rate).
  r.chunk_rows = chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, (int64_t{1} << 30) / std::max<int64_t>(V, 1));
  return r;
}
}  // namespace

Var linear_cross_entropy(const Var& x, const Var& w, const Tensor& targets, int64_t count, double softcap,
                         int64_t chunk_rows, int64_t ignore_index) {
  const Tensor& xv = x.value();
  const Tensor& wv = w.value();
  const HeadRows hr = head_rows("linear_cross_entropy", xv, wv, targets, chunk_rows);
  const Tensor &x2 = hr.x2, &t1 = hr.t1;
  const int64_t N = hr.n;
  chunk_rows = hr.chunk_rows;
  const bool rec = should_record({&x, &w});
  const DType acc = xv.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const Device dev = xv.device();
  Tensor loss_sum = Tensor::zeros({}, acc, dev);
  Tensor dx = rec && x.requires_grad() ? Tensor::empty(x2.shape(), xv.dtype(), dev) : Tensor();
  // Written by the first chunk's GEMM (beta 0), accumulated by the others.
  Tensor dw = rec && w.requires_grad() ? Tensor::empty(wv.shape(), acc, dev) : Tensor();
  // d(mean)/d(row loss) for counted rows; the kernels zero it for ignored ones.
  const double inv_count = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
  // Made once (on the GPU a host fill and an upload) and sliced for each chunk.
  const Tensor grad_rows = rec && count > 0 ? Tensor::full({std::min(chunk_rows, N)}, inv_count, acc, dev) : Tensor();
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, N - r0);
    const Tensor xc = x2.slice0(r0, n), tc = t1.slice0(r0, n);
    const Tensor logits = ops::matmul(xc, wv, false, true);  // [n, V]
    const ops::CrossEntropyRows ce = ops::cross_entropy_rows(logits, tc, softcap, ignore_index);
    ops::add_(loss_sum, ops::sum_all(ce.loss));
    if (!rec || count == 0) continue;
    // The gradient overwrites the chunk's logits in place: one [n, V] buffer per chunk.
    const Tensor dlogits =
        ops::cross_entropy_rows_backward(logits, tc, ce.lse, softcap, grad_rows.slice0(0, n), ignore_index, logits);
    if (dx.defined()) dx.slice0(r0, n).copy_from(ops::matmul(dlogits, wv));
    if (dw.defined()) ops::matmul_acc(dlogits, xc, true, false, dw, 1.0, r0 == 0 ? 0.0 : 1.0);
  }
  if (dw.defined() && (N == 0 || count == 0)) dw.fill(0.0);  // no chunk wrote it
  Var out = result(ops::scale(loss_sum, inv_count), rec);
  if (rec) {
    auto xi = x.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi, dx, dw, count]() mutable {
      if (count == 0) {  // the constant 0: zero gradients, so the backward of what precedes still runs
        if (xi->requires_grad) accumulate_grad(xi, Tensor::zeros(xi->value.shape(), xi->value.dtype(), xi->value.device()));
        return;
      }
      const double g = oi->grad.item();
      if (g != 1.0 && dx.defined()) ops::scale_(dx, g);
      if (dx.defined()) accumulate_grad(xi, dx.reshape(xi->value.shape()));
      if (dw.defined()) {
        // dw is this node's own buffer (f32, or f64 for f64 models): handed over without a copy, or
        // added to a gradient already there (gradient accumulation) with g folded into that one pass.
        const bool keep = dw.dtype() == wi->value.dtype() || (wi->fp32_grad && dw.dtype() == DType::F32);
        if (keep && wi->grad.defined()) {
          ops::add_(owned_grad(wi), dw, g);
        } else {
          if (g != 1.0) ops::scale_(dw, g);
          accumulate_grad(wi, keep ? dw : dw.to(wi->value.dtype()), keep);
        }
      }
    });
  }
  return out;
}

Var linear_token_logprobs(const Var& x, const Var& w, const Tensor& targets, double softcap, double temperature,
                          int64_t chunk_rows, int64_t ignore_index) {
  const char* op = "linear_token_logprobs";
  const Tensor& xv = x.value();
  const HeadRows hr = head_rows(op, xv, w.value(), targets, chunk_rows);
  G4_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
           temperature);
  const bool rec = should_record({&x, &w});
  const DType acc = xv.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const Device dev = xv.device();
  Tensor loss = Tensor::empty({hr.n}, acc, dev);
  // The backward's softmax needs each row's log-sum-exp: [N] floats kept instead of [N, V] logits.
  Tensor lse = rec ? Tensor::empty({hr.n}, acc, dev) : Tensor();
  for (int64_t r0 = 0; r0 < hr.n; r0 += hr.chunk_rows) {
    const int64_t n = std::min(hr.chunk_rows, hr.n - r0);
    const Tensor logits = ops::matmul(hr.x2.slice0(r0, n), w.value(), false, true);  // [n, V]
    const ops::CrossEntropyRows ce =
        ops::cross_entropy_rows(logits, hr.t1.slice0(r0, n), softcap, ignore_index, temperature);
    loss.slice0(r0, n).copy_from(ce.loss);
    if (rec) lse.slice0(r0, n).copy_from(ce.lse);
  }
  Var out = result(ops::scale(loss, -1.0).reshape(targets.shape()), rec);
  if (rec) {
    auto xi = x.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi, hr, lse, softcap, temperature, ignore_index, acc] {
      const Tensor& wv = wi->value;
      const Tensor grad_rows = ops::scale(oi->grad.reshape({-1}), -1.0);  // d log p = -d loss
      Tensor dx = xi->requires_grad ? Tensor::empty(hr.x2.shape(), hr.x2.dtype(), hr.x2.device()) : Tensor();
      // dw accumulates over chunks in f32 (f64 for f64 models), straight into the weight's gradient
      // where that one has the accumulation dtype, else into a new buffer handed over at the end.
      Tensor dw;
      double beta = 0;
      bool hand_over = false;
      if (gemm_into_fp32_grad(*wi)) {
        dw = fp32_grad_target(wi, beta);
      } else if (wi->requires_grad && wi->grad.defined() && wi->grad.dtype() == acc) {
        dw = owned_grad(wi);
        beta = 1;
      } else if (wi->requires_grad) {
        dw = Tensor::empty(wv.shape(), acc, wv.device());
        hand_over = true;
      }
      for (int64_t r0 = 0; r0 < hr.n; r0 += hr.chunk_rows) {
        const int64_t n = std::min(hr.chunk_rows, hr.n - r0);
        const Tensor xc = hr.x2.slice0(r0, n);
        const Tensor logits = ops::matmul(xc, wv, false, true);  // recomputed: the forward kept none
        // In place: one [n, V] buffer per chunk, as in the forward.
        const Tensor dlogits = ops::cross_entropy_rows_backward(logits, hr.t1.slice0(r0, n), lse.slice0(r0, n), softcap,
                                                                grad_rows.slice0(r0, n), ignore_index, logits,
                                                                temperature);
        if (dx.defined()) dx.slice0(r0, n).copy_from(ops::matmul(dlogits, wv));
        if (dw.defined()) ops::matmul_acc(dlogits, xc, true, false, dw, 1.0, r0 == 0 ? beta : 1.0);
      }
      if (dw.defined() && hr.n == 0 && beta == 0) dw.fill(0.0);  // no chunk wrote it
      if (dx.defined()) accumulate_grad(xi, dx.reshape(xi->value.shape()), /*exclusive=*/true);
      if (hand_over) accumulate_grad(wi, dw.dtype() == wv.dtype() ? dw : dw.to(wv.dtype()), /*exclusive=*/true);
    });
  }
  return out;
}

Var router_topk(const Var& probs, int64_t k, Tensor& indices) {
  const bool rec = should_record({&probs});
  Tensor weights;
  ops::router_topk(probs.value(), k, weights, indices);
  Var out = result(weights, rec);
  if (rec) {
    auto pi = probs.impl(), oi = out.impl();
    const Tensor idx = indices;
    record({oi}, [pi, oi, idx] { accumulate_grad(pi, ops::router_topk_backward(oi->grad, pi->value, idx)); });
  }
  return out;
}

Var moe_permute(const Var& x, const ops::MoePlan& plan) {
  const bool rec = should_record({&x});
  Var out = result(ops::moe_permute(x.value(), plan), rec);
  if (rec) {
    auto xi = x.impl(), oi = out.impl();
    auto p = std::make_shared<ops::MoePlan>(plan);
    record({oi}, [xi, oi, p] { accumulate_grad(xi, ops::moe_permute_backward(oi->grad, *p)); });
  }
  return out;
}

Var grouped_matmul(const Var& xs, const Var& w, const std::vector<int64_t>& offsets, const Tensor& device_offsets) {
  const bool rec = should_record({&xs, &w});
  Var out = result(ops::grouped_matmul(xs.value(), w.value(), offsets, device_offsets), rec);
  if (rec) {
    auto xi = xs.impl(), wi = w.impl(), oi = out.impl();
    record({oi}, [xi, wi, oi, offsets, device_offsets] {
      Tensor dxs, dw;
      double beta = 0;
      const bool into_grad = gemm_into_fp32_grad(*wi);
      if (into_grad) dw = fp32_grad_target(wi, beta);  // shares the gradient's storage
      ops::grouped_matmul_backward(oi->grad, xi->value, wi->value, offsets, dxs, dw, device_offsets, beta);
      accumulate_grad(xi, dxs);
      if (!into_grad) accumulate_grad(wi, dw);
    });
  }
  return out;
}

Var moe_unpermute(const Var& ys, const Var& weights, const ops::MoePlan& plan) {
  const bool rec = should_record({&ys, &weights});
  Var out = result(ops::moe_unpermute(ys.value(), weights.value(), plan), rec);
  if (rec) {
    auto yi = ys.impl(), wi = weights.impl(), oi = out.impl();
    auto p = std::make_shared<ops::MoePlan>(plan);
    record({oi}, [yi, wi, oi, p] {
      Tensor dys, dweights;
      ops::moe_unpermute_backward(oi->grad, yi->value, wi->value, *p, dys, dweights);
      accumulate_grad(yi, dys);
      accumulate_grad(wi, dweights);
    });
  }
  return out;
}

}  // namespace g4::ag

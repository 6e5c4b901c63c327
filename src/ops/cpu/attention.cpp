// Attention on the CPU: one pass per (batch, head, query) row. The mask is a predicate evaluated
// per (query, key) pair, so memory stays O(Sk) per thread whatever the sequence length; scores,
// softmax and the output accumulate in the input precision (fp32 for fp32, as the header says).
#include "ops/attention.h"

#include <cmath>
#include <cstdlib>

#include "ops/cpu/common.h"
#include "ops/device_dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/attention.h"
#endif

namespace g4::ops {

namespace {

struct Dims {
  int64_t batch, sq, sk, heads, kv_heads, d, dv;
  int64_t group() const { return heads / kv_heads; }  // query heads per kv head
};

Dims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  cpu::check_rank(op, "q", q, 4, "[B, Sq, nH, d]");
  cpu::check_rank(op, "k", k, 4, "[B, Sk, nKV, d]");
  cpu::check_rank(op, "v", v, 4, "[B, Sk, nKV, dv]");
  cpu::check_same_dtype(op, "q", q, "k", k);
  cpu::check_same_dtype(op, "q", q, "v", v);
  const Dims dm{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  G4_CHECK(k.size(0) == dm.batch && k.size(3) == dm.d, op, ": k ", k.describe(), " does not match q ", q.describe(),
           " (batch and head dim must agree)");
  G4_CHECK(v.size(0) == dm.batch && v.size(1) == dm.sk && v.size(2) == dm.kv_heads, op, ": v ", v.describe(),
           " does not match k ", k.describe(), " (batch, keys and kv heads must agree)");
  G4_CHECK(dm.kv_heads > 0 && dm.heads % dm.kv_heads == 0, op, ": query heads of q ", q.describe(),
           " are not a multiple of the kv heads of k ", k.describe());
  return dm;
}

// The mask description with its optional tensors read once into flat arrays.
struct MaskRule {
  bool causal;
  int64_t window, q_start, k_start, sq, sk;
  std::vector<int64_t> key_valid, q_doc, k_doc;  // empty when not given

  bool allowed(int64_t b, int64_t i, int64_t j) const {
    const int64_t qp = q_start + i, kp = k_start + j;
    if (causal) {
      if (kp > qp || (window > 0 && qp - kp >= window)) return false;
    } else if (window > 0 && std::llabs(qp - kp) >= window) {
      return false;
    }
    if (!key_valid.empty() && key_valid[b * sk + j] == 0) return false;
    if (!q_doc.empty() && q_doc[b * sq + i] != k_doc[b * sk + j]) return false;
    return true;
  }
};

std::vector<int64_t> read_mask_tensor(const char* op, const char* name, const Tensor& t, const Shape& want) {
  G4_CHECK(t.shape() == want, op, ": mask.", name, " ", t.describe(), " must be ", shape_str(want));
  G4_CHECK(!is_floating(t.dtype()), op, ": mask.", name, " must be an integer or bool tensor, got ", t.describe());
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = element_as_int(t, i);
  return out;
}

MaskRule make_rule(const char* op, const AttentionMask& m, const Dims& dm) {
  G4_CHECK(m.window >= 0, op, ": mask.window must be >= 0, got ", m.window);
  MaskRule r{m.causal, m.window, m.q_start, m.k_start, dm.sq, dm.sk, {}, {}, {}};
  if (m.key_valid.defined()) r.key_valid = read_mask_tensor(op, "key_valid", m.key_valid, {dm.batch, dm.sk});
  G4_CHECK(m.q_doc.defined() == m.k_doc.defined(), op, ": mask.q_doc and mask.k_doc must be given together (q_doc ",
           m.q_doc.describe(), ", k_doc ", m.k_doc.describe(), ")");
  if (m.q_doc.defined()) {
    r.q_doc = read_mask_tensor(op, "q_doc", m.q_doc, {dm.batch, dm.sq});
    r.k_doc = read_mask_tensor(op, "k_doc", m.k_doc, {dm.batch, dm.sk});
  }
  return r;
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

// Row pointers into the [B, S, heads, dim] layouts.
template <class T>
struct Layout {
  T* base;
  int64_t seq, heads, dim;
  T* row(int64_t b, int64_t s, int64_t h) const { return base + ((b * seq + s) * heads + h) * dim; }
};

template <class T>
void forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const MaskRule& rule, const Dims& dm,
                  T scale, Tensor& out, Tensor& lse) {
  const Layout<const T> Q{q.data<T>(), dm.sq, dm.heads, dm.d}, K{k.data<T>(), dm.sk, dm.kv_heads, dm.d},
      V{v.data<T>(), dm.sk, dm.kv_heads, dm.dv};
  const Layout<T> O{out.data<T>(), dm.sq, dm.heads, dm.dv};
  T* L = lse.data<T>();

#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(dm.sk));  // this thread's score row
#pragma omp for collapse(2)
    for (int64_t b = 0; b < dm.batch; ++b) {
      for (int64_t h = 0; h < dm.heads; ++h) {
        const int64_t kvh = h / dm.group();
        for (int64_t i = 0; i < dm.sq; ++i) {
          const T* qi = Q.row(b, i, h);
          T* oi = O.row(b, i, h);
          T mx = -INFINITY;
          for (int64_t j = 0; j < dm.sk; ++j) {
            p[j] = rule.allowed(b, i, j) ? dot(qi, K.row(b, j, kvh), dm.d) * scale : T(-INFINITY);
            mx = std::max(mx, p[j]);
          }
          for (int64_t c = 0; c < dm.dv; ++c) oi[c] = 0;
          T& lse_i = L[(b * dm.heads + h) * dm.sq + i];
          if (mx == T(-INFINITY)) {  // no visible key: output 0, lse -inf
            lse_i = -INFINITY;
            continue;
          }
          T sum = 0;
          for (int64_t j = 0; j < dm.sk; ++j) {
            p[j] = std::exp(p[j] - mx);  // masked keys: exp(-inf) = 0
            sum += p[j];
          }
          for (int64_t j = 0; j < dm.sk; ++j) {
            if (p[j] == T(0)) continue;
            const T pj = p[j] / sum;
            const T* vj = V.row(b, j, kvh);
            for (int64_t c = 0; c < dm.dv; ++c) oi[c] += pj * vj[c];
          }
          lse_i = mx + std::log(sum);
        }
      }
    }
  }
}

// With P = exp(S - lse) recomputed from the saved lse and D_i = <dout_i, out_i>:
//   dS = P ∘ (dout·Vᵀ - D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Pᵀ·dout.
// Threads own a (batch, kv head) pair, so the dK/dV rows that its query heads add into are
// written by one thread only.
template <class T>
void backward_impl(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse, const MaskRule& rule, const Dims& dm, T scale, Tensor& dq, Tensor& dk,
                   Tensor& dv) {
  const Layout<const T> Q{q.data<T>(), dm.sq, dm.heads, dm.d}, K{k.data<T>(), dm.sk, dm.kv_heads, dm.d},
      V{v.data<T>(), dm.sk, dm.kv_heads, dm.dv}, O{out.data<T>(), dm.sq, dm.heads, dm.dv},
      dO{dout.data<T>(), dm.sq, dm.heads, dm.dv};
  const Layout<T> dQ{dq.data<T>(), dm.sq, dm.heads, dm.d}, dK{dk.data<T>(), dm.sk, dm.kv_heads, dm.d},
      dV{dv.data<T>(), dm.sk, dm.kv_heads, dm.dv};
  const T* L = lse.data<T>();

#pragma omp parallel for collapse(2)
  for (int64_t b = 0; b < dm.batch; ++b) {
    for (int64_t kvh = 0; kvh < dm.kv_heads; ++kvh) {
      for (int64_t h = kvh * dm.group(); h < (kvh + 1) * dm.group(); ++h) {
        for (int64_t i = 0; i < dm.sq; ++i) {
          const T lse_i = L[(b * dm.heads + h) * dm.sq + i];
          if (lse_i == T(-INFINITY)) continue;  // fully masked row: no gradient anywhere
          const T* qi = Q.row(b, i, h);
          const T* doi = dO.row(b, i, h);
          T* dqi = dQ.row(b, i, h);
          const T d_i = dot(doi, O.row(b, i, h), dm.dv);
          for (int64_t j = 0; j < dm.sk; ++j) {
            if (!rule.allowed(b, i, j)) continue;
            const T* kj = K.row(b, j, kvh);
            const T pij = std::exp(dot(qi, kj, dm.d) * scale - lse_i);
            const T dsij = pij * (dot(doi, V.row(b, j, kvh), dm.dv) - d_i);
            T* dkj = dK.row(b, j, kvh);
            T* dvj = dV.row(b, j, kvh);
            for (int64_t c = 0; c < dm.d; ++c) {
              dqi[c] += scale * dsij * kj[c];
              dkj[c] += scale * dsij * qi[c];
            }
            for (int64_t c = 0; c < dm.dv; ++c) dvj[c] += pij * doi[c];
          }
        }
      }
    }
  }
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse) {
  G4_FORWARD_TO_CUDA(q, attention(q, k, v, mask, scale, lse));
  const Dims dm = check_qkv("attention", q, k, v);
  const MaskRule rule = make_rule("attention", mask, dm);
  return cpu::dispatch_float("attention", q, [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({dm.batch, dm.sq, dm.heads, dm.dv}, q.dtype());
    Tensor l = Tensor::empty({dm.batch, dm.heads, dm.sq}, q.dtype());
    forward_impl<T>(q, k, v, rule, dm, static_cast<T>(scale), out, l);
    if (lse != nullptr) *lse = l;
    return out;
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  G4_FORWARD_TO_CUDA(q, attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv));
  const char* op = "attention_backward";
  const Dims dm = check_qkv(op, q, k, v);
  const MaskRule rule = make_rule(op, mask, dm);
  const Shape out_shape{dm.batch, dm.sq, dm.heads, dm.dv}, lse_shape{dm.batch, dm.heads, dm.sq};
  cpu::check_same_dtype(op, "q", q, "out", out);
  cpu::check_same_shape(op, "dout", dout, "out", out);
  G4_CHECK(out.shape() == out_shape, op, ": out ", out.describe(), " must be ", shape_str(out_shape), " for q ",
           q.describe(), " and v ", v.describe());
  cpu::check_same_dtype(op, "q", q, "lse", lse);
  G4_CHECK(lse.shape() == lse_shape, op, ": lse ", lse.describe(), " must be [B, nH, Sq] = ", shape_str(lse_shape));
  cpu::dispatch_float(op, q, [&](auto tag) {
    using T = decltype(tag);
    dq = Tensor::zeros(q.shape(), q.dtype());
    dk = Tensor::zeros(k.shape(), k.dtype());
    dv = Tensor::zeros(v.shape(), v.dtype());
    backward_impl<T>(dout, q, k, v, out, lse, rule, dm, static_cast<T>(scale), dq, dk, dv);
  });
}

}  // namespace g4::ops

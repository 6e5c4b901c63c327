// Attention on the CPU: one pass per (batch, head, query) row. The mask is a predicate evaluated
// per (query, key) pair, so memory stays O(Sk) per thread whatever the sequence length; scores,
// softmax and the output accumulate in the input precision (fp32 for fp32, as the header says).
#include "ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {

struct Dims {
  int64_t batch, sq, sk, heads, kv_heads, d, dv;
  int64_t group() const { return heads / kv_heads; }  // query heads per kv head
};

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
}

// The mask description with its optional tensors read once into flat arrays.
struct MaskRule {
  bool causal;
  int64_t window, q_start, k_start, sq, sk;
  std::vector<int64_t> key_valid, q_doc, k_doc, q_block, k_block;  // empty when not given

  bool same_block(int64_t b, int64_t i, int64_t j) const {
    if (q_block.empty()) return false;
    const int64_t qb = q_block[b * sq + i];
    return qb >= 0 && qb == k_block[b * sk + j];
  }
  bool allowed(int64_t b, int64_t i, int64_t j) const {
    const int64_t qp = q_start + i, kp = k_start + j;
    if (causal) {
      if ((kp > qp && !same_block(b, i, j)) || (window > 0 && qp - kp >= window)) return false;
    } else if (window > 0 && std::llabs(qp - kp) >= window) {
      return false;
    }
    if (!key_valid.empty() && key_valid[b * sk + j] == 0) return false;
    if (!q_doc.empty() && q_doc[b * sq + i] != k_doc[b * sk + j]) return false;
    return true;
  }
};

std::vector<int64_t> read_mask_tensor(const Tensor& t) {
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = element_as_int(t, i);
  return out;
}

MaskRule make_rule(const AttentionMask& m, const Dims& dm) {
  MaskRule r{m.causal, m.window, m.q_start, m.k_start, dm.sq, dm.sk, {}, {}, {}, {}, {}};
  if (m.key_valid.defined()) r.key_valid = read_mask_tensor(m.key_valid);
  if (m.q_doc.defined()) {
    r.q_doc = read_mask_tensor(m.q_doc);
    r.k_doc = read_mask_tensor(m.k_doc);
  }
  if (m.q_block.defined()) {
    r.q_block = read_mask_tensor(m.q_block);
    r.k_block = read_mask_tensor(m.k_block);
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
            // A NaN score makes the row NaN, as in PyTorch (std::max would drop it and turn a row
            // of NaN scores into one with no visible key).
            mx = std::isnan(p[j]) ? p[j] : std::max(mx, p[j]);
          }
          for (int64_t c = 0; c < dm.dv; ++c) oi[c] = 0;
          T& lse_i = L[(b * dm.heads + h) * dm.sq + i];
          if (std::isnan(mx)) {
            for (int64_t c = 0; c < dm.dv; ++c) oi[c] = mx;
            L[(b * dm.heads + h) * dm.sq + i] = mx;
            continue;
          }
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
  const Dims dm = dims_of(q, k, v);
  const MaskRule rule = make_rule(mask, dm);
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
  const Dims dm = dims_of(q, k, v);
  const MaskRule rule = make_rule(mask, dm);
  cpu::dispatch_float("attention_backward", q, [&](auto tag) {
    using T = decltype(tag);
    dq = Tensor::zeros(q.shape(), q.dtype());
    dk = Tensor::zeros(k.shape(), k.dtype());
    dv = Tensor::zeros(v.shape(), v.dtype());
    backward_impl<T>(dout, q, k, v, out, lse, rule, dm, static_cast<T>(scale), dq, dk, dv);
  });
}

void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b) {
  cpu::dispatch_float("attention_merge_", out, [&](auto tag) {
    using T = decltype(tag);
    const int64_t B = out.size(0), Sq = out.size(1), nH = out.size(2), dv = out.size(3);
    T* O = out.data<T>();
    T* L = lse.data<T>();
    const T* Ob = out_b.data<T>();
    const T* Lb = lse_b.data<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < nH; ++h)
        for (int64_t i = 0; i < Sq; ++i) {
          const int64_t li = (b * nH + h) * Sq + i;
          const T lo = L[li], lb = Lb[li];
          if (lb == -std::numeric_limits<T>::infinity()) continue;  // the block shows this query nothing
          const T mx = std::max(lo, lb);
          const T l = mx + std::log(std::exp(lo - mx) + std::exp(lb - mx));
          const T wo = std::exp(lo - l), wb = std::exp(lb - l);  // wo = 0 when lo = -inf
          T* o = O + ((b * Sq + i) * nH + h) * dv;
          const T* ob = Ob + ((b * Sq + i) * nH + h) * dv;
          for (int64_t j = 0; j < dv; ++j) o[j] = wo * o[j] + wb * ob[j];
          L[li] = l;
        }
  });
}

}  // namespace g4::ops::cpu

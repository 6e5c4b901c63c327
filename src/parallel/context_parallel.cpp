#include "parallel/context_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/gemma4.h"
#include "ops/elementwise.h"

namespace g4::parallel {
namespace {

// Whether some query of [qs, qs+n) may see some key of [ks, ks+n) by position alone.
bool block_visible(const ops::AttentionMask& m, int64_t qs, int64_t ks, int64_t n) {
  if (m.causal && ks > qs + n - 1) return false;  // every key after every query
  if (m.window <= 0) return true;
  // The smallest q - k (causal) or |q - k| over the two ranges.
  const int64_t gap = ks > qs + n - 1 ? ks - (qs + n - 1) : (qs > ks + n - 1 ? qs - (ks + n - 1) : 0);
  return gap < m.window;
}

// (out, lse) <- the attention over both key sets, from each one's (out, lse):
// lse = logaddexp(lse, lse_b), out = exp(lse_old - lse) out + exp(lse_b - lse) out_b.
template <typename T>
void merge_block(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b) {
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
}

// Source rank r's rows of an all-gathered [cp*B, Sl] tensor.
Tensor rows_of(const Tensor& gathered, int r, int64_t B) {
  return gathered.defined() ? ops::narrow(gathered, 0, r * B, B) : Tensor();
}

}  // namespace

ag::Var ring_attention(Communicator& cp, const ag::Var& q, const ag::Var& k, const ag::Var& v,
                       const ops::AttentionMask& mask, double scale) {
  const int n = cp.size(), rank = cp.rank();
  const Tensor& qv = q.value();
  G4_CHECK(qv.dim() == 4 && k.value().dim() == 4 && v.value().dim() == 4,
           "ring_attention: q, k, v must be [B, S_local, heads, dim], got ", qv.describe(), ", ",
           k.value().describe(), ", ", v.value().describe());
  const int64_t B = qv.size(0), Sl = qv.size(1);
  G4_CHECK(k.shape()[1] == Sl && v.shape()[1] == Sl, "ring_attention: every rank holds an equal slice of queries and "
           "keys; q has ", Sl, " positions, k ", k.shape()[1], ", v ", v.shape()[1]);
  G4_CHECK(mask.q_start == mask.k_start, "ring_attention: the local queries and keys are the same slice, but q_start ",
           mask.q_start, " != k_start ", mask.k_start);
  G4_CHECK(mask.q_doc.defined() == mask.k_doc.defined(), "ring_attention: give both q_doc and k_doc, or neither");
  const DType dt = qv.dtype();
  G4_CHECK(dt == DType::F32 || dt == DType::F64, "ring_attention: f32 or f64, got ", dtype_name(dt));

  // Absolute start of source rank r's slice, and the mask for its block.
  const int64_t origin = mask.q_start - rank * Sl;
  const Tensor docs = mask.k_doc.defined() ? cp.all_gather(mask.k_doc.to(DType::I32)) : Tensor();
  const Tensor valid = mask.key_valid.defined() ? cp.all_gather(mask.key_valid.to(DType::I32)) : Tensor();
  auto block_mask = [=](int r) {
    ops::AttentionMask m;
    m.causal = mask.causal;
    m.window = mask.window;
    m.q_start = mask.q_start;
    m.k_start = origin + r * Sl;
    m.key_valid = rows_of(valid, r, B);
    if (docs.defined()) m.q_doc = mask.q_doc.to(DType::I32);
    m.k_doc = rows_of(docs, r, B);
    return m;
  };
  auto visible = [=](int r) { return block_visible(mask, mask.q_start, origin + r * Sl, Sl); };

  // The ring: at step s this rank holds the block of rank - s.
  std::vector<Tensor> ks(static_cast<size_t>(n)), vs(static_cast<size_t>(n));
  Tensor cur_k = k.value(), cur_v = v.value();
  const int64_t nH = qv.size(2), dv = v.shape()[3];
  Tensor out = Tensor::zeros({B, Sl, nH, dv}, dt);
  Tensor lse = Tensor::full({B, nH, Sl}, -INFINITY, dt);
  for (int s = 0; s < n; ++s) {
    const int src = (rank - s + n) % n;
    ks[static_cast<size_t>(src)] = cur_k;
    vs[static_cast<size_t>(src)] = cur_v;
    if (s + 1 < n) {  // pass the block on while attending to it (CPU: sequentially)
      Tensor next_k = Tensor::empty(cur_k.shape(), cur_k.dtype()), next_v = Tensor::empty(cur_v.shape(), cur_v.dtype());
      cp.send_recv(cur_k, (rank + 1) % n, next_k, (rank - 1 + n) % n);
      cp.send_recv(cur_v, (rank + 1) % n, next_v, (rank - 1 + n) % n);
      cur_k = next_k;
      cur_v = next_v;
    }
    if (!visible(src)) continue;
    Tensor lse_b;
    const Tensor out_b = ops::attention(qv, ks[static_cast<size_t>(src)], vs[static_cast<size_t>(src)],
                                        block_mask(src), scale, &lse_b);
    if (dt == DType::F64) merge_block<double>(out, lse, out_b, lse_b);
    else merge_block<float>(out, lse, out_b, lse_b);
  }

  const bool rec = ag::should_record({&q, &k, &v});
  ag::Var result(out, rec);
  if (rec) {
    auto qi = q.impl(), ki = k.impl(), vi = v.impl(), oi = result.impl();
    ag::record_collective({oi}, [&cp, n, qi, ki, vi, oi, out, lse, ks, vs, block_mask, visible, scale] {
      const Tensor dout = oi->grad.defined() ? oi->grad : Tensor::zeros(out.shape(), out.dtype());
      const Shape kshape = ki->value.shape(), vshape = vi->value.shape();
      Tensor dq = Tensor::zeros(qi->value.shape(), qi->value.dtype());
      // Row r of the concatenations: this rank's gradient for rank r's block.
      Shape one_k{1}, one_v{1};  // [1, ...]: concatenated into [cp, ...] for reduce_scatter
      one_k.insert(one_k.end(), kshape.begin(), kshape.end());
      one_v.insert(one_v.end(), vshape.begin(), vshape.end());
      std::vector<Tensor> dks, dvs;
      for (int r = 0; r < n; ++r) {
        Tensor dq_b, dk_b, dv_b;
        if (visible(r)) {
          ops::attention_backward(dout, qi->value, ks[static_cast<size_t>(r)], vs[static_cast<size_t>(r)], out, lse,
                                  block_mask(r), scale, dq_b, dk_b, dv_b);
          ops::add_(dq, dq_b);
        } else {
          dk_b = Tensor::zeros(kshape, ki->value.dtype());
          dv_b = Tensor::zeros(vshape, vi->value.dtype());
        }
        dks.push_back(dk_b.reshape(one_k));
        dvs.push_back(dv_b.reshape(one_v));
      }
      const Tensor dk = cp.reduce_scatter(ops::concat(dks, 0)).reshape(kshape);
      const Tensor dv = cp.reduce_scatter(ops::concat(dvs, 0)).reshape(vshape);
      ag::accumulate_grad(qi, dq);
      ag::accumulate_grad(ki, dk);
      ag::accumulate_grad(vi, dv);
    });
  }
  return result;
}

namespace {

class RingContextAttention final : public model::ContextAttention {
 public:
  explicit RingContextAttention(Communicator& cp) : cp_(cp) {}

  int64_t slice_start(int64_t local_len) const override { return cp_.rank() * local_len; }

  Tensor document_ids(const Tensor& local_positions) override {
    // Gather the whole sequence's positions, [cp*B, Sl] rank by rank, into [B, S].
    const int64_t B = local_positions.size(0);
    const Tensor rows = cp_.all_gather(local_positions.to(DType::I64));
    std::vector<Tensor> parts;
    for (int r = 0; r < cp_.size(); ++r) parts.push_back(rows_of(rows, r, B));
    const Tensor all = model::document_ids_from_positions(ops::concat(parts, 1));
    return sequence_shard(all, cp_.rank(), cp_.size());
  }

  ag::Var attend(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ops::AttentionMask& mask,
                 double scale) override {
    return ring_attention(cp_, q, k, v, mask, scale);
  }

 private:
  Communicator& cp_;
};

}  // namespace

void enable_context_parallel(model::Gemma4& model, Communicator& cp) {
  model.set_context_attention(std::make_shared<RingContextAttention>(cp));
}

int64_t global_target_count(const Tensor& targets, Communicator& group) {
  G4_CHECK(targets.defined() && targets.dim() == 2, "global_target_count: targets must be [B, S], got ",
           targets.describe());
  int64_t counted = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) counted += element_as_int(targets, i) != -100;
  Tensor t = Tensor::scalar(static_cast<double>(counted), DType::I64);
  group.all_reduce(t, ReduceOp::Sum);
  return t.data<int64_t>()[0];
}

Tensor sequence_shard(const Tensor& t, int rank, int cp) {
  G4_CHECK(t.defined() && t.dim() >= 2, "context parallelism: expected a [B, S, ...] tensor, got ", t.describe());
  G4_CHECK(cp >= 1 && rank >= 0 && rank < cp, "context parallelism: rank ", rank, " is not in a group of ", cp);
  const int64_t S = t.size(1);
  G4_CHECK(S % cp == 0, "context parallelism: the sequence length ", S, " does not split into ", cp,
           " equal contiguous shards; pad or pack sequences to a multiple of ", cp);
  const int64_t Sl = S / cp;
  return ops::narrow(t, 1, rank * Sl, Sl).clone();
}

ContextShard shard_batch(const Tensor& input_ids, const Tensor& position_ids, const Tensor& labels, int rank, int cp) {
  G4_CHECK(input_ids.defined() && input_ids.dim() == 2, "shard_batch: input_ids must be [B, S], got ",
           input_ids.describe());
  const int64_t B = input_ids.size(0), S = input_ids.size(1);
  Tensor pos = position_ids;
  if (!pos.defined()) {
    pos = Tensor::empty({B, S}, DType::I64);
    for (int64_t i = 0; i < B * S; ++i) pos.data<int64_t>()[i] = i % S;
  }
  ContextShard shard;
  shard.input_ids = sequence_shard(input_ids, rank, cp);
  shard.position_ids = sequence_shard(pos, rank, cp);
  if (labels.defined()) shard.targets = sequence_shard(model::shift_labels(labels), rank, cp);
  return shard;
}

}  // namespace g4::parallel

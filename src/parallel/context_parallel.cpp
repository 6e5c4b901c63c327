#include "parallel/context_parallel.h"

#include <cmath>
#include <unordered_set>
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

// Whether some query of [B, Sq] block ids `qb` and some key of [B, Sk] block ids `kb` (host, i32)
// share an image block in the same batch row: then keys after every query may still be seen.
bool share_block(const Tensor& qb, const Tensor& kb) {
  const int64_t B = qb.size(0), sq = qb.size(1), sk = kb.size(1);
  for (int64_t b = 0; b < B; ++b) {
    std::unordered_set<int32_t> ids;
    for (int64_t i = 0; i < sq; ++i)
      if (const int32_t id = qb.data<int32_t>()[b * sq + i]; id >= 0) ids.insert(id);
    if (ids.empty()) continue;
    for (int64_t j = 0; j < sk; ++j)
      if (ids.count(kb.data<int32_t>()[b * sk + j])) return true;
  }
  return false;
}

// Source rank r's rows of an all-gathered [cp*B, Sl] tensor.
Tensor rows_of(const Tensor& gathered, int r, int64_t B) {
  return gathered.defined() ? gathered.slice0(r * B, B) : Tensor();
}

// Every rank's [B, Sl] rows of `t` (any device; moved to the group's), [cp*B, Sl] on the group's device.
Tensor gather_rows(Communicator& cp, const Tensor& t) {
  Tensor out = Tensor::empty({cp.size() * t.size(0), t.size(1)}, t.dtype(), cp.device());
  cp.all_gather(on_device_of(cp, t), out);
  return out;
}

// t in dtype `dt` (t itself when it already is).
Tensor as_dtype(const Tensor& t, DType dt) {
  return t.dtype() == dt ? t : t.to(dt);
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
  G4_CHECK(mask.q_block.defined() == mask.k_block.defined(), "ring_attention: give both q_block and k_block, or "
           "neither");
  const DType dt = qv.dtype();
  const Device dev = qv.device();
  G4_CHECK(dev == cp.device(), "ring_attention: q ", qv.describe(), " is not where the ", cp.backend(),
           " communicator moves tensors");
  // The attention ops' dtypes: the CPU reference computes in f32 or f64, the CUDA kernels take bf16.
  const bool gpu = dev == Device::CUDA;
  G4_CHECK(gpu ? dt == DType::BF16 : (dt == DType::F32 || dt == DType::F64),
           "ring_attention: q, k, v must be f32 or f64 on the CPU and bf16 on the GPU, got ", qv.describe());
  // The running output and lse, and the backward's accumulators, in fp32 on the GPU (f64 for f64).
  const DType acc = gpu ? DType::F32 : dt;

  // Absolute start of source rank r's slice, and the mask for its block.
  const int64_t origin = mask.q_start - rank * Sl;
  const Tensor docs = mask.k_doc.defined() ? gather_rows(cp, as_dtype(mask.k_doc, DType::I32)) : Tensor();
  const Tensor valid = mask.key_valid.defined() ? gather_rows(cp, as_dtype(mask.key_valid, DType::I32)) : Tensor();
  const Tensor q_doc = mask.q_doc.defined() ? on_device_of(cp, as_dtype(mask.q_doc, DType::I32)) : Tensor();
  // Image blocks (block ids of the whole sequence, so that an image crossing a slice boundary has
  // one id on both sides) travel like the document ids: every rank's are gathered once and each
  // block of keys is attended with its owner's. The kernels take them as they are; only the
  // choice of which blocks to compute needs them on the host: a query may see the later keys of
  // its image, so a block after every local query is still computed when it shares an image with
  // them (block ids are ignored on bidirectional masks, as the attention ops ignore them).
  const bool with_blocks = mask.q_block.defined() && mask.causal;
  const Tensor blocks = with_blocks ? gather_rows(cp, as_dtype(mask.k_block, DType::I32)) : Tensor();
  const Tensor q_block = with_blocks ? on_device_of(cp, as_dtype(mask.q_block, DType::I32)) : Tensor();
  std::vector<char> shares(static_cast<size_t>(n), 0);
  if (with_blocks) {
    const Tensor host = blocks.to(Device::CPU), host_q = as_dtype(mask.q_block.to(Device::CPU), DType::I32);
    for (int r = 0; r < n; ++r) shares[static_cast<size_t>(r)] = share_block(host_q, rows_of(host, r, B));
  }
  auto block_mask = [=](int r) {
    ops::AttentionMask m;
    m.causal = mask.causal;
    m.window = mask.window;
    m.q_start = mask.q_start;
    m.k_start = origin + r * Sl;
    m.key_valid = rows_of(valid, r, B);
    m.q_doc = q_doc;
    m.k_doc = rows_of(docs, r, B);
    m.q_block = q_block;
    m.k_block = rows_of(blocks, r, B);
    return m;
  };
  auto visible = [=](int r) {
    return block_visible(mask, mask.q_start, origin + r * Sl, Sl) || shares[static_cast<size_t>(r)];
  };

  // The ring: at step s this rank holds the block of rank - s, and receives the next one while it
  // attends to it; no other remote block is kept (the backward pass runs the ring again).
  const int next = (rank + 1) % n, prev = (rank - 1 + n) % n;
  Tensor cur_k = k.value(), cur_v = v.value();
  const int64_t nH = qv.size(2), dv = v.shape()[3];
  Tensor merged = Tensor::zeros({B, Sl, nH, dv}, acc, dev);
  Tensor lse = Tensor::full({B, nH, Sl}, -INFINITY, acc, dev);
  for (int s = 0; s < n; ++s) {
    const int src = (rank - s + n) % n;
    Tensor next_k, next_v;
    if (s + 1 < n) {  // pass the block on (before attending to it: the host-staged and CPU exchanges block)
      next_k = Tensor::empty(cur_k.shape(), cur_k.dtype(), dev);
      next_v = Tensor::empty(cur_v.shape(), cur_v.dtype(), dev);
      cp.send_recv(cur_k, next, next_k, prev);
      cp.send_recv(cur_v, next, next_v, prev);
    }
    if (visible(src)) {
      Tensor lse_b;
      const Tensor out_b = ops::attention(qv, cur_k, cur_v, block_mask(src), scale, &lse_b);
      ops::attention_merge_(merged, lse, out_b, lse_b);
    }
    cur_k = next_k;
    cur_v = next_v;
  }
  // The output in the inputs' dtype; the backward reads it (rounded, as one rank's attention
  // backward reads its own bf16 output) with the fp32 lse.
  const Tensor out = as_dtype(merged, dt);

  const bool rec = ag::should_record({&q, &k, &v});
  ag::Var result(out, rec);
  if (rec) {
    auto qi = q.impl(), ki = k.impl(), vi = v.impl(), oi = result.impl();
    ag::record_collective({oi}, [&cp, n, next, prev, qi, ki, vi, oi, out, lse, block_mask, visible, scale, acc, dt,
                                 dev] {
      const Tensor dout = oi->grad.defined() ? as_dtype(oi->grad, dt) : Tensor::zeros(out.shape(), dt, dev);
      // The ring again: each K/V block travels with its dK/dV accumulators, to which every rank
      // adds its queries' share; after n steps the accumulators have met every rank and one more
      // step hands them to the block's owner. Each rank holds its block in hand and the one
      // arriving: two blocks, however many ranks the ring has. The accumulators are fp32 on the
      // GPU (the blocks' bf16 shares add up without rounding in between).
      Tensor dq = Tensor::zeros(qi->value.shape(), acc, dev);
      Tensor cur_k = ki->value, cur_v = vi->value;
      Tensor cur_dk = Tensor::zeros(cur_k.shape(), acc, dev), cur_dv = Tensor::zeros(cur_v.shape(), acc, dev);
      auto pass = [&](Tensor& t) {
        Tensor in = Tensor::empty(t.shape(), t.dtype(), dev);
        cp.send_recv(t, next, in, prev);
        t = in;
      };
      for (int s = 0; s < n; ++s) {
        const int src = (cp.rank() - s + n) % n;
        if (visible(src)) {
          Tensor dq_b, dk_b, dv_b;
          ops::attention_backward(dout, qi->value, cur_k, cur_v, out, lse, block_mask(src), scale, dq_b, dk_b, dv_b);
          ops::add_(dq, dq_b);
          ops::add_(cur_dk, dk_b);
          ops::add_(cur_dv, dv_b);
        }
        if (n == 1) break;
        if (s + 1 < n) {  // the block moves on with its accumulators
          pass(cur_k);
          pass(cur_v);
        }
        pass(cur_dk);  // after the last step: to the owner, and ours arrives
        pass(cur_dv);
      }
      ag::accumulate_grad(qi, as_dtype(dq, dt));
      ag::accumulate_grad(ki, as_dtype(cur_dk, dt));
      ag::accumulate_grad(vi, as_dtype(cur_dv, dt));
    });
  }
  return result;
}

namespace {

class RingContextAttention final : public model::ContextAttention {
 public:
  explicit RingContextAttention(Communicator& cp) : cp_(cp) {}

  int64_t slice_start(int64_t local_len) const override { return cp_.rank() * local_len; }

  Tensor whole_rows(const Tensor& local) override {
    // Gather every rank's [B, Sl], [cp*B, Sl] rank by rank, into [B, S].
    G4_CHECK(local.defined() && local.dim() == 2, "context parallelism: expected a slice's [B, S_local] rows, got ",
             local.describe());
    const int64_t B = local.size(0);
    const Tensor rows = gather_rows(cp_, as_dtype(local, DType::I64)).to(Device::CPU);
    std::vector<Tensor> parts;
    for (int r = 0; r < cp_.size(); ++r) parts.push_back(rows_of(rows, r, B));
    return ops::concat(parts, 1);
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
  const Tensor host = targets.device() == Device::CPU ? targets : targets.to(Device::CPU);
  int64_t counted = 0;
  for (int64_t i = 0; i < host.numel(); ++i) counted += element_as_int(host, i) != -100;
  Tensor t = Tensor::scalar(static_cast<double>(counted), DType::I64);
  all_reduce_values(group, t, ReduceOp::Sum);
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

int64_t padded_length(int64_t S, int cp) {
  G4_CHECK(cp >= 1, "context parallelism: a group of ", cp, " ranks");
  return (S + cp - 1) / cp * cp;
}

PaddedRows pad_to_multiple(const Tensor& input_ids, const Tensor& position_ids, const Tensor& labels, int cp,
                           int64_t pad_id) {
  G4_CHECK(input_ids.defined() && input_ids.dim() == 2, "pad_to_multiple: input_ids must be [B, S], got ",
           input_ids.describe());
  const int64_t B = input_ids.size(0), S = input_ids.size(1), P = padded_length(S, cp);
  for (const Tensor* t : {&position_ids, &labels})
    G4_CHECK(!t->defined() || t->shape() == input_ids.shape(), "pad_to_multiple: position_ids and labels must match ",
             "input_ids ", input_ids.describe(), ", got ", t->describe());
  PaddedRows out;
  out.input_ids = pad_columns(input_ids, P, pad_id);
  out.position_ids = Tensor::empty({B, P}, DType::I64);
  if (labels.defined()) out.labels = pad_columns(labels, P, -100);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < P; ++s)
      out.position_ids.data<int64_t>()[b * P + s] =
          s >= S ? s - S : (position_ids.defined() ? element_as_int(position_ids, b * S + s) : s);
  return out;
}

Tensor pad_columns(const Tensor& rows, int64_t P, int64_t value) {
  G4_CHECK(rows.defined() && rows.dim() == 2 && P >= rows.size(1), "pad_columns: cannot pad ", rows.describe(), " to ",
           P, " columns");
  const int64_t B = rows.size(0), S = rows.size(1);
  const Tensor host = rows.device() == Device::CPU ? rows : rows.to(Device::CPU);
  Tensor out = Tensor::empty({B, P}, DType::I64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < P; ++s) out.data<int64_t>()[b * P + s] = s < S ? element_as_int(host, b * S + s) : value;
  return out;
}

}  // namespace g4::parallel

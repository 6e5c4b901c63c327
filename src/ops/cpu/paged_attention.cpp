// Paged attention on the CPU: for each query row and head, the visible keys are found through the
// page table and softmax-weighted as in ops/cpu/attention.cpp (scores, softmax and output in the
// input precision; a NaN score makes the row NaN).
#include "ops/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {

// The layout's integer tensors read once.
struct Sequences {
  std::vector<int64_t> cu_q, kv_len, kv_start, table;
  int64_t max_pages = 0;
  std::vector<int64_t> q_last;  // per query row; empty: causal
  int64_t count() const { return static_cast<int64_t>(kv_len.size()); }
};

Sequences read_layout(const PagedLayout& l) {
  Sequences s{read_indices(l.cu_q), read_indices(l.kv_len), {}, read_indices(l.page_table), l.page_table.size(1), {}};
  s.kv_start = l.kv_start.defined() ? read_indices(l.kv_start) : std::vector<int64_t>(s.kv_len.size(), 0);
  if (l.q_last.defined()) s.q_last = read_indices(l.q_last);
  return s;
}

template <class T>
void attend(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const Sequences& seqs, int64_t window,
            T scale, Tensor& out) {
  const int64_t heads = q.size(1), d = q.size(2), page = k_pages.size(1), kv_heads = k_pages.size(2),
                dv = v_pages.size(3), group = heads / kv_heads;
  const T* Q = q.data<T>();
  const T* K = k_pages.data<T>();
  const T* V = v_pages.data<T>();
  T* O = out.data<T>();
  // Every page a query can see must be present (checked here: a throw inside the parallel loop
  // would end the process). seq_of[row]: the sequence of each query row.
  std::vector<int64_t> seq_of(static_cast<size_t>(q.size(0)), -1);
  for (int64_t i = 0; i < seqs.count(); ++i) {
    const int64_t q_len = seqs.cu_q[i + 1] - seqs.cu_q[i], first_pos = seqs.kv_len[i] - q_len;
    G4_CHECK(first_pos >= 0, "paged_attention: sequence ", i, " has ", q_len, " query rows but kv_len ",
             seqs.kv_len[i]);
    G4_CHECK(seqs.cu_q[i + 1] <= q.size(0), "paged_attention: sequence ", i, " has query rows up to ", seqs.cu_q[i + 1],
             " of ", q.size(0));
    const int64_t first_seen = std::max(seqs.kv_start[i], window > 0 ? first_pos - window + 1 : int64_t{0});
    for (int64_t p = first_seen / page; q_len > 0 && p * page < seqs.kv_len[i]; ++p) {
      G4_CHECK(p < seqs.max_pages, "paged_attention: sequence ", i, " holds ", seqs.kv_len[i], " keys but its page table has ",
               seqs.max_pages, " slots of ", page);
      const int64_t phys = seqs.table[i * seqs.max_pages + p];
      G4_CHECK(phys >= 0 && phys < k_pages.size(0), "paged_attention: sequence ", i, " sees keys on page slot ", p,
               ", which holds page ", phys, " (pool of ", k_pages.size(0), " pages)");
    }
    for (int64_t r = seqs.cu_q[i]; r < seqs.cu_q[i + 1]; ++r) {
      seq_of[static_cast<size_t>(r)] = i;
      if (seqs.q_last.empty()) continue;
      const int64_t pos = first_pos + (r - seqs.cu_q[i]), last = seqs.q_last[static_cast<size_t>(r)];
      G4_CHECK(last >= pos && last < seqs.kv_len[i], "paged_attention: query row ", r, " at position ", pos,
               " has q_last ", last, " (must be in [", pos, ", kv_len ", seqs.kv_len[i], "))");
      G4_CHECK(r == seqs.cu_q[i] || last >= seqs.q_last[static_cast<size_t>(r - 1)], "paged_attention: q_last of ",
               "query row ", r, " (", last, ") is below that of the row before it");
    }
  }
  const int64_t rows = q.size(0);
  // One parallel loop over the rows of all sequences: a decode step has one row per sequence.
#pragma omp parallel for collapse(2) if (rows * heads > 16)
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t h = 0; h < heads; ++h) {
      T* oi = O + (row * heads + h) * dv;
      std::fill(oi, oi + dv, T(0));
      const int64_t i = seq_of[static_cast<size_t>(row)];
      if (i < 0) continue;  // a row no sequence owns
      const int64_t pos = seqs.kv_len[i] - (seqs.cu_q[i + 1] - row), kvh = h / group;
      const int64_t lo = std::max(seqs.kv_start[i], window > 0 ? pos - window + 1 : int64_t{0});
      const int64_t hi = seqs.q_last.empty() ? pos : seqs.q_last[static_cast<size_t>(row)];
      const T* qi = Q + (row * heads + h) * d;
      if (lo > hi) continue;  // no visible key
      // Row of key j (kv head kvh) in the pools.
      auto key_row = [&](int64_t j) { return (seqs.table[i * seqs.max_pages + j / page] * page + j % page) * kv_heads + kvh; };
      std::vector<T> p(static_cast<size_t>(hi - lo + 1));
      T mx = -INFINITY;
      for (int64_t j = lo; j <= hi; ++j) {
        const T* kj = K + key_row(j) * d;
        T s = 0;
        for (int64_t c = 0; c < d; ++c) s += qi[c] * kj[c];
        p[j - lo] = s * scale;
        mx = std::isnan(p[j - lo]) ? p[j - lo] : std::max(mx, p[j - lo]);
      }
      if (std::isnan(mx)) {
        std::fill(oi, oi + dv, mx);
        continue;
      }
      T sum = 0;
      for (T& x : p) sum += (x = std::exp(x - mx));
      for (int64_t j = lo; j <= hi; ++j) {
        const T w = p[j - lo] / sum;
        const T* vj = V + key_row(j) * dv;
        for (int64_t c = 0; c < dv; ++c) oi[c] += w * vj[c];
      }
    }
  }
}

}  // namespace

Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale) {
  const Sequences seqs = read_layout(layout);
  return dispatch_float("paged_attention", q, [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({q.size(0), q.size(1), v_pages.size(3)}, q.dtype());
    attend<T>(q, k_pages, v_pages, seqs, layout.window, static_cast<T>(scale), out);
    return out;
  });
}

void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots) {
  const std::vector<int64_t> slot = read_indices(slots);
  const int64_t rows = k_pages.size(0) * k_pages.size(1);
  const int64_t k_row = k.numel() / std::max<int64_t>(k.size(0), 1), v_row = v.numel() / std::max<int64_t>(v.size(0), 1);
  dispatch_float("write_kv_pages", k, [&](auto tag) {
    using T = decltype(tag);
    for (size_t t = 0; t < slot.size(); ++t) {
      if (slot[t] < 0) continue;
      G4_CHECK(slot[t] < rows, "write_kv_pages: token ", t, " goes to slot ", slot[t], " of a pool of ", rows,
               " rows");
      std::copy_n(k.data<T>() + static_cast<int64_t>(t) * k_row, k_row, k_pages.data<T>() + slot[t] * k_row);
      std::copy_n(v.data<T>() + static_cast<int64_t>(t) * v_row, v_row, v_pages.data<T>() + slot[t] * v_row);
    }
  });
}

}  // namespace g4::ops::cpu

// Embedding lookup (a row gather, so any weight dtype works) and its scatter-add gradient.
#include "ops/cpu/embedding.h"

#include <cstring>

#include "ops/cpu/common.h"

namespace g4::ops::cpu {

namespace {
// Reads the ids and rejects any outside [0, vocab) with the id, its flat position and V.
std::vector<int64_t> checked_ids(const char* op, const Tensor& ids, int64_t vocab) {
  const std::vector<int64_t> v = cpu::read_indices(ids);
  for (size_t i = 0; i < v.size(); ++i) {
    G4_CHECK(v[i] >= 0 && v[i] < vocab, op, ": id ", v[i], " at flat position ", i, " of ids ", ids.describe(),
             " is outside the vocabulary [0, ", vocab, ")");
  }
  return v;
}
}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const int64_t vocab = weight.size(0), d = weight.size(1);
  const std::vector<int64_t> v = checked_ids("embedding", ids, vocab);
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor out = Tensor::empty(out_shape, weight.dtype());
  const size_t row_bytes = static_cast<size_t>(d) * dtype_size(weight.dtype());
  const char* src = static_cast<const char*>(weight.raw());
  char* dst = static_cast<char*>(out.raw());
  for (size_t i = 0; i < v.size(); ++i) std::memcpy(dst + i * row_bytes, src + v[i] * row_bytes, row_bytes);
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx) {
  const int64_t d = dy.dim() > 0 ? dy.size(-1) : 0;
  Tensor dw = Tensor::zeros({vocab, d}, dy.dtype());
  embedding_backward_accumulate(dw, dy, ids, padding_idx);
  return dw;
}

void embedding_backward_accumulate(Tensor& dw, const Tensor& dy, const Tensor& ids, int64_t padding_idx) {
  const char* op = "embedding_backward";
  const std::vector<int64_t> v = checked_ids(op, ids, dw.size(0));
  cpu::dispatch_float(op, dy, [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = dy.size(-1);
    const T* pdy = dy.data<T>();
    T* pdw = dw.data<T>();
    // Serial on purpose: repeated ids would race, and the fixed order keeps results reproducible.
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == padding_idx) continue;
      for (int64_t c = 0; c < d; ++c) pdw[v[i] * d + c] += pdy[i * d + c];
    }
  });
}

}  // namespace g4::ops::cpu

// Shared plumbing of the CPU reference: dtype dispatch and reading index tensors. Arguments arrive
// checked by the op's dispatcher (ops/<family>.cpp), so each op file reads as arithmetic.
#pragma once
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace g4::ops::cpu {

// Calls fn(T{}) with T = float or double, matching `t`'s dtype (f32 or f64: the dispatcher checked).
template <class Fn>
decltype(auto) dispatch_float(const char* op, const Tensor& t, Fn&& fn) {
  switch (t.dtype()) {
    case DType::F32: return fn(float{});
    case DType::F64: return fn(double{});
    default: G4_FAIL(op, ": unsupported dtype ", t.describe(), " (the CPU op takes f32 or f64)");
  }
}

// Index tensors (token ids, positions, expert ids), i32 or i64, as int64.
inline std::vector<int64_t> read_indices(const Tensor& t) {
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::I32) {
    const int32_t* p = t.data<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    const int64_t* p = t.data<int64_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  }
  return out;
}

// The number of rows of t seen as [rows, D] (all leading dims).
inline int64_t leading_rows(const Tensor& t) {
  const int64_t d = t.dim() == 0 ? 1 : t.size(-1);
  return d == 0 ? 0 : t.numel() / d;
}

}  // namespace g4::ops::cpu

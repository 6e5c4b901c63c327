// Shared plumbing of the CPU ops: dtype dispatch and the argument checks whose messages every op
// repeats (op name, tensor names, dtypes and shapes), so that each op file reads as arithmetic.
#pragma once
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace g4::ops::cpu {

// Calls fn(T{}) with T = float or double, matching `t`'s dtype; any other dtype is an error.
template <class Fn>
decltype(auto) dispatch_float(const char* op, const Tensor& t, Fn&& fn) {
  G4_CHECK(t.defined(), op, ": undefined input tensor");
  G4_CHECK(t.device() == Device::CPU, op, ": ", t.describe(), " is not on the CPU");
  switch (t.dtype()) {
    case DType::F32: return fn(float{});
    case DType::F64: return fn(double{});
    default: G4_FAIL(op, ": unsupported dtype ", t.describe(), " (the CPU op takes f32 or f64)");
  }
}

inline void check_defined(const char* op, const char* name, const Tensor& t) {
  G4_CHECK(t.defined(), op, ": ", name, " is undefined");
  G4_CHECK(t.device() == Device::CPU, op, ": ", name, " ", t.describe(), " is not on the CPU");
}

// `b` must have `a`'s dtype (float ops never mix f32 and f64 silently).
inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  check_defined(op, name_a, a);
  check_defined(op, name_b, b);
  G4_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

inline void check_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  check_same_dtype(op, name_a, a, name_b, b);
  G4_CHECK(a.shape() == b.shape(), op, ": shapes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

inline void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  check_defined(op, name, t);
  G4_CHECK(t.dim() == rank, op, ": ", name, " must be ", layout, ", got ", t.describe());
}

inline bool is_index_dtype(DType t) { return t == DType::I32 || t == DType::I64; }

// Index tensors (token ids, positions, expert ids) may be i32 or i64; returns them as int64.
inline std::vector<int64_t> read_indices(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  G4_CHECK(is_index_dtype(t.dtype()), op, ": ", name, " must be i32 or i64, got ", t.describe());
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

// Last dimension and the number of rows before it ([..., D] seen as [rows, D]).
inline int64_t last_dim(const Tensor& t) { return t.dim() == 0 ? 1 : t.size(-1); }
inline int64_t leading_rows(const Tensor& t) {
  const int64_t d = last_dim(t);
  return d == 0 ? 0 : t.numel() / d;
}

}  // namespace g4::ops::cpu

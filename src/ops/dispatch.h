// Shared by the op dispatchers (ops/<family>.cpp), the one place where an op's arguments are
// checked before the call goes to ops::cpu (the reference) or ops::cuda (the GPU backend), so
// neither backend repeats a check. Messages name the op, the argument and its describe().
#pragma once
#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"

namespace g4::ops {

// The backend a call goes to: the device of its first tensor (builds without CUDA cannot make a
// GPU tensor, so there it is always the CPU).
inline bool on_gpu(const Tensor& t) { return t.defined() && t.device() == Device::CUDA; }

// `call` (an op and its arguments) on the backend of `t`'s device: ops::cuda for a GPU tensor,
// else the CPU reference in ops::cpu. Builds without CUDA name no ops::cuda function (the
// dispatchers include the ops/cuda headers under G4_WITH_CUDA); there the GPU branch, never taken
// since such builds cannot make a GPU tensor, calls the CPU reference. `t` is evaluated once.
#ifdef G4_WITH_CUDA
#define G4_GPU_BACKEND ::g4::ops::cuda
#else
#define G4_GPU_BACKEND ::g4::ops::cpu
#endif
#define G4_DISPATCH(t, call) (::g4::ops::on_gpu(t) ? G4_GPU_BACKEND::call : ::g4::ops::cpu::call)

inline const char* device_name(Device d) { return d == Device::CUDA ? "GPU" : "CPU"; }

// The float dtypes each backend computes in: the CPU reference in f32 or f64, the GPU in bf16 or
// f32 (fp32 arithmetic).
inline bool is_backend_float(DType t, Device d) {
  return d == Device::CUDA ? (t == DType::F32 || t == DType::BF16) : (t == DType::F32 || t == DType::F64);
}

// Rows of t seen as a matrix [rows, last dim]: the product of every dimension but the last.
inline int64_t leading_rows(const Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

inline bool is_index_dtype(DType t) { return t == DType::I32 || t == DType::I64; }

inline void check_defined(const char* op, const char* name, const Tensor& t) {
  G4_CHECK(t.defined(), op, ": ", name, " is undefined");
}

// `t` must be defined and on `device` (every tensor of one call lives on the first one's device).
inline void check_on(const char* op, const char* name, const Tensor& t, Device device) {
  check_defined(op, name, t);
  G4_CHECK(t.device() == device, op, ": ", name, " ", t.describe(), " is not on the ", device_name(device));
}

// A float tensor on `device` in a dtype that device's backend computes in.
inline void check_float(const char* op, const char* name, const Tensor& t, Device device) {
  check_on(op, name, t, device);
  G4_CHECK(is_backend_float(t.dtype(), device), op, ": unsupported dtype ", t.describe(),
           device == Device::CUDA ? " (the GPU op takes bf16 or f32)" : " (the CPU op takes f32 or f64)");
}
inline void check_float(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  check_float(op, name, t, t.device());
}

// `b` has `a`'s dtype and device (float ops never mix f32 and f64, or bf16 and f32, silently).
inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b, const Tensor& b) {
  check_float(op, name_a, a);
  check_float(op, name_b, b, a.device());
  G4_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

inline void check_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b, const Tensor& b) {
  check_same_dtype(op, name_a, a, name_b, b);
  G4_CHECK(a.shape() == b.shape(), op, ": shapes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

inline void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  check_defined(op, name, t);
  G4_CHECK(t.dim() == rank, op, ": ", name, " must be ", layout, ", got ", t.describe());
}

// Index tensors (token ids, positions, expert ids) are i32 or i64 on `device`.
inline void check_indices(const char* op, const char* name, const Tensor& t, Device device) {
  check_on(op, name, t, device);
  G4_CHECK(is_index_dtype(t.dtype()), op, ": ", name, " must be i32 or i64, got ", t.describe());
}

// The normed tensor x [..., D] and, when defined, its weight w [D] of x's dtype (rmsnorm and the
// fused forms that norm).
inline void check_norm_args(const char* op, const char* x_name, const Tensor& x, const char* w_name, const Tensor& w) {
  check_float(op, x_name, x);
  G4_CHECK(x.dim() >= 1, op, ": ", x_name, " must be [..., D], got ", x.describe());
  if (w.defined()) {
    check_same_dtype(op, x_name, x, w_name, w);
    G4_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), op, ": ", w_name, " ", w.describe(), " must be [D] for ", x_name,
             " ", x.describe());
  }
}

// RoPE's arguments: x [B, S, nH, d] (d even), positions [B, S] of an index dtype, inv_freq f32[d/2],
// on one device.
inline void check_rope_args(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_float(op, "x", x);
  check_rank(op, "x", x, 4, "[B, S, nH, d]");
  G4_CHECK(x.size(3) % 2 == 0, op, ": head dim of x ", x.describe(), " must be even");
  check_indices(op, "positions", positions, x.device());
  G4_CHECK(positions.shape() == Shape({x.size(0), x.size(1)}), op, ": positions ", positions.describe(),
           " must be [B, S] for x ", x.describe());
  check_on(op, "inv_freq", inv_freq, x.device());
  G4_CHECK(inv_freq.dtype() == DType::F32 && inv_freq.shape() == Shape({x.size(3) / 2}), op, ": inv_freq ",
           inv_freq.describe(), " must be f32[d/2] for x ", x.describe());
}

}  // namespace g4::ops

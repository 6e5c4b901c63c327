// Argument checks of the CUDA ops, naming the op, the argument and its describe(). Host-only C++,
// so that both .cu files (through common.cuh) and host .cpp files (cuBLAS calls) share them.
#pragma once
#include "core/error.h"
#include "core/tensor.h"

namespace g4::ops::cuda {

inline void check_gpu(const char* op, const char* name, const Tensor& t) {
  G4_CHECK(t.defined(), op, ": ", name, " is undefined");
  G4_CHECK(t.device() == Device::CUDA, op, ": ", name, " ", t.describe(), " is not on the GPU");
}

inline bool is_gpu_float(DType t) { return t == DType::F32 || t == DType::BF16; }

inline void check_gpu_float(const char* op, const char* name, const Tensor& t) {
  check_gpu(op, name, t);
  G4_CHECK(is_gpu_float(t.dtype()), op, ": ", name, " ", t.describe(), " must be bf16 or f32 on the GPU");
}

inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  check_gpu_float(op, name_a, a);
  check_gpu_float(op, name_b, b);
  G4_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

inline void check_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  check_same_dtype(op, name_a, a, name_b, b);
  G4_CHECK(a.shape() == b.shape(), op, ": shapes differ: ", name_a, " ", a.describe(), " vs ", name_b, " ",
           b.describe());
}

}  // namespace g4::ops::cuda

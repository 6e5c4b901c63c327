// Random tensors drawn from the Philox stream, so a (seed, shape) pair gives the same numbers on
// every machine and every run: tests and random initialisation are reproducible.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace g4 {

// Normal(0, std²) entries; element i is philox_normal(seed, 0, i) * std.
Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32, double std = 1.0);
// Uniform entries in (lo, hi].
Tensor rand_uniform(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype = DType::F32);
// Uniform integers in [lo, hi) (dtype i32 or i64).
Tensor randint(const Shape& shape, uint64_t seed, int64_t lo, int64_t hi, DType dtype = DType::I64);

// Overwrites a floating tensor (f32, f64 or bf16; CPU or GPU) with philox_normal(seed, stream, i) *
// std: the same draws on both devices (up to the last bit of logf/cosf; the GPU draws in place, so
// initialising a model of billions of parameters takes milliseconds).
void fill_philox_normal(Tensor& t, uint64_t seed, uint64_t stream, double std);

}  // namespace g4

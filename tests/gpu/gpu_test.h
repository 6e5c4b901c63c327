// Helpers of the GPU tests: inputs drawn on the CPU and rounded to bf16 (so that the CPU reference
// sees exactly the numbers the GPU sees), copies to the GPU, and comparisons with tolerances that
// scale with the reference's magnitude.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/device_memory.h"
#include "core/random.h"
#include "core/tensor.h"

namespace g4::test {

#define G4_REQUIRE_GPU()                                            \
  do {                                                              \
    if (!::g4::cuda_available()) GTEST_SKIP() << "no CUDA device";  \
  } while (0)

// N(0, std²) f32 values that are exactly representable in bf16.
inline Tensor randn_bf16_exact(const Shape& shape, uint64_t seed, double std = 1.0) {
  return randn(shape, seed, DType::F32, std).to(DType::BF16).to(DType::F32);
}

// f32 CPU tensor -> bf16 GPU tensor (or f32 on the GPU with keep_f32).
inline Tensor gpu_bf16(const Tensor& cpu_f32) { return cpu_f32.to(DType::BF16).to(Device::CUDA); }
inline Tensor gpu_f32(const Tensor& cpu_f32) { return cpu_f32.to(DType::F32).to(Device::CUDA); }
// fp32 GPU results against the CPU reference differ by summation order only.
constexpr double kF32Rtol = 1e-5;

// A fixture name as a test name ("tiny-moe" -> "tiny_moe"), for INSTANTIATE_TEST_SUITE_P.
inline std::string fixture_param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// Any GPU tensor -> f32 CPU tensor.
inline Tensor host_f32(const Tensor& gpu) { return gpu.to(Device::CPU).to(DType::F32); }

// ||a - b|| (L2, in f64) of two tensors on any device; *norm_out (if given) gets ||b||.
inline double l2_diff(const Tensor& a_any, const Tensor& b_any, double* norm_out = nullptr) {
  const Tensor a = a_any.to(Device::CPU).to(DType::F64), b = b_any.to(Device::CPU).to(DType::F64);
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<double>()[i], y = b.data<double>()[i];
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  if (norm_out) *norm_out = std::sqrt(norm);
  return std::sqrt(diff);
}

// Largest |actual - expected| must be <= atol + rtol * max|expected|; prints the worst error so a
// passing run still reports how close it was.
inline double expect_close_scaled(const Tensor& actual_any, const Tensor& expected_any, double atol, double rtol,
                                  const std::string& what) {
  // Either side may be on the GPU (a GPU path checked against another GPU path): both are read on the host.
  const Tensor actual = actual_any.device() == Device::CUDA ? host_f32(actual_any) : actual_any.to(DType::F32);
  const Tensor expected = expected_any.device() == Device::CUDA ? host_f32(expected_any) : expected_any.to(DType::F32);
  EXPECT_EQ(actual.shape(), expected.shape()) << what;
  if (actual.shape() != expected.shape()) return INFINITY;
  const float* a = actual.data<float>();
  const float* e = expected.data<float>();
  double worst = 0, scale = 0;
  int64_t bad = -1;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(e[i])));
    const double err = std::fabs(static_cast<double>(a[i]) - e[i]);
    if (!(err <= worst)) {
      worst = err;
      bad = i;
    }
  }
  const double tol = atol + rtol * scale;
  EXPECT_LE(worst, tol) << what << ": worst |error| " << worst << " at flat index " << bad << " (actual "
                        << (bad >= 0 ? a[bad] : 0) << ", expected " << (bad >= 0 ? e[bad] : 0)
                        << "), max |expected| " << scale;
  std::printf("  %-40s max|err| %.3e  (max|ref| %.3e, tol %.3e)\n", what.c_str(), worst, scale, tol);
  return worst;
}

}  // namespace g4::test

// Helpers of the GPU benchmarks: the median of event-timed runs on g4's stream, the
// device-to-device copy bandwidth that memory-bound kernels are compared with, and large random
// bf16 inputs made quickly.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/random.h"
#include "core/tensor.h"

namespace g4::bench {

// Median milliseconds of fn over iters runs (each timed with events on g4's stream) after warm-up.
inline double median_ms(const std::function<void(int)>& fn, int iters) {
  for (int i = 0; i < 3; ++i) fn(i);
  cudaEvent_t start, stop;
  G4_CUDA_CHECK(cudaEventCreate(&start));
  G4_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    G4_CUDA_CHECK(cudaEventRecord(start, g4::cuda::stream()));
    fn(i);
    G4_CUDA_CHECK(cudaEventRecord(stop, g4::cuda::stream()));
    G4_CUDA_CHECK(cudaEventSynchronize(stop));
    G4_CUDA_CHECK(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], start, stop));
  }
  G4_CUDA_CHECK(cudaEventDestroy(start));
  G4_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Device-to-device copy bandwidth (read + write bytes per second) over 2 GiB.
inline double copy_gbps() {
  const int64_t n = int64_t{1} << 30;  // bf16 elements
  const Tensor src = Tensor::empty({n}, DType::BF16, Device::CUDA);
  Tensor dst = Tensor::empty({n}, DType::BF16, Device::CUDA);
  G4_CUDA_CHECK(cudaMemsetAsync(const_cast<void*>(src.raw()), 1, static_cast<size_t>(n) * 2, g4::cuda::stream()));
  const double ms = median_ms(
      [&](int) {
        G4_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), static_cast<size_t>(n) * 2, cudaMemcpyDeviceToDevice,
                                      g4::cuda::stream()));
      },
      10);
  return 2.0 * static_cast<double>(n) * 2 / (ms * 1e-3) * 1e-9;
}

// A bf16 GPU tensor of random values: a 64 MB block drawn once on the CPU, tiled from an offset
// that depends on `seed` (drawing gigabytes on the CPU would take minutes).
inline Tensor random_gpu(const Shape& shape, uint64_t seed) {
  static const Tensor block = randn({int64_t{1} << 25}, 1, DType::F32, 1.0).to(DType::BF16).to(Device::CUDA);
  Tensor t = Tensor::empty(shape, DType::BF16, Device::CUDA);
  const int64_t n = t.numel(), b = block.numel(), shift = static_cast<int64_t>(seed * 7919) % b;
  auto* dst = static_cast<char*>(t.raw());
  const auto* src = static_cast<const char*>(block.raw());
  for (int64_t at = 0; at < n;) {
    const int64_t from = (at + shift) % b, len = std::min(n - at, b - from);
    G4_CUDA_CHECK(cudaMemcpyAsync(dst + at * 2, src + from * 2, static_cast<size_t>(len) * 2, cudaMemcpyDeviceToDevice,
                                  g4::cuda::stream()));
    at += len;
  }
  return t;
}

}  // namespace g4::bench

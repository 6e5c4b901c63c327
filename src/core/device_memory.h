// GPU memory as the rest of the library sees it: allocation through a caching allocator, copies
// between host and device, and memory statistics. Declared without CUDA headers so that core code
// (Tensor) can use it; the implementation lives in core/cuda/ and exists only in CUDA builds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace g4 {

// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();
// The current GPU's name as the runtime reports it ("NVIDIA H200"); empty without a GPU.
std::string cuda_device_name();
// How many GPUs this process sees (0 without the CUDA backend or a GPU).
int cuda_device_count();
// Makes GPU `device` this process's GPU before any CUDA work (cuda::select_device in
// core/cuda/runtime.h); an error without the CUDA backend.
void select_cuda_device(int device);

// Bytes held by live CUDA tensors (current, peak since the last reset) and bytes the caching
// allocator holds from the driver (reserved, which includes freed blocks kept for reuse).
struct DeviceMemoryStats {
  int64_t current = 0;
  int64_t peak = 0;
  int64_t reserved = 0;
};
DeviceMemoryStats device_memory_stats();
void reset_device_memory_peak();
// Bytes new tensors can still get: what the driver has free plus the allocator's cached free
// blocks (0 without a GPU). For sizing caches that fill the memory left (the KV pages).
int64_t device_free_bytes();
// Returns the allocator's cached free blocks to the driver (for another process on the same GPU).
void release_cached_device_memory();
// Waits for all queued GPU work (the host blocks). Used at step boundaries and in benchmarks.
void device_synchronize();

// Calls side() then main(), two pieces of work that do not read each other's results, so that the
// GPU may run them at the same time: what side() queues goes on a second stream that starts after
// everything queued before, and the compute stream waits for it once main() is queued. GPU memory
// freed meanwhile is kept from reuse until then (either stream may still be reading it). A CUDA
// graph captures the two as parallel branches. Without the CUDA backend, simply side(); main().
// An exception from either still joins the streams before it propagates.
void run_side_by_side(const std::function<void()>& side, const std::function<void()>& main);

namespace detail {
std::shared_ptr<void> device_alloc(size_t bytes);
void device_zero(void* p, size_t bytes);
// Copies `bytes` between any two of host and device memory (queued on the compute stream; a copy
// to the host waits for it).
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// t[i] = bf16/f32/f64(float(std * philox_normal(seed, stream, i))) (see core/random.h).
void device_fill_philox_normal(Tensor& t, uint64_t seed, uint64_t stream, double std);
// dst = src converted elementwise (dtypes as Tensor::to allows); both on the GPU, same shape.
void device_convert(const Tensor& src, Tensor& dst);
}  // namespace detail

}  // namespace g4

#include "core/cuda/arrivals.h"

#include <mutex>

#include "core/cuda/runtime.h"
#include "core/error.h"

namespace g4::cuda {

namespace {
// Far more than one decode step's launches take (a few per layer, each at most a few hundred).
constexpr int kRingCounters = 1 << 16;
}  // namespace

unsigned* arrival_counters(int n) {
  G4_CHECK(n >= 0 && n <= kRingCounters, "arrival_counters: ", n, " counters asked for, at most ", kRingCounters);
  static unsigned* ring = [] {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    G4_CUDA_CHECK(cudaStreamIsCapturing(stream(), &capturing));
    G4_CHECK(capturing == cudaStreamCaptureStatusNone,
             "arrival_counters: first asked for inside a CUDA graph capture; run the captured work once before");
    unsigned* r = nullptr;
    G4_CUDA_CHECK(cudaMalloc(&r, kRingCounters * sizeof(unsigned)));
    // On the compute stream, ahead of every kernel that counts (the side stream forks from it later).
    G4_CUDA_CHECK(cudaMemsetAsync(r, 0, kRingCounters * sizeof(unsigned), stream()));
    return r;
  }();
  static std::mutex mutex;
  static int next = 0;
  std::lock_guard<std::mutex> lock(mutex);
  if (next + n > kRingCounters) next = 0;
  unsigned* range = ring + next;
  next += n;
  return range;
}

}  // namespace g4::cuda

// ops::prefetch_to_l2 on the GPU: each thread asks L2 for one chunk of one range with a bulk
// prefetch (cp.async.bulk.prefetch.L2, which returns at once), so a few hundred threads on many
// multiprocessors keep the memory busy while the kernels beside them wait on latency.
#include "ops/cuda/prefetch.h"

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "core/error.h"

namespace g4::ops::cuda {

namespace {

constexpr int64_t kChunkBytes = 16 << 10;  // bytes one thread asks for
constexpr int kThreads = 64;

// The ranges as kernel parameters (no copy to the device): range r covers chunks
// [first_chunk[r], first_chunk[r + 1]).
struct Ranges {
  const char* p[kMaxPrefetchRanges] = {};
  int64_t bytes[kMaxPrefetchRanges] = {};
  int64_t first_chunk[kMaxPrefetchRanges + 1] = {};
  int count = 0;
};

__global__ void __launch_bounds__(kThreads) prefetch_kernel(const Ranges R) {
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int r = 0; r < R.count; ++r) {
    if (chunk < R.first_chunk[r] || chunk >= R.first_chunk[r + 1]) continue;
    const int64_t offset = (chunk - R.first_chunk[r]) * kChunkBytes;
    const int64_t bytes = R.bytes[r] - offset < kChunkBytes ? R.bytes[r] - offset : kChunkBytes;
    g4::cuda::prefetch_l2(R.p[r] + offset, static_cast<unsigned>(bytes));
  }
}

}  // namespace

void prefetch_l2(const std::vector<ByteRange>& ranges) {
  G4_CHECK(ranges.size() <= static_cast<size_t>(kMaxPrefetchRanges), "prefetch_l2: ", ranges.size(),
           " ranges (at most ", kMaxPrefetchRanges, ")");
  Ranges R;
  int64_t chunks = 0;
  for (const ByteRange& range : ranges) {
    // Inwards to 16-byte boundaries: the start up, the end down.
    const auto begin = (reinterpret_cast<uintptr_t>(range.p) + 15) & ~uintptr_t{15};
    const auto end = (reinterpret_cast<uintptr_t>(range.p) + static_cast<uintptr_t>(range.bytes)) & ~uintptr_t{15};
    if (range.bytes <= 0 || end <= begin) continue;
    R.p[R.count] = reinterpret_cast<const char*>(begin);
    R.bytes[R.count] = static_cast<int64_t>(end - begin);
    R.first_chunk[R.count] = chunks;
    chunks += (R.bytes[R.count] + kChunkBytes - 1) / kChunkBytes;
    ++R.count;
  }
  R.first_chunk[R.count] = chunks;
  if (chunks == 0) return;
  const auto blocks = static_cast<unsigned>((chunks + kThreads - 1) / kThreads);
  prefetch_kernel<<<blocks, kThreads, 0, g4::cuda::stream()>>>(R);
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace g4::ops::cuda

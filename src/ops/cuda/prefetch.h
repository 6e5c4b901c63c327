// The GPU side of ops::prefetch_to_l2 (ops/prefetch.h).
#pragma once
#include <cstdint>
#include <vector>

namespace g4::ops::cuda {

// [p, p + bytes) of device memory.
struct ByteRange {
  const void* p = nullptr;
  int64_t bytes = 0;
};

// One kernel that asks L2 for every range (each trimmed inwards to 16-byte boundaries, as the bulk
// prefetch needs), in chunks spread over the GPU's multiprocessors; queued on g4::cuda::stream().
// At most kMaxPrefetchRanges ranges; none, or only empty ones, launch nothing.
constexpr int kMaxPrefetchRanges = 8;
void prefetch_l2(const std::vector<ByteRange>& ranges);

}  // namespace g4::ops::cuda

#include "ops/prefetch.h"

#include <algorithm>

#ifdef G4_WITH_CUDA
#include "ops/cuda/prefetch.h"
#endif

namespace g4::ops {

void prefetch_to_l2(const std::vector<Tensor>& tensors, int64_t max_bytes) {
#ifdef G4_WITH_CUDA
  std::vector<cuda::ByteRange> ranges;
  int64_t left = max_bytes;
  for (const Tensor& t : tensors) {
    if (left <= 0) break;
    if (!t.defined() || t.device() != Device::CUDA || t.numel() == 0) continue;
    const int64_t bytes = std::min(left, static_cast<int64_t>(t.nbytes()));
    ranges.push_back({t.raw(), bytes});
    left -= bytes;
  }
  cuda::prefetch_l2(ranges);
#else
  (void)tensors;
  (void)max_bytes;
#endif
}

}  // namespace g4::ops

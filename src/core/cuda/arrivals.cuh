// The device side of arrival counters (core/cuda/arrivals.h).
#pragma once

namespace g4::cuda {

// Called by every thread of every CTA of a group once the CTA's output is written: true in the
// CTA whose arrival completes the group of `group_size` CTAs, which may then read every CTA's
// output (with loads that bypass L1: ld.global.cg, __ldcg). That CTA resets the counter to 0.
// Each thread's fence orders its own stores before the count; the last CTA's fence orders the
// count before its reads.
__device__ __forceinline__ bool arrive_last(unsigned* counter, unsigned group_size) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    last = atomicAdd(counter, 1u) == group_size - 1;
    if (last) *counter = 0;  // every CTA of the group has arrived: no one adds to it again
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace g4::cuda

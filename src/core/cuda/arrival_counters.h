// Arrival counters: zeroed device counters for kernels whose last CTA of a group to finish does the
// group's final step (a split reduction merged without a second kernel). The CTAs of a group count
// themselves with an atomic add after a memory fence; the one that sees the count complete merges
// the group's results and sets its counter back to zero, so every launch finds them zero. Each
// stream (the compute stream, run_side_by_side's side stream) has its own table, as kernels on one
// stream never overlap. Only CUDA code includes this header.
#pragma once
#include <cstddef>

namespace g4::cuda {

constexpr size_t arrival_counter_capacity() { return size_t{1} << 16; }
// The current stream's table (made with the runtime, never during a graph capture); `count`, at
// most arrival_counter_capacity(), is checked.
unsigned* arrival_counters(size_t count);

}  // namespace g4::cuda

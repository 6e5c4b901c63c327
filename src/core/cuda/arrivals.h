// Arrival counters: for a kernel whose last CTA to finish does the work that needs every CTA's
// output (the norms that read a whole GEMV output row, ops/cuda/gemv.cu), instead of a second kernel. Each CTA adds one to its group's counter once its output is written;
// the CTA that brings the count to the group's size does the rest and puts the counter back to 0
// (core/cuda/arrivals.cuh). So every counter is 0 between kernels, and a CUDA graph replays them
// as captured.
#pragma once

namespace g4::cuda {

// `n` zeroed counters on the runtime's GPU for one launch, taken in turn from a ring allocated
// (and zeroed) at the first call, which must not be inside a CUDA graph capture (the engine runs a
// step once before capturing it). A range comes round again only after the whole ring has been
// handed out, so kernels that may run at the same time (the side stream's) get different counters.
unsigned* arrival_counters(int n);

}  // namespace g4::cuda

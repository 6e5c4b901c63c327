// Where the GPU's time goes: every kernel, copy and memset the GPU runs between profile_start()
// and profile_stop(), from CUPTI's activity trace (the lent GPU machines cannot run Nsight
// Systems, but CUPTI's trace needs no performance-counter permission). Used by `g4 bench train
// --profile`. Declared without CUDA headers; builds without CUDA raise an error when called.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace g4 {

struct KernelTime {
  std::string name;  // demangled kernel name, or "[memcpy HtoD]", "[memset]", ...
  int64_t count = 0;
  double total_ms = 0;
};

struct KernelProfile {
  double window_ms = 0;  // from profile_start() to profile_stop()
  double busy_ms = 0;    // time at least one kernel or copy ran (the union of their intervals)
  std::vector<KernelTime> kernels;  // by total time, largest first
};

// Starts recording (an error if a profile is already running).
void profile_start();
// Waits for the GPU, stops recording and returns the totals.
KernelProfile profile_stop();

}  // namespace g4

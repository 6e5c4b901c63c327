// Builds without the CUDA backend have nothing to profile (core/cuda/kernel_profile.cpp is the
// real one).
#include "core/kernel_profile.h"

#include "core/error.h"

#ifndef G4_WITH_CUDA
namespace g4 {
void profile_start() { G4_CHECK(false, "kernel profiling needs the CUDA backend, which this build lacks"); }
KernelProfile profile_stop() {
  G4_CHECK(false, "kernel profiling needs the CUDA backend, which this build lacks");
  return {};
}
}  // namespace g4
#endif

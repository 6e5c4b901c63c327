// Builds without the CUDA backend have no GPU kernels and so nothing to check.
#include "ops/device_checks.h"

#ifdef G4_WITH_CUDA
#include "ops/cuda/index_errors.h"
#endif

namespace g4::ops {

void check_device_index_errors() {
#ifdef G4_WITH_CUDA
  cuda::raise_index_errors(/*wait=*/true);
#endif
}

}  // namespace g4::ops

// NCCL between GPUs, one process per GPU: the communicator for CUDA tensors. Built only with the
// CUDA backend when NCCL is found (G4_WITH_NCCL); this header needs no CUDA headers.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace g4::parallel {

// Collective over `bootstrap` (the MPI world, or a SingleCommunicator for one GPU): rank 0 creates
// the NCCL id and broadcasts it, then every rank joins with its own GPU `cuda_device`. The result
// has the bootstrap's ranks, moves CUDA tensors (wrapping device pointers) and orders its work on
// its own CUDA stream. NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE is set to 0 when unset,
// and any other value is refused.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int cuda_device);

}  // namespace g4::parallel

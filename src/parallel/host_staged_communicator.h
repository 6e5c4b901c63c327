// CUDA tensors carried by a CPU communicator (MPI) through host buffers: the communicator for GPU
// ranks that share one GPU, where NCCL refuses to run (it needs a GPU per rank). Every collective
// copies its inputs to the host, runs the inner communicator's collective there and copies the
// results back, so 2-4 ranks on one GPU run the very code paths that NCCL ranks run on many.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace g4::parallel {

// `inner` moves CPU tensors (MPI, or single for one rank); the result has its ranks and moves CUDA
// tensors. Splits wrap the inner communicator's splits.
std::unique_ptr<Communicator> make_host_staged_communicator(std::unique_ptr<Communicator> inner);

}  // namespace g4::parallel

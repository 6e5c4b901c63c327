// The world communicator of a GPU run. Each rank first takes its GPU (local rank modulo the GPUs
// it sees), then the ranks join over NCCL when every rank has a GPU of its own, or over MPI with
// host-staged CUDA tensors when some share one (several ranks on one GPU, as in the tests). The
// code above the communicator is the same either way: it moves CUDA tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/world.h"

namespace g4::parallel {

// Where one rank computes: its host (a hash of the host name) and the GPU it took there.
struct GpuPlacement {
  int64_t host = 0;
  int64_t device = 0;
};

enum class GpuBackend { Nccl, HostStaged };
const char* gpu_backend_name(GpuBackend b);  // "nccl", "mpi (host-staged)"

// The GPU rank `launch` takes among `device_count` visible ones: local_rank % device_count.
int gpu_for_rank(const LaunchInfo& launch, int device_count);

// The communicator for ranks placed as `placements` (one per rank, in rank order). `forced` is
// G4_COMMUNICATOR's value ("" when unset): "nccl" or "mpi" picks one, anything else is an error.
// Unforced: NCCL when several ranks all have a GPU of their own and NCCL is built, else
// host-staged MPI (one rank included: its collectives are trivial). NCCL forced onto ranks that
// share a GPU, or without NCCL in the build, is an error naming the ranks or the build.
GpuBackend choose_gpu_backend(const std::vector<GpuPlacement>& placements, const std::string& forced,
                              bool nccl_built);

// For a run with train.device cuda: selects this rank's GPU (before any CUDA work), gathers every
// rank's placement over the launched world (MPI, or a SingleCommunicator for one process), and
// returns that world as NCCL or host-staged communicator (choose_gpu_backend). Rank 0 says which
// on stderr. Collective over the launched processes.
std::unique_ptr<Communicator> make_gpu_world_communicator();

// How many ranks of this run compute on this rank's GPU, itself included, as placed by
// make_gpu_world_communicator (1 before it ran, or in a CPU run). Ranks that share a GPU share its
// memory too: what a rank sizes from the free memory (the generation engine's KV pages) takes
// this share of its fraction, since the ranks size theirs at the same moment.
int ranks_on_this_gpu();

}  // namespace g4::parallel

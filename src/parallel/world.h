// How this process was started (alone, or as one rank of mpirun / srun), and the communicator
// that joins it to the other processes of the job.
#pragma once
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace g4::parallel {

struct LaunchInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // rank among the processes of this node (which GPU a rank takes)
  std::string launcher = "none";  // which variables said so, e.g. "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE"
};

// Reads the rank variables launchers set, first found wins: Open MPI's mpirun
// (OMPI_COMM_WORLD_RANK/SIZE, local rank OMPI_COMM_WORLD_LOCAL_RANK), PMI launchers such as
// MPICH's or srun --mpi=pmi2 (PMI_RANK/SIZE, MPI_LOCALRANKID), Slurm's srun
// (SLURM_PROCID/SLURM_NTASKS, SLURM_LOCALID), then torchrun-style RANK/WORLD_SIZE (LOCAL_RANK),
// which `g4 launch` also sets. A missing local rank is 0. `env` looks a variable up (std::getenv by
// default); malformed values are errors naming the variable.
using EnvLookup = std::function<const char*(const char*)>;
LaunchInfo detect_launch(const EnvLookup& env = [](const char* name) { return std::getenv(name); });

// MPI when the process is one of several launched together, else a SingleCommunicator. Checks that
// MPI agrees with the launcher's variables (a mismatch means MPI was not started by that launcher).
std::unique_ptr<Communicator> make_world_communicator();

// After a fatal error on this rank: when MPI runs this process as one of several ranks, ends the
// whole job (MPI_Abort) so that no peer waits for this rank for ever, and does not return;
// otherwise returns (a lone process just exits with its error).
void abort_job_if_ranks(int exit_code);

}  // namespace g4::parallel

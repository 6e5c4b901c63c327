// MPI between processes (mpirun, srun): carries CPU tensors, so every parallel path runs and is
// tested on CPUs. MPI is initialised by the first communicator and finalised at process exit.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace g4::parallel {

// A communicator over all processes of the MPI job (a duplicate of MPI_COMM_WORLD, so g4's
// messages never mix with anyone else's). Initialises MPI when nobody has yet.
std::unique_ptr<Communicator> make_mpi_world_communicator();
// MPI_Abort of the whole job when MPI is running with several ranks (see world.h).
void abort_mpi_job_if_ranks(int exit_code);

}  // namespace g4::parallel

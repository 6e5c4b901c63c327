#include "parallel/world.h"

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "parallel/mpi_communicator.h"
#include "parallel/single_communicator.h"

namespace g4::parallel {

namespace {

int parse_int(const char* name, const char* value) {
  int v = 0;
  const char* end = value + std::strlen(value);
  const auto [ptr, ec] = std::from_chars(value, end, v);
  G4_CHECK(ec == std::errc() && ptr == end && ptr != value, "launch: ", name, "='", value, "' is not a whole number");
  return v;
}

}  // namespace

LaunchInfo detect_launch(const EnvLookup& env) {
  static constexpr const char* kVariables[][3] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
      {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
      {"RANK", "WORLD_SIZE", "LOCAL_RANK"},
  };
  for (const auto& [rank_var, size_var, local_var] : kVariables) {
    const char* rank = env(rank_var);
    const char* size = env(size_var);
    if (!rank || !size) continue;
    LaunchInfo info;
    info.rank = parse_int(rank_var, rank);
    info.size = parse_int(size_var, size);
    info.launcher = std::string(rank_var) + "/" + size_var;
    G4_CHECK(info.size >= 1, "launch: ", size_var, "=", info.size, " is not a number of processes");
    G4_CHECK(info.rank >= 0 && info.rank < info.size, "launch: ", rank_var, "=", info.rank, " is not a rank of ",
             size_var, "=", info.size);
    if (const char* local = env(local_var)) {
      info.local_rank = parse_int(local_var, local);
      G4_CHECK(info.local_rank >= 0 && info.local_rank < info.size, "launch: ", local_var, "=", info.local_rank,
               " is not a local rank of ", size_var, "=", info.size);
    }
    return info;
  }
  return LaunchInfo{};
}

std::unique_ptr<Communicator> make_world_communicator() {
  const LaunchInfo launch = detect_launch();
  if (launch.size == 1) return std::make_unique<SingleCommunicator>();
  std::unique_ptr<Communicator> world = make_mpi_world_communicator();
  G4_CHECK(world->size() == launch.size && world->rank() == launch.rank, "launch: ", launch.launcher, " say rank ",
           launch.rank, " of ", launch.size, " but MPI started rank ", world->rank(), " of ", world->size(),
           "; start every rank with mpirun, g4 launch or srun (under Slurm, an Open MPI built with Slurm/PMIx"
           " support: srun --mpi=pmix)");
  return world;
}

void abort_job_if_ranks(int exit_code) { abort_mpi_job_if_ranks(exit_code); }

}  // namespace g4::parallel

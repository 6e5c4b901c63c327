#include "parallel/gpu_world.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <iostream>

#include "core/device_memory.h"
#include "parallel/host_staged_communicator.h"
#ifdef G4_WITH_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace g4::parallel {

namespace {

#ifdef G4_WITH_NCCL
constexpr bool kNcclBuilt = true;
#else
constexpr bool kNcclBuilt = false;
#endif

// FNV-1a of the host name: equal on every rank of one node, whatever the binary's std::hash does.
int64_t host_hash() {
  char name[HOST_NAME_MAX + 1] = {};
  G4_CHECK(::gethostname(name, sizeof(name) - 1) == 0, "gethostname failed: cannot tell which ranks share a node");
  uint64_t h = 1469598103934665603ULL;
  for (const char* c = name; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ULL;
  return static_cast<int64_t>(h >> 1);  // non-negative, so it prints plainly in messages
}

// The first two ranks placed on the same GPU of the same host, or {-1, -1}.
std::pair<int, int> first_shared_gpu(const std::vector<GpuPlacement>& placements) {
  for (size_t a = 0; a < placements.size(); ++a)
    for (size_t b = a + 1; b < placements.size(); ++b)
      if (placements[a].host == placements[b].host && placements[a].device == placements[b].device)
        return {static_cast<int>(a), static_cast<int>(b)};
  return {-1, -1};
}

int ranks_on_my_gpu = 1;  // set once per process by make_gpu_world_communicator

}  // namespace

const char* gpu_backend_name(GpuBackend b) { return b == GpuBackend::Nccl ? "nccl" : "mpi (host-staged)"; }

int gpu_for_rank(const LaunchInfo& launch, int device_count) {
  G4_CHECK(device_count > 0, "rank ", launch.rank, " sees no CUDA GPU (train.device is cuda)");
  return launch.local_rank % device_count;
}

GpuBackend choose_gpu_backend(const std::vector<GpuPlacement>& placements, const std::string& forced,
                              bool nccl_built) {
  G4_CHECK(!placements.empty(), "choose_gpu_backend: no ranks");
  G4_CHECK(forced.empty() || forced == "nccl" || forced == "mpi", "G4_COMMUNICATOR='", forced,
           "' is not a communicator: set nccl (one GPU per rank) or mpi (host-staged, ranks may share GPUs), or "
           "unset it to choose by placement");
  const auto [a, b] = first_shared_gpu(placements);
  if (forced == "mpi") return GpuBackend::HostStaged;
  if (forced == "nccl") {
    G4_CHECK(nccl_built, "G4_COMMUNICATOR=nccl, but this g4 was built without NCCL (nccl.h and libnccl were not "
             "found at build time); set G4_COMMUNICATOR=mpi or unset it");
    G4_CHECK(a < 0, "G4_COMMUNICATOR=nccl, but ranks ", a, " and ", b, " share GPU ", placements[size_t(a)].device,
             " of one host: NCCL needs a GPU per rank. Launch at most as many ranks per node as it has GPUs, or set "
             "G4_COMMUNICATOR=mpi (host-staged) to share them");
    return GpuBackend::Nccl;
  }
  return placements.size() > 1 && a < 0 && nccl_built ? GpuBackend::Nccl : GpuBackend::HostStaged;
}

std::unique_ptr<Communicator> make_gpu_world_communicator() {
  const LaunchInfo launch = detect_launch();
  const int device = gpu_for_rank(launch, cuda_device_count());
  select_cuda_device(device);
  // The launched world (MPI for several processes) bootstraps either backend.
  std::unique_ptr<Communicator> bootstrap = make_world_communicator();
  Tensor mine = Tensor::from_vector<int64_t>({host_hash(), device}, {1, 2});
  Tensor all = Tensor::empty({bootstrap->size(), 2}, DType::I64);
  bootstrap->all_gather(mine, all);
  std::vector<GpuPlacement> placements(static_cast<size_t>(bootstrap->size()));
  for (size_t r = 0; r < placements.size(); ++r)
    placements[r] = {all.data<int64_t>()[2 * r], all.data<int64_t>()[2 * r + 1]};
  const GpuPlacement& me = placements[static_cast<size_t>(bootstrap->rank())];
  ranks_on_my_gpu = 0;
  for (const GpuPlacement& p : placements) ranks_on_my_gpu += p.host == me.host && p.device == me.device;
  const char* forced_env = std::getenv("G4_COMMUNICATOR");
  const GpuBackend backend = choose_gpu_backend(placements, forced_env ? forced_env : "", kNcclBuilt);
  if (bootstrap->rank() == 0) {
    const bool shared = first_shared_gpu(placements).first >= 0;
    std::cerr << "communicator: " << gpu_backend_name(backend) << " over " << placements.size() << " rank"
              << (placements.size() == 1 ? "" : "s") << (shared ? " (some share a GPU)" : " (a GPU each)")
              << (forced_env ? " [G4_COMMUNICATOR]" : "") << "\n";
  }
  std::unique_ptr<Communicator> world;
#ifdef G4_WITH_NCCL
  if (backend == GpuBackend::Nccl) world = make_nccl_communicator(*bootstrap, device);
#endif
  if (!world) world = make_host_staged_communicator(std::move(bootstrap));
  return world;
}

int ranks_on_this_gpu() { return ranks_on_my_gpu; }

}  // namespace g4::parallel

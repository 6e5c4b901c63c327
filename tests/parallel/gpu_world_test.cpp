// How GPU ranks pick their GPU and their communicator (parallel/gpu_world.h): pure decisions over
// the ranks' placements, so they are checked here without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parallel/gpu_world.h"
#include "support/error_message.h"

namespace g4::parallel {
namespace {

LaunchInfo rank_on_node(int rank, int local_rank, int size) {
  LaunchInfo l;
  l.rank = rank;
  l.local_rank = local_rank;
  l.size = size;
  return l;
}

TEST(GpuWorld, RankTakesLocalRankModuloTheGpus) {
  EXPECT_EQ(gpu_for_rank(rank_on_node(0, 0, 4), 8), 0);
  EXPECT_EQ(gpu_for_rank(rank_on_node(5, 3, 8), 4), 3);
  EXPECT_EQ(gpu_for_rank(rank_on_node(6, 2, 8), 2), 0);  // more ranks than GPUs on a node: they share
  EXPECT_EQ(gpu_for_rank(rank_on_node(3, 3, 4), 1), 0);  // one GPU: every rank on it
  const std::string e = test::error_of([] { gpu_for_rank(rank_on_node(2, 2, 4), 0); });
  EXPECT_NE(e.find("rank 2 sees no CUDA GPU"), std::string::npos) << e;
}

TEST(GpuWorld, NcclWhenEveryRankHasItsOwnGpu) {
  // Two nodes, two GPUs each: device ids repeat across hosts, which is no sharing.
  const std::vector<GpuPlacement> own = {{11, 0}, {11, 1}, {22, 0}, {22, 1}};
  EXPECT_EQ(choose_gpu_backend(own, "", true), GpuBackend::Nccl);
  EXPECT_EQ(choose_gpu_backend(own, "nccl", true), GpuBackend::Nccl);
  EXPECT_EQ(choose_gpu_backend(own, "mpi", true), GpuBackend::HostStaged);
  // Without NCCL in the build the ranks still run, host-staged; forcing NCCL then is an error.
  EXPECT_EQ(choose_gpu_backend(own, "", false), GpuBackend::HostStaged);
  const std::string e = test::error_of([&] { choose_gpu_backend(own, "nccl", false); });
  EXPECT_NE(e.find("G4_COMMUNICATOR=nccl, but this g4 was built without NCCL"), std::string::npos) << e;
}

TEST(GpuWorld, HostStagedWhenRanksShareAGpu) {
  const std::vector<GpuPlacement> shared = {{11, 0}, {11, 1}, {11, 0}, {11, 1}};
  EXPECT_EQ(choose_gpu_backend(shared, "", true), GpuBackend::HostStaged);
  EXPECT_EQ(choose_gpu_backend(shared, "mpi", true), GpuBackend::HostStaged);
  const std::string e = test::error_of([&] { choose_gpu_backend(shared, "nccl", true); });
  EXPECT_NE(e.find("G4_COMMUNICATOR=nccl, but ranks 0 and 2 share GPU 0 of one host"), std::string::npos) << e;
  EXPECT_NE(e.find("G4_COMMUNICATOR=mpi"), std::string::npos) << e;
}

TEST(GpuWorld, OneRankIsHostStagedUnlessNcclIsAskedFor) {
  const std::vector<GpuPlacement> one = {{11, 3}};
  EXPECT_EQ(choose_gpu_backend(one, "", true), GpuBackend::HostStaged);
  EXPECT_EQ(choose_gpu_backend(one, "nccl", true), GpuBackend::Nccl);
  EXPECT_STREQ(gpu_backend_name(GpuBackend::Nccl), "nccl");
  EXPECT_STREQ(gpu_backend_name(GpuBackend::HostStaged), "mpi (host-staged)");
}

TEST(GpuWorld, UnknownCommunicatorIsAClearError) {
  const std::string e = test::error_of([] { choose_gpu_backend({{1, 0}, {1, 1}}, "gloo", true); });
  EXPECT_NE(e.find("G4_COMMUNICATOR='gloo' is not a communicator"), std::string::npos) << e;
}

}  // namespace
}  // namespace g4::parallel

// The one-process communicator: every collective is the identity or a copy, and the argument
// checks every backend shares give errors naming what is wrong.
#include "support/error_message.h"
#include "parallel/single_communicator.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "parallel_test_util.h"

namespace g4::parallel {
namespace {

using testing::kAllDTypes;
using testing::rank_values;
using testing::same_values;

using ::g4::test::error_of;

TEST(SingleCommunicator, CollectivesAreIdentityOrCopies) {
  SingleCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = rank_values(0, {4, 3}, dtype, 1);

    Tensor reduced = x.clone();
    comm.all_reduce(reduced, ReduceOp::Sum);
    EXPECT_TRUE(same_values(reduced, x));
    comm.all_reduce(reduced, ReduceOp::Max);
    EXPECT_TRUE(same_values(reduced, x));

    const Tensor gathered = comm.all_gather(x);
    EXPECT_FALSE(gathered.same_storage(x));
    EXPECT_TRUE(same_values(gathered, x));
    EXPECT_TRUE(same_values(comm.reduce_scatter(x), x));
    // The asynchronous forms are done when they return.
    Tensor async_gathered = Tensor::empty({4, 3}, dtype), async_scattered = Tensor::empty({4, 3}, dtype);
    CollectiveHandle g = comm.all_gather_async(x, async_gathered);
    EXPECT_TRUE(same_values(async_gathered, x));
    comm.reduce_scatter_async(x, async_scattered)->wait();
    g->wait();
    EXPECT_TRUE(same_values(async_scattered, x));

    std::vector<int64_t> recv_counts;
    EXPECT_TRUE(same_values(comm.all_to_all(x, {4}, &recv_counts), x));
    EXPECT_EQ(recv_counts, std::vector<int64_t>{4});

    Tensor b = x.clone();
    comm.broadcast(b, 0);
    EXPECT_TRUE(same_values(b, x));
  }
  EXPECT_EQ(comm.exchange_counts({7}), std::vector<int64_t>{7});
  comm.barrier();
  comm.synchronize();
  const auto sub = comm.split(3, -1);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_STREQ(sub->backend(), "single");
}

TEST(SingleCommunicator, ScalarsAndEmptyTensors) {
  SingleCommunicator comm;
  Tensor s = Tensor::scalar(2.5);
  comm.all_reduce(s);
  comm.broadcast(s, 0);
  EXPECT_EQ(s.item(), 2.5);
  const Tensor none = Tensor::zeros({0, 5}, DType::F32);
  EXPECT_EQ(comm.all_gather(none).shape(), (Shape{0, 5}));
  EXPECT_EQ(comm.all_to_all(none, {0}).shape(), (Shape{0, 5}));
}

TEST(CommunicatorErrors, UnsupportedOrMisplacedTensors) {
  SingleCommunicator comm;
  Tensor half = Tensor::zeros({2}, DType::F16);
  EXPECT_NE(error_of([&] { comm.all_reduce(half); }).find("single all_reduce: tensor is f16[2]; communicators move"),
            std::string::npos);
  Tensor flags = Tensor::zeros({2}, DType::Bool);
  EXPECT_NE(error_of([&] { comm.broadcast(flags, 0); }).find("bool[2]"), std::string::npos);
  Tensor undefined;
  EXPECT_NE(error_of([&] { comm.all_reduce(undefined); }).find("undefined"), std::string::npos);
  // A tensor that claims to live on the GPU is refused before anything touches its memory.
  Tensor host = Tensor::zeros({4}, DType::F32);
  Tensor on_gpu = Tensor::wrap(std::shared_ptr<void>(), host.raw(), {4}, DType::F32, Device::CUDA);
  // describe() marks the device: f32[4]@cuda.
  EXPECT_NE(error_of([&] { comm.all_reduce(on_gpu); })
                .find("single all_reduce: tensor f32[4]@cuda is a CUDA tensor; the single communicator moves "
                      "CPU tensors"),
            std::string::npos);
}

TEST(CommunicatorErrors, ShapesAndCounts) {
  SingleCommunicator comm;
  const Tensor x = Tensor::zeros({4, 3}, DType::F32);
  Tensor wrong = Tensor::zeros({4, 2}, DType::F32);
  EXPECT_NE(error_of([&] {
              comm.all_gather(x, wrong);
            }).find("single all_gather: out is f32[4, 2], expected f32[4, 3] (1 ranks x in f32[4, 3])"),
            std::string::npos);
  Tensor wrong_type = Tensor::zeros({4, 3}, DType::F64);
  EXPECT_NE(error_of([&] { comm.reduce_scatter(x, wrong_type); }).find("expected f32[4, 3]"), std::string::npos);
  const Tensor scalar = Tensor::scalar(1.0);
  EXPECT_NE(error_of([&] { comm.all_gather(scalar); }).find("has no rows"), std::string::npos);

  Tensor out = Tensor::zeros({4, 3}, DType::F32);
  EXPECT_NE(error_of([&] {
              comm.all_to_all(x, {2, 2}, out, {4});
            }).find("send_counts has 2 entries, expected one per rank (1)"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { comm.all_to_all(x, {3}, out, {4}); }).find("send_counts add up to 3 rows, but the tensor has 4"),
      std::string::npos);
  EXPECT_NE(error_of([&] { comm.all_to_all(x, {4}, out, {5}); }).find("recv_counts add up to 5"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.exchange_counts({-1}); }).find("send_counts[0] = -1 is negative"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.all_to_all(x, {4}, wrong, {4}); }).find("differ beyond dim 0"), std::string::npos);
  // Output aliasing the input would be overwritten while it is read.
  Tensor both = Tensor::zeros({8, 3}, DType::F32);
  Tensor first = both.slice0(0, 4), overlapping = both.slice0(2, 4);
  EXPECT_NE(error_of([&] { comm.all_to_all(first, {4}, overlapping, {4}); }).find("overlap"), std::string::npos);
}

TEST(CommunicatorErrors, RanksAndColors) {
  SingleCommunicator comm;
  Tensor t = Tensor::zeros({2}, DType::F32);
  EXPECT_NE(error_of([&] { comm.broadcast(t, 1); }).find("root 1 is not a rank of this 1-rank communicator"),
            std::string::npos);
  EXPECT_NE(error_of([&] { comm.send(t, 0); }).find("single send: destination 0 is this rank itself"),
            std::string::npos);
  EXPECT_NE(error_of([&] { comm.recv(t, 2); }).find("source 2 is not a rank"), std::string::npos);
  Tensor u = Tensor::zeros({2}, DType::F32);
  EXPECT_NE(error_of([&] { comm.send_recv(t, -1, u, 0); }).find("destination -1 is not a rank"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.split(-1, 0); }).find("color -1 is negative"), std::string::npos);
}

TEST(LaunchDetection, ReadsTheLaunchersVariables) {
  using Env = std::map<std::string, std::string>;
  auto detect = [](const Env& env) {
    return detect_launch([&](const char* name) -> const char* {
      const auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  LaunchInfo alone = detect({});
  EXPECT_EQ(alone.size, 1);
  EXPECT_EQ(alone.rank, 0);

  LaunchInfo ompi = detect(
      {{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(ompi.rank, 3);
  EXPECT_EQ(ompi.size, 4);
  EXPECT_EQ(ompi.launcher, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE");

  LaunchInfo pmi = detect({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
  EXPECT_EQ(pmi.rank, 1);
  EXPECT_EQ(pmi.size, 2);

  LaunchInfo slurm = detect({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}});
  EXPECT_EQ(slurm.rank, 5);
  EXPECT_EQ(slurm.size, 8);
  EXPECT_EQ(slurm.launcher, "SLURM_PROCID/SLURM_NTASKS");
  EXPECT_EQ(slurm.local_rank, 0);
  EXPECT_EQ(detect({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}}).local_rank, 1);
  EXPECT_EQ(detect({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}})
                .local_rank,
            3);

  // torchrun-style variables (g4 launch sets them too); a launcher's own variables come first.
  LaunchInfo torchrun = detect({{"RANK", "2"}, {"WORLD_SIZE", "3"}, {"LOCAL_RANK", "2"}});
  EXPECT_EQ(torchrun.rank, 2);
  EXPECT_EQ(torchrun.size, 3);
  EXPECT_EQ(torchrun.local_rank, 2);
  EXPECT_EQ(torchrun.launcher, "RANK/WORLD_SIZE");
  EXPECT_EQ(detect({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}}).rank, 1);
  EXPECT_NE(error_of([&] {
              detect({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "x"}});
            }).find("LOCAL_RANK='x' is not a whole number"),
            std::string::npos);

  // A rank without a size (a Slurm batch script has SLURM_PROCID alone) is not a launch.
  EXPECT_EQ(detect({{"SLURM_PROCID", "0"}}).size, 1);

  EXPECT_NE(error_of([&] {
              detect({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "four"}});
            }).find("SLURM_NTASKS='four' is not a whole number"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              detect({{"PMI_RANK", "2"}, {"PMI_SIZE", "2"}});
            }).find("PMI_RANK=2 is not a rank of PMI_SIZE=2"),
            std::string::npos);
}

}  // namespace
}  // namespace g4::parallel

// The NCCL communicator (parallel/nccl). One rank on GPU 0: every collective, on fresh random
// inputs, gives the one-rank result (the input itself, or its rows in place). Two ranks, one GPU
// each, when the machine has two GPUs and mpirun: NcclLaunch.TwoRanks re-runs this binary under
// mpirun and the ranks run NcclRanks.*. NCCL refuses two ranks on one GPU ("Duplicate GPU
// detected"), so one GPU means the two-rank test is skipped.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cuda_collective_checks.h"
#include "gpu_test.h"
#include "rank_launch.h"
#include "parallel/parallel_test_util.h"
#include "parallel/single_communicator.h"
#include "support/error_message.h"

#ifdef G4_WITH_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace g4::parallel {
namespace {

using testing::kAllDTypes;
using testing::same_values;

#ifndef G4_WITH_NCCL

TEST(Nccl, Communicator) {
  GTEST_SKIP() << "this build has no NCCL (nccl.h and libnccl were not found at configure time)";
}

#else

// A seed per run, printed, so every run draws new inputs and a failure can be replayed.
uint64_t fresh_seed() {
  static const uint64_t seed = [] {
    const uint64_t s = std::random_device{}();
    std::printf("  nccl_test seed %llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// Random CPU values of `dtype`: normal floats (bf16-rounded for bf16), integers over the dtype's range.
Tensor random_values(const Shape& shape, DType dtype, uint64_t stream) {
  const uint64_t seed = fresh_seed() * 131 + stream;
  switch (dtype) {
    case DType::F32:
    case DType::F64:
    case DType::BF16:
      return randn(shape, seed, DType::F32).to(dtype);
    case DType::U8:
      return randint(shape, seed, 0, 256, DType::I64).to(dtype);
    default:
      return randint(shape, seed, -1000000, 1000000, DType::I64).to(dtype);
  }
}

// Uploads are queued on the compute stream; NCCL runs on its own stream, so the inputs must have
// landed before a blocking collective starts.
Tensor on_gpu(const Tensor& cpu) {
  Tensor t = cpu.to(Device::CUDA);
  device_synchronize();
  return t;
}

// Outputs of blocking collectives: zeroed on the compute stream, so that too must be done first.
Tensor gpu_zeros(const Shape& shape, DType dtype) {
  Tensor t = Tensor::zeros(shape, dtype, Device::CUDA);
  device_synchronize();
  return t;
}

// Reads a result back once the communicator's stream has finished.
Tensor result(Communicator& comm, const Tensor& gpu) {
  comm.synchronize();
  return gpu.to(Device::CPU);
}

struct NcclOneRank : ::testing::Test {
  void SetUp() override {
    G4_REQUIRE_GPU();
    comm = make_nccl_communicator(bootstrap, 0);
  }
  SingleCommunicator bootstrap;
  std::unique_ptr<Communicator> comm;
};

TEST_F(NcclOneRank, Identity) {
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_STREQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->device(), Device::CUDA);
}

TEST_F(NcclOneRank, AllReduceSumAndMaxKeepTheInput) {
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + reduce_op_name(op));
      const Tensor x = random_values({17, 33}, dtype, 1);
      Tensor t = on_gpu(x);
      comm->all_reduce(t, op);
      EXPECT_TRUE(same_values(result(*comm, t), x));
    }
  }
}

TEST_F(NcclOneRank, BroadcastFromRankZero) {
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = random_values({5, 7, 3}, dtype, 2);
    Tensor t = on_gpu(x);
    comm->broadcast(t, 0);
    EXPECT_TRUE(same_values(result(*comm, t), x));
  }
}

TEST_F(NcclOneRank, AllGatherAndReduceScatterCopyTheRows) {
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = random_values({6, 10}, dtype, 3);
    const Tensor in = on_gpu(x);
    Tensor gathered = gpu_zeros({6, 10}, dtype);
    comm->all_gather(in, gathered);
    EXPECT_TRUE(same_values(result(*comm, gathered), x));
    Tensor scattered = gpu_zeros({6, 10}, dtype);
    comm->reduce_scatter(in, scattered, ReduceOp::Sum);
    EXPECT_TRUE(same_values(result(*comm, scattered), x));
  }
}

// The async forms are ordered after the compute stream and make it wait for them: no explicit
// synchronisation of the inputs, and the result read on the compute stream after wait().
TEST_F(NcclOneRank, AsyncFormsMatchTheBlockingOnes) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = random_values({8, 12}, dtype, 4);
    const Tensor in = x.to(Device::CUDA);
    Tensor gathered = Tensor::zeros({8, 12}, dtype, Device::CUDA);
    Tensor scattered = Tensor::zeros({8, 12}, dtype, Device::CUDA);
    CollectiveHandle g = comm->all_gather_async(in, gathered);
    CollectiveHandle s = comm->reduce_scatter_async(in, scattered, ReduceOp::Sum);
    g->wait();
    s->wait();
    EXPECT_TRUE(same_values(gathered.to(Device::CPU), x));
    EXPECT_TRUE(same_values(scattered.to(Device::CPU), x));
  }
}

TEST_F(NcclOneRank, AllToAllAndCountsStayHere) {
  EXPECT_EQ(comm->exchange_counts({9}), std::vector<int64_t>{9});
  EXPECT_EQ(comm->exchange_counts({0}), std::vector<int64_t>{0});
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = random_values({9, 4, 2}, dtype, 5);
    const Tensor in = on_gpu(x);
    Tensor out = gpu_zeros({9, 4, 2}, dtype);
    comm->all_to_all(in, {9}, out, {9});
    EXPECT_TRUE(same_values(result(*comm, out), x));
  }
}

TEST_F(NcclOneRank, BarrierAndSplit) {
  comm->barrier();
  comm->barrier();
  std::unique_ptr<Communicator> sub = comm->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_STREQ(sub->backend(), "nccl");
  const Tensor x = random_values({3, 3}, DType::F32, 6);
  Tensor t = on_gpu(x);
  sub->all_reduce(t);
  EXPECT_TRUE(same_values(result(*sub, t), x));
  sub->barrier();
}

TEST_F(NcclOneRank, BadCallsAreClearErrors) {
  Tensor cpu = Tensor::zeros({4}, DType::F32);
  std::string e = test::error_of([&] { comm->all_reduce(cpu); });
  EXPECT_NE(e.find("nccl all_reduce: tensor"), std::string::npos) << e;
  EXPECT_NE(e.find("is a CPU tensor; the nccl communicator moves CUDA tensors"), std::string::npos) << e;

  const Tensor in = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  Tensor wrong_rows = Tensor::zeros({5, 3}, DType::F32, Device::CUDA);
  e = test::error_of([&] { comm->all_gather(in, wrong_rows); });
  EXPECT_NE(e.find("nccl all_gather: out is"), std::string::npos) << e;
  Tensor wrong_dtype = Tensor::zeros({4, 3}, DType::BF16, Device::CUDA);
  e = test::error_of([&] { comm->reduce_scatter(in, wrong_dtype); });
  EXPECT_NE(e.find("nccl reduce_scatter: out is"), std::string::npos) << e;
  Tensor out = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  e = test::error_of([&] { comm->all_to_all(in, {3}, out, {4}); });
  EXPECT_NE(e.find("send_counts add up to 3 rows, but the tensor has 4"), std::string::npos) << e;
  Tensor same = in;
  e = test::error_of([&] { comm->all_gather(in, same); });
  EXPECT_NE(e.find("in and out overlap"), std::string::npos) << e;
  e = test::error_of([&] { comm->send(in, 0); });
  EXPECT_NE(e.find("is this rank itself"), std::string::npos) << e;
  e = test::error_of([&] { comm->broadcast(out, 1); });
  EXPECT_NE(e.find("root 1 is not a rank of this 1-rank communicator"), std::string::npos) << e;
  e = test::error_of([&] { comm->all_gather(in); });
  EXPECT_NE(e.find("allocating forms need CPU tensors"), std::string::npos) << e;

  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  SingleCommunicator bootstrap2;
  e = test::error_of([&] { make_nccl_communicator(bootstrap2, devices); });
  EXPECT_NE(e.find("asked for GPU " + std::to_string(devices) + ", but this process sees"), std::string::npos) << e;
  // The communicator still works after refused calls.
  comm->barrier();
}

// NVLink multicast stays off: any NCCL_NVLS_ENABLE other than 0 is refused before NCCL starts.
TEST_F(NcclOneRank, RefusesNvlinkMulticast) {
  const char* before = std::getenv("NCCL_NVLS_ENABLE");
  const std::string saved = before ? before : "";
  setenv("NCCL_NVLS_ENABLE", "1", 1);
  SingleCommunicator bootstrap2;
  const std::string e = test::error_of([&] { make_nccl_communicator(bootstrap2, 0); });
  if (before) {
    setenv("NCCL_NVLS_ENABLE", saved.c_str(), 1);
  } else {
    unsetenv("NCCL_NVLS_ENABLE");
  }
  EXPECT_NE(e.find("NCCL_NVLS_ENABLE=1"), std::string::npos) << e;
}

// ---- Two ranks, one GPU each ----

int visible_gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

TEST(NcclLaunch, TwoRanks) {
  if (testing::in_mpi_child()) GTEST_SKIP() << "already inside mpirun";
  G4_REQUIRE_GPU();
  if (visible_gpus() < 2)
    GTEST_SKIP() << "one GPU visible: NCCL needs a GPU per rank (it refuses two ranks on one GPU)";
  if (!test::mpirun_available()) GTEST_SKIP() << "mpirun not found on PATH (openmpi-bin)";
  test::expect_ranks_pass(2, "NcclRanks.*", 2);
}

// The NCCL communicator of this rank, on the GPU of its number, bootstrapped over MPI.
Communicator& nccl_world() {
  static std::unique_ptr<Communicator> comm = make_nccl_communicator(testing::mpi_world(), testing::mpi_world().rank());
  return *comm;
}

TEST(NcclRanks, Collectives) {
  G4_SKIP_UNLESS_MPI_CHILD();
  testing::check_collectives(nccl_world(), {DType::F32, DType::BF16, DType::F64, DType::I64});
}

// Uneven all-to-all; point to point between the two ranks.
TEST(NcclRanks, AllToAllAndPointToPoint) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& comm = nccl_world();
  const int rank = comm.rank();
  testing::check_all_to_all(comm, {DType::F32});
  const int peer = 1 - rank;
  const Tensor mine = testing::rank_on_gpu(rank, {7}, DType::BF16, 26);
  Tensor theirs = gpu_zeros({7}, DType::BF16);
  comm.send_recv(mine, peer, theirs, peer);
  EXPECT_TRUE(same_values(result(comm, theirs), testing::rank_values(peer, {7}, DType::BF16, 26)));
  Tensor one_way = gpu_zeros({5}, DType::I32);
  if (rank == 0) {
    const Tensor payload = testing::rank_on_gpu(0, {5}, DType::I32, 27);
    comm.send(payload, 1);
    comm.synchronize();  // before payload is freed
  } else {
    comm.recv(one_way, 0);
    EXPECT_TRUE(same_values(result(comm, one_way), testing::rank_values(0, {5}, DType::I32, 27)));
  }
  comm.synchronize();
  comm.barrier();
}

#endif  // G4_WITH_NCCL

}  // namespace
}  // namespace g4::parallel

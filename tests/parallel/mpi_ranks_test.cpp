// Every collective on 2 or 4 MPI ranks (started by MpiLaunch.*), checked against what each rank
// computes locally from the other ranks' seeds. The values are small integers, so sums are exact
// in every dtype and the comparisons are exact.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "parallel/device_mesh.h"
#include "parallel_test_util.h"

namespace g4::parallel {
namespace {

using testing::kAllDTypes;
using testing::mpi_world;
using testing::rank_values;
using testing::reduce_locally;
using testing::same_values;

TEST(MpiRanks, WorldMatchesTheLauncher) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  EXPECT_STREQ(world.backend(), "mpi");
  EXPECT_EQ(world.size(), std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")));
  EXPECT_EQ(world.rank(), std::atoi(std::getenv("OMPI_COMM_WORLD_RANK")));
  world.barrier();
}

TEST(MpiRanks, AllReduceSumAndMaxInEveryDtype) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + reduce_op_name(op));
      Tensor t = rank_values(world.rank(), {3, 5}, dtype, 11);
      world.all_reduce(t, op);
      EXPECT_TRUE(same_values(t, reduce_locally(world.size(), {3, 5}, dtype, 11, op)));
    }
  }
  Tensor scalar = Tensor::scalar(world.rank() + 1.0, DType::F64);
  world.all_reduce(scalar);
  EXPECT_EQ(scalar.item(), world.size() * (world.size() + 1) / 2);
}

TEST(MpiRanks, AllGatherConcatenatesInRankOrder) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor out = world.all_gather(rank_values(world.rank(), {2, 3}, dtype, 12));
    ASSERT_EQ(out.shape(), (Shape{2 * world.size(), 3}));
    for (int r = 0; r < world.size(); ++r)
      EXPECT_TRUE(same_values(out.slice0(2 * r, 2), rank_values(r, {2, 3}, dtype, 12))) << "rows of rank " << r;
  }
}

TEST(MpiRanks, ReduceScatterKeepsThisRanksRows) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int n = world.size();
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + reduce_op_name(op));
      const Tensor out = world.reduce_scatter(rank_values(world.rank(), {3 * n, 2}, dtype, 13), op);
      const Tensor full = reduce_locally(n, {3 * n, 2}, dtype, 13, op);
      EXPECT_TRUE(same_values(out, full.slice0(3 * world.rank(), 3)));
    }
  }
}

// Asynchronous all-gathers and reduce-scatters, several in flight at once and interleaved with a
// blocking collective on the same communicator, waited for out of order: the results of the
// blocking forms, in every dtype. A handle dropped unwaited waits by itself.
TEST(MpiRanks, AsyncCollectivesInFlightTogether) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int n = world.size();
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor g_in = rank_values(world.rank(), {2, 3}, dtype, 21);
    Tensor g_out = Tensor::empty({2 * n, 3}, dtype);
    const Tensor r_in = rank_values(world.rank(), {3 * n, 2}, dtype, 22);
    Tensor r_out = Tensor::empty({3, 2}, dtype);
    CollectiveHandle gather = world.all_gather_async(g_in, g_out);
    CollectiveHandle scatter = world.reduce_scatter_async(r_in, r_out);
    Tensor both = rank_values(world.rank(), {4}, dtype, 23);
    world.all_reduce(both);  // blocking, issued while the two are in flight
    scatter->wait();
    gather->wait();
    gather->wait();  // waiting twice is harmless
    EXPECT_TRUE(same_values(both, reduce_locally(n, {4}, dtype, 23, ReduceOp::Sum)));
    for (int r = 0; r < n; ++r) EXPECT_TRUE(same_values(g_out.slice0(2 * r, 2), rank_values(r, {2, 3}, dtype, 21)));
    EXPECT_TRUE(same_values(r_out, reduce_locally(n, {3 * n, 2}, dtype, 22, ReduceOp::Sum).slice0(3 * world.rank(), 3)));
    Tensor dropped = Tensor::empty({2 * n, 3}, dtype);
    world.all_gather_async(g_in, dropped).reset();  // the destructor waits
    for (int r = 0; r < n; ++r) EXPECT_TRUE(same_values(dropped.slice0(2 * r, 2), rank_values(r, {2, 3}, dtype, 21)));
  }
  // The blocking forms' argument checks, before anything is sent.
  Tensor odd = Tensor::zeros({2 * n + 1, 4}, DType::F32), out = Tensor::zeros({2, 4}, DType::F32);
  try {
    world.reduce_scatter_async(odd, out);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the " + std::to_string(n) + " ranks"), std::string::npos)
        << e.what();
  }
  world.barrier();
}

TEST(MpiRanks, ReduceScatterOfIndivisibleRowsIsAnErrorOnEveryRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const Tensor in = Tensor::zeros({2 * world.size() + 1, 4}, DType::F32);
  try {
    world.reduce_scatter(in);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mpi reduce_scatter: in f32[" + std::to_string(2 * world.size() + 1) +
                                         ", 4] has " + std::to_string(2 * world.size() + 1) +
                                         " rows, not divisible by the " + std::to_string(world.size()) + " ranks"),
              std::string::npos)
        << e.what();
  }
  world.barrier();  // nothing was sent: the ranks are still in step
}

// Rank s sends rows_from(s, d) rows to rank d: uneven, and zero for some pairs.
int64_t rows_from(int s, int d) {
  return (s + 2 * d) % 3;
}

// Row i of what s sends to d, with `width` columns, identifying (s, d, i, column).
double row_value(int s, int d, int64_t i, int64_t column) {
  return s * 1000 + d * 100 + i * 10 + column;
}

TEST(MpiRanks, AllToAllWithUnevenCounts) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int me = world.rank(), n = world.size();
  constexpr int64_t kWidth = 3;
  std::vector<int64_t> send_counts;
  std::vector<double> send_values;
  for (int d = 0; d < n; ++d) {
    send_counts.push_back(rows_from(me, d));
    for (int64_t i = 0; i < rows_from(me, d); ++i)
      for (int64_t c = 0; c < kWidth; ++c) send_values.push_back(row_value(me, d, i, c));
  }
  const auto rows = static_cast<int64_t>(send_values.size()) / kWidth;

  std::vector<int64_t> want_counts;
  std::vector<double> want_values;
  for (int s = 0; s < n; ++s) {
    want_counts.push_back(rows_from(s, me));
    for (int64_t i = 0; i < rows_from(s, me); ++i)
      for (int64_t c = 0; c < kWidth; ++c) want_values.push_back(row_value(s, me, i, c));
  }
  const auto want_rows = static_cast<int64_t>(want_values.size()) / kWidth;

  EXPECT_EQ(world.exchange_counts(send_counts), want_counts);
  for (DType dtype : {DType::F32, DType::F64, DType::I64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor in = Tensor::from_vector(send_values, {rows, kWidth}).to(dtype);
    const Tensor want = Tensor::from_vector(want_values, {want_rows, kWidth}).to(dtype);
    std::vector<int64_t> recv_counts;
    EXPECT_TRUE(same_values(world.all_to_all(in, send_counts, &recv_counts), want));
    EXPECT_EQ(recv_counts, want_counts);
    // The form with a caller-provided output.
    Tensor out = Tensor::zeros({want_rows, kWidth}, dtype);
    world.all_to_all(in, send_counts, out, want_counts);
    EXPECT_TRUE(same_values(out, want));
  }
}

TEST(MpiRanks, BroadcastFromTheLastRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int root = world.size() - 1;
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = rank_values(world.rank(), {4, 2}, dtype, 14);
    world.broadcast(t, root);
    EXPECT_TRUE(same_values(t, rank_values(root, {4, 2}, dtype, 14)));
  }
}

TEST(MpiRanks, SendAndReceive) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int me = world.rank(), n = world.size();
  // Pairs (0,1), (2,3), …: even ranks send first, odd ranks receive first.
  const int partner = me ^ 1;
  Tensor got = Tensor::zeros({5}, DType::F32);
  if (me % 2 == 0) {
    world.send(rank_values(me, {5}, DType::F32, 15), partner);
    world.recv(got, partner);
  } else {
    world.recv(got, partner);
    world.send(rank_values(me, {5}, DType::F32, 15), partner);
  }
  EXPECT_TRUE(same_values(got, rank_values(partner, {5}, DType::F32, 15)));

  // One step of a ring: everyone sends to the next rank while receiving from the previous one.
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  Tensor from_prev = Tensor::zeros({2, 3}, DType::BF16);
  world.send_recv(rank_values(me, {2, 3}, DType::BF16, 16), next, from_prev, prev);
  EXPECT_TRUE(same_values(from_prev, rank_values(prev, {2, 3}, DType::BF16, 16)));
}

TEST(MpiRanks, ReceivingFewerElementsThanExpectedIsAnError) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  if (world.rank() == 0) {
    world.send(Tensor::zeros({3}, DType::I32), 1);
  } else if (world.rank() == 1) {
    Tensor t = Tensor::zeros({4}, DType::I32);
    try {
      world.recv(t, 0);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mpi recv: rank 1 expected i32[4] (4 elements) from rank 0 but received 3"),
                std::string::npos)
          << e.what();
    }
  }
  world.barrier();
}

TEST(MpiRanks, SplitMakesGroupsOrderedByKey) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int me = world.rank(), n = world.size();
  // Even and odd ranks, each group in descending world rank (key = -rank).
  const auto group = world.split(me % 2, -me);
  std::vector<int64_t> members;
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  ASSERT_EQ(group->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[static_cast<size_t>(group->rank())], me);
  const Tensor ranks = group->all_gather(Tensor::from_vector(std::vector<int64_t>{me}, {1}));
  EXPECT_TRUE(same_values(ranks, Tensor::from_vector(members, {static_cast<int64_t>(members.size())})));
  Tensor sum = Tensor::scalar(me, DType::I64);
  group->all_reduce(sum);
  int64_t want = 0;
  for (int64_t r : members) want += r;
  EXPECT_EQ(sum.item(), want);
}

// The world ranks of this rank's group along one mesh dimension, in group-rank order.
template <class Vary>
std::vector<int64_t> group_members(const MeshShape& shape, MeshCoord c, int length, Vary vary) {
  std::vector<int64_t> ranks;
  for (int i = 0; i < length; ++i) {
    vary(c, i);
    ranks.push_back(shape.rank_of(c));
  }
  return ranks;
}

void check_group(Communicator& group, const std::vector<int64_t>& members, int world_rank, const char* name) {
  SCOPED_TRACE(name);
  ASSERT_EQ(group.size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[static_cast<size_t>(group.rank())], world_rank);
  const Tensor got = group.all_gather(Tensor::from_vector(std::vector<int64_t>{world_rank}, {1}));
  EXPECT_TRUE(same_values(got, Tensor::from_vector(members, {static_cast<int64_t>(members.size())})));
}

TEST(MpiRanks, DeviceMeshGroups) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const MeshShape shapes[] = {{2, 1, 1}, {1, 2, 1}, {1, 1, 2}, {2, 2, 1}, {1, 1, 4}, {2, 1, 2}, {1, 2, 2}, {4, 1, 1}};
  int built = 0;
  for (const MeshShape& shape : shapes) {
    if (shape.world_size() != world.size()) continue;
    SCOPED_TRACE(shape.str());
    DeviceMesh mesh(world, shape);
    ++built;
    const MeshCoord c = mesh.coord();
    EXPECT_EQ(shape.rank_of(c), world.rank());
    check_group(mesh.dp_group(), group_members(shape, c, shape.dp_shard, [](MeshCoord& m, int i) { m.dp = i; }),
                world.rank(), "dp");
    check_group(mesh.ep_group(), group_members(shape, c, shape.ep, [](MeshCoord& m, int i) { m.ep = i; }), world.rank(),
                "ep");
    check_group(mesh.cp_group(), group_members(shape, c, shape.cp, [](MeshCoord& m, int i) { m.cp = i; }), world.rank(),
                "cp");
  }
  EXPECT_EQ(built, world.size() == 2 ? 3 : 5);
}

TEST(MpiRanks, DeviceMeshOfTheWrongSizeIsAnError) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  try {
    DeviceMesh mesh(world, {.dp_shard = world.size(), .ep = 2});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs " + std::to_string(2 * world.size()) + " ranks, but the job has " +
                                         std::to_string(world.size())),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace g4::parallel

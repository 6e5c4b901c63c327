// Helpers shared by the parallel tests: rank-dependent data whose collectives can be computed
// exactly on every rank, and the world communicator of the multi-rank run.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "core/random.h"
#include "parallel/communicator.h"
#include "parallel/world.h"

namespace g4::parallel::testing {

// MpiLaunch.* re-runs this binary under mpirun with this variable set; MpiRanks.* run only then.
inline constexpr const char* kMpiChildVariable = "G4_TEST_MPI_CHILD";
inline bool in_mpi_child() {
  return std::getenv(kMpiChildVariable) != nullptr;
}

// The world of the multi-rank run, created once; MPI is finalised when the process exits.
inline Communicator& mpi_world() {
  static std::unique_ptr<Communicator> world = make_world_communicator();
  return *world;
}

// Rank `rank`'s tensor for a test: small integers (exact in every dtype, bf16 included, and so
// are their sums over a few ranks), different for every (seed, rank).
inline Tensor rank_values(int rank, const Shape& shape, DType dtype, uint64_t seed) {
  const int64_t lo = dtype == DType::U8 ? 0 : -60;
  return randint(shape, seed * 1000 + static_cast<uint64_t>(rank), lo, 60, DType::I64).to(dtype);
}

// Every rank's tensor for `seed`, reduced elementwise as the collective should.
inline Tensor reduce_locally(int ranks, const Shape& shape, DType dtype, uint64_t seed, ReduceOp op) {
  Tensor acc = rank_values(0, shape, dtype, seed).to(DType::F64);
  for (int r = 1; r < ranks; ++r) {
    const Tensor x = rank_values(r, shape, dtype, seed);
    double* a = acc.data<double>();
    for (int64_t i = 0; i < acc.numel(); ++i)
      a[i] = op == ReduceOp::Sum ? a[i] + element_as_double(x, i) : std::max(a[i], element_as_double(x, i));
  }
  return acc.to(dtype);
}

inline const DType kAllDTypes[] = {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64, DType::U8};

// Element-by-element equality, naming the first mismatch.
inline ::testing::AssertionResult same_values(const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << "got " << got.describe() << ", want " << want.describe();
  for (int64_t i = 0; i < got.numel(); ++i)
    if (element_as_double(got, i) != element_as_double(want, i))
      return ::testing::AssertionFailure() << got.describe() << " element " << i << ": got "
                                           << element_as_double(got, i) << ", want " << element_as_double(want, i);
  return ::testing::AssertionSuccess();
}

}  // namespace g4::parallel::testing

#define G4_SKIP_UNLESS_MPI_CHILD() \
  if (!::g4::parallel::testing::in_mpi_child()) GTEST_SKIP() << "runs under mpirun, started by MpiLaunch.*"

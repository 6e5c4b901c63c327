// Rank-side checks that every communicator of CUDA tensors must pass, shared by the NCCL ranks
// (nccl_test.cpp) and the host-staged MPI ranks (gpu_data_parallel_test.cpp). Rank r's tensors
// are rank_values(r, ...): small integers, exact in every dtype and in their sums, so each rank
// knows every result without asking anyone.
#pragma once
#include <gtest/gtest.h>

#include <vector>

#include "core/device_memory.h"
#include "parallel/communicator.h"
#include "parallel/parallel_test_util.h"

namespace g4::parallel::testing {

// Uploads and zeroing are queued on the compute stream; NCCL runs on its own stream, so they must
// have landed before a blocking collective starts.
inline Tensor rank_on_gpu(int rank, const Shape& shape, DType dtype, uint64_t seed) {
  Tensor t = rank_values(rank, shape, dtype, seed).to(Device::CUDA);
  device_synchronize();
  return t;
}

inline Tensor zeros_on_gpu(const Shape& shape, DType dtype) {
  Tensor t = Tensor::zeros(shape, dtype, Device::CUDA);
  device_synchronize();
  return t;
}

// A result read back once the communicator's work has finished.
inline Tensor read_back(Communicator& comm, const Tensor& gpu) {
  comm.synchronize();
  return gpu.to(Device::CPU);
}

// all_reduce (sum, max), broadcast from the last rank, all_gather, reduce_scatter (sum, max) and
// their asynchronous forms, in each of `dtypes`.
inline void check_collectives(Communicator& comm, const std::vector<DType>& dtypes) {
  const int rank = comm.rank(), n = comm.size();
  ASSERT_GE(n, 2);
  EXPECT_EQ(comm.device(), Device::CUDA);
  for (DType dtype : dtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      Tensor t = rank_on_gpu(rank, {3, 5}, dtype, 21);
      comm.all_reduce(t, op);
      EXPECT_EQ(t.device(), Device::CUDA);
      EXPECT_TRUE(same_values(read_back(comm, t), reduce_locally(n, {3, 5}, dtype, 21, op))) << reduce_op_name(op);
    }
    Tensor b = rank_on_gpu(rank, {4}, dtype, 22);
    comm.broadcast(b, n - 1);
    EXPECT_TRUE(same_values(read_back(comm, b), rank_values(n - 1, {4}, dtype, 22)));

    const Tensor in = rank_on_gpu(rank, {2, 3}, dtype, 23);
    Tensor gathered = zeros_on_gpu({2 * n, 3}, dtype);
    comm.all_gather(in, gathered);
    const Tensor g = read_back(comm, gathered);
    for (int r = 0; r < n; ++r)
      EXPECT_TRUE(same_values(g.slice0(2 * r, 2), rank_values(r, {2, 3}, dtype, 23))) << "rows of " << r;

    const Tensor full_in = rank_on_gpu(rank, {3 * n, 2}, dtype, 24);
    const Tensor want = reduce_locally(n, {3 * n, 2}, dtype, 24, ReduceOp::Sum);
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      Tensor part = zeros_on_gpu({3, 2}, dtype);
      comm.reduce_scatter(full_in, part, op);
      EXPECT_TRUE(same_values(read_back(comm, part), reduce_locally(n, {3 * n, 2}, dtype, 24, op).slice0(3 * rank, 3)))
          << reduce_op_name(op);
    }

    // Asynchronous: the results are there after wait(); every rank starts them in the same order.
    Tensor gathered_async = zeros_on_gpu({2 * n, 3}, dtype);
    Tensor part_async = zeros_on_gpu({3, 2}, dtype);
    CollectiveHandle ga = comm.all_gather_async(in, gathered_async);
    CollectiveHandle ra = comm.reduce_scatter_async(full_in, part_async, ReduceOp::Sum);
    ga->wait();
    ra->wait();
    EXPECT_TRUE(same_values(gathered_async.to(Device::CPU), g));
    EXPECT_TRUE(same_values(part_async.to(Device::CPU), want.slice0(3 * rank, 3)));
  }
  comm.barrier();
}

// Uneven rows: rank r sends r + 1 + d rows to rank d; the counts exchange says what arrives.
inline void check_all_to_all(Communicator& comm, const std::vector<DType>& dtypes) {
  const int rank = comm.rank(), n = comm.size();
  auto sends = [](int from, int to) { return static_cast<int64_t>(from + 1 + to); };
  std::vector<int64_t> send_counts, want_counts;
  int64_t rows = 0;
  for (int d = 0; d < n; ++d) {
    send_counts.push_back(sends(rank, d));
    want_counts.push_back(sends(d, rank));
    rows += sends(rank, d);
  }
  const std::vector<int64_t> recv_counts = comm.exchange_counts(send_counts);
  ASSERT_EQ(recv_counts, want_counts);
  int64_t recv_rows = 0;
  for (int64_t c : recv_counts) recv_rows += c;
  for (DType dtype : dtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor in = rank_on_gpu(rank, {rows, 3}, dtype, 25);
    Tensor out = zeros_on_gpu({recv_rows, 3}, dtype);
    comm.all_to_all(in, send_counts, out, recv_counts);
    const Tensor got = read_back(comm, out);
    int64_t at = 0;
    for (int src = 0; src < n; ++src) {
      int64_t offset = 0, src_rows = 0;  // where rank src's rows for this rank start in its input
      for (int d = 0; d < rank; ++d) offset += sends(src, d);
      for (int d = 0; d < n; ++d) src_rows += sends(src, d);
      const Tensor src_in = rank_values(src, {src_rows, 3}, dtype, 25);
      EXPECT_TRUE(same_values(got.slice0(at, sends(src, rank)), src_in.slice0(offset, sends(src, rank))))
          << "rows from " << src;
      at += sends(src, rank);
    }
  }
}

}  // namespace g4::parallel::testing

// Collective communication between the ranks of a job: the one interface that data, expert and
// context parallelism are written against. MPI carries CPU tensors between processes, NCCL carries
// CUDA tensors between GPUs, and a single-rank communicator lets the same code run in one process.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace g4::parallel {

enum class ReduceOp : uint8_t { Sum, Max };
const char* reduce_op_name(ReduceOp op);

// A collective started by an *_async call and not yet known to be finished. wait() returns once
// its output may be read (on NCCL: once the compute stream is ordered after it, without blocking
// the host). The handle keeps its tensors alive until then; destroying a handle that was not
// waited for waits, so a buffer is never freed under a transfer.
class PendingCollective {
 public:
  PendingCollective() = default;
  PendingCollective(const PendingCollective&) = delete;
  PendingCollective& operator=(const PendingCollective&) = delete;
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};
using CollectiveHandle = std::unique_ptr<PendingCollective>;

// Every rank of a communicator calls each collective in the same order with matching shapes and
// dtypes (f32, f64, bf16, i32, i64, u8). Arguments are checked on each rank before anything is
// sent, so a bad call fails the same way everywhere instead of leaving peers waiting.
// Tensors live on the backend's device (see device()). CPU backends have finished when a call
// returns; NCCL calls run on the communicator's CUDA stream, ordered after the compute stream's work
// so far and before its later work (without blocking the host; synchronize() waits for them).
// "Rows" are slices along dim 0. A communicator is used from one thread at a time.
class Communicator {
 public:
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "single", "mpi", "nccl": named in error messages
  virtual Device device() const = 0;        // where the tensors it moves must live

  // t = op over every rank's t, in place.
  void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum);
  // in [n, ...] on every rank -> out [size*n, ...]: the ranks' rows concatenated in rank order.
  void all_gather(const Tensor& in, Tensor& out);
  // in [size*n, ...] -> out [n, ...]: rows [rank*n, (rank+1)*n) of op over every rank's in.
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op = ReduceOp::Sum);
  // Uneven exchange of rows: the first send_counts[0] rows of `in` go to rank 0, the next
  // send_counts[1] to rank 1, …; `out` receives recv_counts[r] rows from each rank r, in rank order.
  // recv_counts must be what exchange_counts(send_counts) returns.
  void all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                  const std::vector<int64_t>& recv_counts);
  // The counts exchange that precedes all_to_all: returns, for each rank r, what rank r passed
  // as send_counts[this rank].
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts);
  // t on every rank = t on `root`.
  void broadcast(Tensor& t, int root);
  // Point to point, to/from another rank; messages between two ranks arrive in the order sent.
  void send(const Tensor& t, int peer);
  void recv(Tensor& t, int peer);
  // Sends to `dst` while receiving from `src` (one step of a ring), without deadlock.
  void send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src);
  void barrier();
  // Collective over this communicator: ranks passing the same color (>= 0) form a new
  // communicator, ranked by (key, rank here). Used for the groups of a DeviceMesh.
  std::unique_ptr<Communicator> split(int color, int key);
  // Waits until every operation issued so far has finished (a no-op for the CPU backends).
  virtual void synchronize() {}

  // Asynchronous forms of all_gather and reduce_scatter, for overlapping communication with
  // compute (sharded data parallelism gathers the next layer while this one runs). Same checks
  // and results as the blocking forms; `in` must not be written and `out` not read until the
  // handle's wait(). They count as issued collectives: every rank starts them in the same order
  // as its other collectives on this communicator. MPI: MPI_Iallgather / MPI_Ireduce_scatter_block
  // (how much overlaps depends on the MPI library's progress); NCCL: the communicator's stream,
  // ordered after the compute stream's work so far; single rank: done at once.
  CollectiveHandle all_gather_async(const Tensor& in, Tensor& out);
  CollectiveHandle reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op = ReduceOp::Sum);

  // Allocating forms of the row collectives (CPU communicators: device tensors are allocated by
  // the caller and passed to the forms above).
  Tensor all_gather(const Tensor& in);
  Tensor reduce_scatter(const Tensor& in, ReduceOp op = ReduceOp::Sum);
  // Exchanges counts, then rows; returns the received rows and, if asked, how many came from each rank.
  Tensor all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts,
                    std::vector<int64_t>* recv_counts = nullptr);

 protected:
  // The backends implement these on arguments the public functions have already checked.
  virtual void do_all_reduce(Tensor& t, ReduceOp op) = 0;
  virtual void do_all_gather(const Tensor& in, Tensor& out) = 0;
  virtual void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  virtual void do_all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                             const std::vector<int64_t>& recv_counts) = 0;
  // Default: an all_to_all of one i64 per rank in CPU memory (NCCL overrides it).
  virtual std::vector<int64_t> do_exchange_counts(const std::vector<int64_t>& send_counts);
  virtual void do_broadcast(Tensor& t, int root) = 0;
  virtual void do_send(const Tensor& t, int peer) = 0;
  virtual void do_recv(Tensor& t, int peer) = 0;
  virtual void do_send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) = 0;
  virtual void do_barrier() = 0;
  virtual std::unique_ptr<Communicator> do_split(int color, int key) = 0;
  // Default: the blocking operation, returned as already finished (SingleCommunicator).
  virtual CollectiveHandle do_all_gather_async(const Tensor& in, Tensor& out);
  virtual CollectiveHandle do_reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op);

 private:
  // Checks that t is defined, of a supported dtype and on device(); `what` names it in errors.
  void check_tensor(const char* op, const char* what, const Tensor& t) const;
  void check_peer(const char* op, const char* what, int peer) const;
  void check_counts(const char* op, const char* what, const std::vector<int64_t>& counts, int64_t rows) const;
  void check_all_gather(const Tensor& in, const Tensor& out) const;
  void check_reduce_scatter(const Tensor& in, const Tensor& out) const;
};

// Collectives over small host values (token counts, metrics, flags, fingerprints) on any
// communicator: a CPU tensor on one that moves CUDA tensors (NCCL, host-staged MPI) travels
// through a device copy and comes back; a tensor on the communicator's device goes directly. So
// code that exchanges bookkeeping runs unchanged on CPU and GPU ranks.
void all_reduce_values(Communicator& c, Tensor& t, ReduceOp op = ReduceOp::Sum);
void broadcast_values(Communicator& c, Tensor& t, int root);
void all_gather_values(Communicator& c, const Tensor& in, Tensor& out);

// t where `comm` moves tensors (t itself when it is there already): how the small tables made on the
// host (expert counts, position ids, token counts) enter a collective of a GPU communicator.
Tensor on_device_of(const Communicator& comm, const Tensor& t);

}  // namespace g4::parallel

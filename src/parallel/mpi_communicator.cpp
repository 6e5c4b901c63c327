#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>

namespace g4::parallel {

namespace {

void check_mpi(int rc, const char* op) {
  if (rc == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, message, &length);
  G4_FAIL("mpi ", op, ": ", std::string(message, static_cast<size_t>(length)));
}

// MPI counts are ints; CPU ranks move test- and small-model-sized tensors, so a larger message
// is a misuse worth naming rather than splitting up.
int to_count(int64_t n, const char* op) {
  G4_CHECK(n <= INT_MAX, "mpi ", op, ": ", n, " elements exceed MPI's limit of ", INT_MAX, " per message");
  return static_cast<int>(n);
}

// MPI has no bfloat16, so bf16 travels as 16-bit words and is reduced by these user operations
// (in float, rounded back to bf16 at every step, as NCCL does).
template <class Combine>
void reduce_bf16(void* in, void* inout, int* len, Combine combine) {
  const bf16* a = static_cast<const bf16*>(in);
  bf16* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = bf16::from_float(combine(a[i].to_float(), b[i].to_float()));
}
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_bf16(in, inout, len, [](float x, float y) { return x + y; });
}
void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_bf16(in, inout, len, [](float x, float y) { return x > y ? x : y; });
}

MPI_Op g_bf16_sum = MPI_OP_NULL;
MPI_Op g_bf16_max = MPI_OP_NULL;

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Op_free(&g_bf16_sum);
  MPI_Op_free(&g_bf16_max);
  MPI_Finalize();
}

}  // namespace

void abort_mpi_job_if_ranks(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // MPI_Finalize at exit would wait for peers that are waiting for this rank in a collective.
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

namespace {

void ensure_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  G4_CHECK(!finalized, "mpi: MPI was already finalised in this process; it cannot be started again");
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Only the calling thread talks to MPI; OpenMP threads inside ops never do.
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
    std::atexit(finalize_mpi);
  }
  if (g_bf16_sum == MPI_OP_NULL) {
    check_mpi(MPI_Op_create(&bf16_sum, /*commute=*/1, &g_bf16_sum), "op_create");
    check_mpi(MPI_Op_create(&bf16_max, /*commute=*/1, &g_bf16_max), "op_create");
  }
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::BF16:
      return MPI_UINT16_T;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
      return MPI_UINT8_T;
    default:
      G4_FAIL("mpi: no MPI datatype for ", dtype_name(t));
  }
}

MPI_Op mpi_op(ReduceOp op, DType t) {
  if (t == DType::BF16) return op == ReduceOp::Sum ? g_bf16_sum : g_bf16_max;
  return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
}

int64_t row_elements(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

// Counts of rows -> counts and displacements of elements, as MPI_Alltoallv takes them.
void element_layout(const std::vector<int64_t>& rows, int64_t row, std::vector<int>& counts, std::vector<int>& displs) {
  int64_t offset = 0;
  for (int64_t r : rows) {
    counts.push_back(to_count(r * row, "all_to_all"));
    displs.push_back(to_count(offset, "all_to_all"));
    offset += r * row;
  }
  to_count(offset, "all_to_all");
}

constexpr int kTag = 0;

// A nonblocking MPI collective. It holds (shares) its tensors' storage until MPI is done with
// them. Open MPI progresses such a request inside MPI calls, so the transfer overlaps compute as
// far as the library moves data on its own (shared-memory eager sizes) and completes at wait().
class MpiPending final : public PendingCollective {
 public:
  MpiPending(MPI_Request request, Tensor in, Tensor out, const char* op)
      : request_(request), in_(std::move(in)), out_(std::move(out)), op_(op) {}
  ~MpiPending() override {
    // Never free a buffer MPI may still write: wait, and leave errors to whoever waited first.
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (request_ == MPI_REQUEST_NULL) return;
    check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), op_);
    in_ = Tensor();
    out_ = Tensor();
  }

 private:
  MPI_Request request_;
  Tensor in_, out_;
  const char* op_;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    // Errors come back as codes and become g4::Error naming the operation, instead of aborting.
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "comm_size");
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }
  Device device() const override { return Device::CPU; }

 protected:
  void do_all_reduce(Tensor& t, ReduceOp op) override {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, t.raw(), to_count(t.numel(), "all_reduce"), mpi_type(t.dtype()),
                            mpi_op(op, t.dtype()), comm_),
              "all_reduce");
  }

  void do_all_gather(const Tensor& in, Tensor& out) override {
    const int n = to_count(in.numel(), "all_gather");
    to_count(out.numel(), "all_gather");
    const MPI_Datatype type = mpi_type(in.dtype());
    check_mpi(MPI_Allgather(in.raw(), n, type, out.raw(), n, type, comm_), "all_gather");
  }

  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    to_count(in.numel(), "reduce_scatter");
    check_mpi(MPI_Reduce_scatter_block(in.raw(), out.raw(), to_count(out.numel(), "reduce_scatter"),
                                       mpi_type(in.dtype()), mpi_op(op, in.dtype()), comm_),
              "reduce_scatter");
  }

  CollectiveHandle do_all_gather_async(const Tensor& in, Tensor& out) override {
    const int n = to_count(in.numel(), "all_gather_async");
    to_count(out.numel(), "all_gather_async");
    const MPI_Datatype type = mpi_type(in.dtype());
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallgather(in.raw(), n, type, out.raw(), n, type, comm_, &request), "all_gather_async");
    return std::make_unique<MpiPending>(request, in, out, "all_gather_async");
  }

  CollectiveHandle do_reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    to_count(in.numel(), "reduce_scatter_async");
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Ireduce_scatter_block(in.raw(), out.raw(), to_count(out.numel(), "reduce_scatter_async"),
                                        mpi_type(in.dtype()), mpi_op(op, in.dtype()), comm_, &request),
              "reduce_scatter_async");
    return std::make_unique<MpiPending>(request, in, out, "reduce_scatter_async");
  }

  void do_all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                     const std::vector<int64_t>& recv_counts) override {
    const int64_t row = row_elements(in);
    std::vector<int> sc, sd, rc, rd;
    element_layout(send_counts, row, sc, sd);
    element_layout(recv_counts, row, rc, rd);
    const MPI_Datatype type = mpi_type(in.dtype());
    check_mpi(MPI_Alltoallv(in.raw(), sc.data(), sd.data(), type, out.raw(), rc.data(), rd.data(), type, comm_),
              "all_to_all");
  }

  void do_broadcast(Tensor& t, int root) override {
    check_mpi(MPI_Bcast(t.raw(), to_count(t.numel(), "broadcast"), mpi_type(t.dtype()), root, comm_), "broadcast");
  }

  void do_send(const Tensor& t, int peer) override {
    check_mpi(MPI_Send(t.raw(), to_count(t.numel(), "send"), mpi_type(t.dtype()), peer, kTag, comm_), "send");
  }

  void do_recv(Tensor& t, int peer) override {
    MPI_Status status;
    check_mpi(MPI_Recv(t.raw(), to_count(t.numel(), "recv"), mpi_type(t.dtype()), peer, kTag, comm_, &status), "recv");
    check_received(status, t, peer, "recv");
  }

  void do_send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) override {
    MPI_Status status;
    check_mpi(MPI_Sendrecv(to_send.raw(), to_count(to_send.numel(), "send_recv"), mpi_type(to_send.dtype()), dst, kTag,
                           to_recv.raw(), to_count(to_recv.numel(), "send_recv"), mpi_type(to_recv.dtype()), src, kTag,
                           comm_, &status),
              "send_recv");
    check_received(status, to_recv, src, "send_recv");
  }

  void do_barrier() override { check_mpi(MPI_Barrier(comm_), "barrier"); }

  std::unique_ptr<Communicator> do_split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "split");
    return std::make_unique<MpiCommunicator>(sub);
  }

 private:
  // MPI reports a longer message as an error but accepts a shorter one silently.
  void check_received(const MPI_Status& status, const Tensor& t, int peer, const char* op) const {
    int count = 0;
    MPI_Get_count(&status, mpi_type(t.dtype()), &count);
    G4_CHECK(count == t.numel(), "mpi ", op, ": rank ", rank_, " expected ", t.describe(), " (", t.numel(),
             " elements) from rank ", peer, " but received ", count, " elements");
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  ensure_mpi();
  MPI_Comm world = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &world), "comm_dup");
  return std::make_unique<MpiCommunicator>(world);
}

}  // namespace g4::parallel

#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "core/cuda/runtime.h"

namespace g4::parallel {

namespace {

void check_cuda(cudaError_t rc, const char* op) {
  G4_CHECK(rc == cudaSuccess, "nccl ", op, ": CUDA error ", cudaGetErrorName(rc), ": ", cudaGetErrorString(rc));
}

void check_nccl(ncclResult_t rc, const char* op, ncclComm_t comm = nullptr) {
  if (rc == ncclSuccess) return;
  const char* detail = comm ? ncclGetLastError(comm) : nullptr;
  G4_FAIL("nccl ", op, ": ", ncclGetErrorString(rc), detail && *detail ? std::string(" (") + detail + ")" : "");
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::BF16:
      return ncclBfloat16;
    case DType::I32:
      return ncclInt32;
    case DType::I64:
      return ncclInt64;
    case DType::U8:
      return ncclUint8;
    default:
      G4_FAIL("nccl: no NCCL datatype for ", dtype_name(t));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::Sum ? ncclSum : ncclMax;
}

size_t count(const Tensor& t) {
  return static_cast<size_t>(t.numel());
}

int64_t row_elements(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

// NVLink multicast can take a shared host's GPUs out of service; g4 never turns it on.
void keep_nvls_off() {
  const char* value = std::getenv("NCCL_NVLS_ENABLE");
  if (!value) {
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    return;
  }
  G4_CHECK(std::strcmp(value, "0") == 0, "nccl: NCCL_NVLS_ENABLE=", value,
           ": g4 keeps NVLink multicast (NVLS) off; unset it or set it to 0");
}

// An asynchronous collective on the communicator's stream. wait() orders g4's compute stream
// after it (cudaStreamWaitEvent): the host does not block, and the tensors it holds may be freed
// afterwards because the caching allocator reuses memory in compute-stream order.
class NcclPending final : public PendingCollective {
 public:
  NcclPending(cudaEvent_t done, Tensor in, Tensor out) : done_(done), in_(std::move(in)), out_(std::move(out)) {}
  ~NcclPending() override {
    if (done_) {
      cudaStreamWaitEvent(g4::cuda::stream(), done_, 0);
      cudaEventDestroy(done_);
    }
  }
  void wait() override {
    if (!done_) return;
    check_cuda(cudaStreamWaitEvent(g4::cuda::stream(), done_, 0), "wait");
    check_cuda(cudaEventDestroy(done_), "wait");
    done_ = nullptr;
    in_ = Tensor();
    out_ = Tensor();
  }

 private:
  cudaEvent_t done_;
  Tensor in_, out_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int cuda_device) : comm_(comm), device_(cuda_device) {
    check_cuda(cudaSetDevice(device_), "set_device");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream_create");
    check_nccl(ncclCommUserRank(comm_, &rank_), "comm_user_rank", comm_);
    check_nccl(ncclCommCount(comm_, &size_), "comm_count", comm_);
  }
  ~NcclCommunicator() override {
    // Unwinding from an error: peers may never post the collectives this rank's queued work waits
    // for, and ncclCommDestroy would wait with them; abort instead, so the error reaches main and
    // the job is ended (parallel::abort_job_if_ranks).
    if (std::uncaught_exceptions() > 0) {
      ncclCommAbort(comm_);
    } else {
      ncclCommDestroy(comm_);
    }
    if (scratch_) cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }
  Device device() const override { return Device::CUDA; }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "synchronize"); }

 protected:
  void do_all_reduce(Tensor& t, ReduceOp op) override {
    after_compute("all_reduce");
    check_nccl(ncclAllReduce(t.raw(), t.raw(), count(t), nccl_type(t.dtype()), nccl_op(op), comm_, stream_),
               "all_reduce", comm_);
    compute_after("all_reduce");
  }

  void do_all_gather(const Tensor& in, Tensor& out) override {
    after_compute("all_gather");
    check_nccl(ncclAllGather(in.raw(), out.raw(), count(in), nccl_type(in.dtype()), comm_, stream_), "all_gather",
               comm_);
    compute_after("all_gather");
  }

  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    after_compute("reduce_scatter");
    check_nccl(ncclReduceScatter(in.raw(), out.raw(), count(out), nccl_type(in.dtype()), nccl_op(op), comm_, stream_),
               "reduce_scatter", comm_);
    compute_after("reduce_scatter");
  }

  CollectiveHandle do_all_gather_async(const Tensor& in, Tensor& out) override {
    after_compute("all_gather_async");
    check_nccl(ncclAllGather(in.raw(), out.raw(), count(in), nccl_type(in.dtype()), comm_, stream_),
               "all_gather_async", comm_);
    return std::make_unique<NcclPending>(record_done("all_gather_async"), in, out);
  }

  CollectiveHandle do_reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    after_compute("reduce_scatter_async");
    check_nccl(ncclReduceScatter(in.raw(), out.raw(), count(out), nccl_type(in.dtype()), nccl_op(op), comm_, stream_),
               "reduce_scatter_async", comm_);
    return std::make_unique<NcclPending>(record_done("reduce_scatter_async"), in, out);
  }

  // NCCL has no all-to-all with counts: it is a group of sends and receives, one pair per rank.
  void do_all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                     const std::vector<int64_t>& recv_counts) override {
    after_compute("all_to_all");
    const size_t row_bytes = static_cast<size_t>(row_elements(in)) * dtype_size(in.dtype());
    const size_t row = static_cast<size_t>(row_elements(in));
    const ncclDataType_t type = nccl_type(in.dtype());
    const char* send_base = static_cast<const char*>(in.raw());
    char* recv_base = static_cast<char*>(out.raw());
    size_t send_offset = 0, recv_offset = 0;
    check_nccl(ncclGroupStart(), "all_to_all");
    for (int r = 0; r < size_; ++r) {
      const size_t ns = static_cast<size_t>(send_counts[static_cast<size_t>(r)]);
      const size_t nr = static_cast<size_t>(recv_counts[static_cast<size_t>(r)]);
      if (ns > 0) check_nccl(ncclSend(send_base + send_offset, ns * row, type, r, comm_, stream_), "all_to_all", comm_);
      if (nr > 0) check_nccl(ncclRecv(recv_base + recv_offset, nr * row, type, r, comm_, stream_), "all_to_all", comm_);
      send_offset += ns * row_bytes;
      recv_offset += nr * row_bytes;
    }
    check_nccl(ncclGroupEnd(), "all_to_all", comm_);
    compute_after("all_to_all");
  }

  // Counts live on the host; they travel through a small device buffer and are back when this returns.
  std::vector<int64_t> do_exchange_counts(const std::vector<int64_t>& send_counts) override {
    const size_t n = static_cast<size_t>(size_);
    const size_t bytes = n * sizeof(int64_t);
    int64_t* send = scratch();
    int64_t* recv = send + n;
    check_cuda(cudaMemcpyAsync(send, send_counts.data(), bytes, cudaMemcpyHostToDevice, stream_), "exchange_counts");
    check_nccl(ncclGroupStart(), "exchange_counts");
    for (int r = 0; r < size_; ++r) {
      check_nccl(ncclSend(send + r, 1, ncclInt64, r, comm_, stream_), "exchange_counts", comm_);
      check_nccl(ncclRecv(recv + r, 1, ncclInt64, r, comm_, stream_), "exchange_counts", comm_);
    }
    check_nccl(ncclGroupEnd(), "exchange_counts", comm_);
    std::vector<int64_t> result(n);
    check_cuda(cudaMemcpyAsync(result.data(), recv, bytes, cudaMemcpyDeviceToHost, stream_), "exchange_counts");
    synchronize();
    return result;
  }

  void do_broadcast(Tensor& t, int root) override {
    after_compute("broadcast");
    check_nccl(ncclBroadcast(t.raw(), t.raw(), count(t), nccl_type(t.dtype()), root, comm_, stream_), "broadcast",
               comm_);
    compute_after("broadcast");
  }

  void do_send(const Tensor& t, int peer) override {
    after_compute("send");
    check_nccl(ncclSend(t.raw(), count(t), nccl_type(t.dtype()), peer, comm_, stream_), "send", comm_);
    compute_after("send");
  }

  void do_recv(Tensor& t, int peer) override {
    after_compute("recv");
    check_nccl(ncclRecv(t.raw(), count(t), nccl_type(t.dtype()), peer, comm_, stream_), "recv", comm_);
    compute_after("recv");
  }

  void do_send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) override {
    after_compute("send_recv");
    check_nccl(ncclGroupStart(), "send_recv");
    check_nccl(ncclSend(to_send.raw(), count(to_send), nccl_type(to_send.dtype()), dst, comm_, stream_), "send_recv",
               comm_);
    check_nccl(ncclRecv(to_recv.raw(), count(to_recv), nccl_type(to_recv.dtype()), src, comm_, stream_), "send_recv",
               comm_);
    check_nccl(ncclGroupEnd(), "send_recv", comm_);
    compute_after("send_recv");
  }

  // NCCL has no barrier: a one-element all-reduce, waited for, is one.
  void do_barrier() override {
    check_nccl(ncclAllReduce(scratch(), scratch(), 1, ncclInt64, ncclSum, comm_, stream_), "barrier", comm_);
    synchronize();
  }

  std::unique_ptr<Communicator> do_split(int color, int key) override {
    ncclComm_t sub = nullptr;
    check_nccl(ncclCommSplit(comm_, color, key, &sub, nullptr), "split", comm_);
    return std::make_unique<NcclCommunicator>(sub, device_);
  }

 private:
  // 2 x size zeroed int64s on the device: the counts exchange and the barrier use them.
  int64_t* scratch() {
    if (!scratch_) {
      const size_t bytes = 2 * sizeof(int64_t) * static_cast<size_t>(size_);
      check_cuda(cudaMalloc(&scratch_, bytes), "scratch alloc");
      check_cuda(cudaMemsetAsync(scratch_, 0, bytes, stream_), "scratch alloc");
    }
    return static_cast<int64_t*>(scratch_);
  }

  // The communicator's stream waits for the compute stream's work so far (the input is written).
  void after_compute(const char* op) {
    cudaEvent_t ready = nullptr;
    check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), op);
    check_cuda(cudaEventRecord(ready, g4::cuda::stream()), op);
    check_cuda(cudaStreamWaitEvent(stream_, ready, 0), op);
    check_cuda(cudaEventDestroy(ready), op);  // released once it has completed
  }
  // The compute stream waits for what the communicator's stream has queued (the output is written).
  void compute_after(const char* op) {
    cudaEvent_t done = record_done(op);
    check_cuda(cudaStreamWaitEvent(g4::cuda::stream(), done, 0), op);
    check_cuda(cudaEventDestroy(done), op);
  }
  cudaEvent_t record_done(const char* op) {
    cudaEvent_t done = nullptr;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), op);
    check_cuda(cudaEventRecord(done, stream_), op);
    return done;
  }

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int cuda_device) {
  int devices = 0;
  check_cuda(cudaGetDeviceCount(&devices), "device_count");
  G4_CHECK(cuda_device >= 0 && cuda_device < devices, "nccl: rank ", bootstrap.rank(), " asked for GPU ", cuda_device,
           ", but this process sees ", devices, " GPU(s)");
  keep_nvls_off();
  check_cuda(cudaSetDevice(cuda_device), "set_device");

  ncclUniqueId id;
  Tensor id_bytes = Tensor::zeros({static_cast<int64_t>(sizeof(id))}, DType::U8);
  if (bootstrap.rank() == 0) {
    check_nccl(ncclGetUniqueId(&id), "get_unique_id");
    std::memcpy(id_bytes.raw(), &id, sizeof(id));
  }
  bootstrap.broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.raw(), sizeof(id));

  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "comm_init_rank");
  return std::make_unique<NcclCommunicator>(comm, cuda_device);
}

}  // namespace g4::parallel

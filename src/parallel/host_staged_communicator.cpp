#include "parallel/host_staged_communicator.h"

#include <utility>

namespace g4::parallel {

namespace {

// Host copies are synchronous (Tensor::to waits for the compute stream), so a collective sees the
// values the GPU had computed when it was called, and its results are in place when it returns.
class HostStagedCommunicator final : public Communicator {
 public:
  explicit HostStagedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {
    G4_CHECK(inner_ && inner_->device() == Device::CPU, "host-staged communicator: the inner communicator must move CPU "
             "tensors, got ", inner_ ? inner_->backend() : "none");
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const char* backend() const override { return "mpi (host-staged)"; }
  Device device() const override { return Device::CUDA; }
  void synchronize() override { inner_->synchronize(); }

 protected:
  static Tensor host(const Tensor& t) { return t.to(Device::CPU); }
  static Tensor host_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), Device::CPU); }

  void do_all_reduce(Tensor& t, ReduceOp op) override {
    Tensor h = host(t);
    inner_->all_reduce(h, op);
    t.copy_from(h);
  }
  void do_all_gather(const Tensor& in, Tensor& out) override {
    Tensor h = host_like(out);
    inner_->all_gather(host(in), h);
    out.copy_from(h);
  }
  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    Tensor h = host_like(out);
    inner_->reduce_scatter(host(in), h, op);
    out.copy_from(h);
  }
  void do_all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                     const std::vector<int64_t>& recv_counts) override {
    Tensor h = host_like(out);
    inner_->all_to_all(host(in), send_counts, h, recv_counts);
    out.copy_from(h);
  }
  std::vector<int64_t> do_exchange_counts(const std::vector<int64_t>& send_counts) override {
    return inner_->exchange_counts(send_counts);
  }
  void do_broadcast(Tensor& t, int root) override {
    Tensor h = host(t);
    inner_->broadcast(h, root);
    t.copy_from(h);
  }
  void do_send(const Tensor& t, int peer) override { inner_->send(host(t), peer); }
  void do_recv(Tensor& t, int peer) override {
    Tensor h = host_like(t);
    inner_->recv(h, peer);
    t.copy_from(h);
  }
  void do_send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) override {
    Tensor h = host_like(to_recv);
    inner_->send_recv(host(to_send), dst, h, src);
    to_recv.copy_from(h);
  }
  void do_barrier() override { inner_->barrier(); }
  std::unique_ptr<Communicator> do_split(int color, int key) override {
    std::unique_ptr<Communicator> part = inner_->split(color, key);
    return part ? std::make_unique<HostStagedCommunicator>(std::move(part)) : nullptr;
  }

  // The inner collective runs on host buffers; wait() completes it and copies the result back.
  class Pending final : public PendingCollective {
   public:
    Pending(CollectiveHandle inner, Tensor host_out, Tensor out)
        : inner_(std::move(inner)), host_out_(std::move(host_out)), out_(std::move(out)) {}
    ~Pending() override {
      if (inner_) inner_->wait();
    }
    void wait() override {
      if (!inner_) return;
      inner_->wait();
      inner_.reset();
      out_.copy_from(host_out_);
    }

   private:
    CollectiveHandle inner_;
    Tensor host_out_, out_;
  };

  CollectiveHandle do_all_gather_async(const Tensor& in, Tensor& out) override {
    Tensor h = host_like(out);
    CollectiveHandle c = inner_->all_gather_async(host(in), h);
    return std::make_unique<Pending>(std::move(c), h, out);
  }
  CollectiveHandle do_reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    Tensor h = host_like(out);
    CollectiveHandle c = inner_->reduce_scatter_async(host(in), h, op);
    return std::make_unique<Pending>(std::move(c), h, out);
  }

 private:
  std::unique_ptr<Communicator> inner_;
};

}  // namespace

std::unique_ptr<Communicator> make_host_staged_communicator(std::unique_ptr<Communicator> inner) {
  return std::make_unique<HostStagedCommunicator>(std::move(inner));
}

}  // namespace g4::parallel

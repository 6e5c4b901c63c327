// The communicator of a one-process run: every collective is the identity (or a copy), so code
// written for N ranks runs unchanged, and bit for bit, on one.
#pragma once
#include "parallel/communicator.h"

namespace g4::parallel {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "single"; }
  Device device() const override { return Device::CPU; }

 protected:
  void do_all_reduce(Tensor& t, ReduceOp op) override {}
  void do_all_gather(const Tensor& in, Tensor& out) override { out.copy_from(in); }
  void do_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override { out.copy_from(in); }
  void do_all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                     const std::vector<int64_t>& recv_counts) override {
    out.copy_from(in);
  }
  void do_broadcast(Tensor& t, int root) override {}
  // Unreachable: with one rank there is no peer, and the public functions reject rank 0 itself.
  void do_send(const Tensor& t, int peer) override { G4_FAIL("single send: no peer in a 1-rank world"); }
  void do_recv(Tensor& t, int peer) override { G4_FAIL("single recv: no peer in a 1-rank world"); }
  void do_send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) override {
    G4_FAIL("single send_recv: no peer in a 1-rank world");
  }
  void do_barrier() override {}
  std::unique_ptr<Communicator> do_split(int color, int key) override { return std::make_unique<SingleCommunicator>(); }
};

}  // namespace g4::parallel

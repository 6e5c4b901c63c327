#include "parallel/communicator.h"

#include <numeric>

namespace g4::parallel {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Max:
      return "max";
  }
  return "?";
}

namespace {

const char* device_name(Device d) {
  return d == Device::CPU ? "CPU" : "CUDA";
}

bool supported_dtype(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F64:
    case DType::BF16:
    case DType::I32:
    case DType::I64:
    case DType::U8:
      return true;
    default:
      return false;
  }
}

// True when the bytes of a and b overlap (the backends need separate input and output buffers).
bool overlaps(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  return a.nbytes() > 0 && b.nbytes() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

Shape with_rows(const Shape& s, int64_t rows) {
  Shape r = s;
  r[0] = rows;
  return r;
}

}  // namespace

void Communicator::check_tensor(const char* op, const char* what, const Tensor& t) const {
  G4_CHECK(t.defined(), backend(), " ", op, ": ", what, " is an undefined tensor");
  G4_CHECK(supported_dtype(t.dtype()), backend(), " ", op, ": ", what, " is ", t.describe(),
           "; communicators move f32, f64, bf16, i32, i64 and u8 tensors");
  G4_CHECK(t.device() == device(), backend(), " ", op, ": ", what, " ", t.describe(), " is a ", device_name(t.device()),
           " tensor; the ", backend(), " communicator moves ", device_name(device()), " tensors");
}

void Communicator::check_peer(const char* op, const char* what, int peer) const {
  G4_CHECK(peer >= 0 && peer < size(), backend(), " ", op, ": ", what, " ", peer, " is not a rank of this ", size(),
           "-rank communicator");
  G4_CHECK(peer != rank(), backend(), " ", op, ": ", what, " ", peer, " is this rank itself");
}

void Communicator::check_counts(const char* op, const char* what, const std::vector<int64_t>& counts,
                                int64_t rows) const {
  G4_CHECK(static_cast<int64_t>(counts.size()) == size(), backend(), " ", op, ": ", what, " has ", counts.size(),
           " entries, expected one per rank (", size(), ")");
  for (size_t r = 0; r < counts.size(); ++r)
    G4_CHECK(counts[r] >= 0, backend(), " ", op, ": ", what, "[", r, "] = ", counts[r], " is negative");
  if (rows >= 0) {
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    G4_CHECK(total == rows, backend(), " ", op, ": ", what, " add up to ", total, " rows, but the tensor has ", rows);
  }
}

void Communicator::all_reduce(Tensor& t, ReduceOp op) {
  check_tensor("all_reduce", "tensor", t);
  do_all_reduce(t, op);
}

void Communicator::check_all_gather(const Tensor& in, const Tensor& out) const {
  check_tensor("all_gather", "in", in);
  check_tensor("all_gather", "out", out);
  G4_CHECK(in.dim() >= 1, backend(), " all_gather: in ", in.describe(), " has no rows (dim 0) to gather");
  const Shape want = with_rows(in.shape(), in.size(0) * size());
  G4_CHECK(out.shape() == want && out.dtype() == in.dtype(), backend(), " all_gather: out is ", out.describe(),
           ", expected ", dtype_name(in.dtype()), shape_str(want), " (", size(), " ranks x in ", in.describe(), ")");
  G4_CHECK(!overlaps(in, out), backend(), " all_gather: in and out overlap; pass separate buffers");
}

void Communicator::check_reduce_scatter(const Tensor& in, const Tensor& out) const {
  check_tensor("reduce_scatter", "in", in);
  check_tensor("reduce_scatter", "out", out);
  G4_CHECK(in.dim() >= 1, backend(), " reduce_scatter: in ", in.describe(), " has no rows (dim 0) to scatter");
  G4_CHECK(in.size(0) % size() == 0, backend(), " reduce_scatter: in ", in.describe(), " has ", in.size(0),
           " rows, not divisible by the ", size(), " ranks");
  const Shape want = with_rows(in.shape(), in.size(0) / size());
  G4_CHECK(out.shape() == want && out.dtype() == in.dtype(), backend(), " reduce_scatter: out is ", out.describe(),
           ", expected ", dtype_name(in.dtype()), shape_str(want), " (in ", in.describe(), " / ", size(), " ranks)");
  G4_CHECK(!overlaps(in, out), backend(), " reduce_scatter: in and out overlap; pass separate buffers");
}

void Communicator::all_gather(const Tensor& in, Tensor& out) {
  check_all_gather(in, out);
  do_all_gather(in, out);
}

void Communicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  check_reduce_scatter(in, out);
  do_reduce_scatter(in, out, op);
}

CollectiveHandle Communicator::all_gather_async(const Tensor& in, Tensor& out) {
  check_all_gather(in, out);
  return do_all_gather_async(in, out);
}

CollectiveHandle Communicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  check_reduce_scatter(in, out);
  return do_reduce_scatter_async(in, out, op);
}

namespace {
// The handle of a collective that finished before its start function returned.
class Finished final : public PendingCollective {
 public:
  void wait() override {}
};
}  // namespace

CollectiveHandle Communicator::do_all_gather_async(const Tensor& in, Tensor& out) {
  do_all_gather(in, out);
  return std::make_unique<Finished>();
}

CollectiveHandle Communicator::do_reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  do_reduce_scatter(in, out, op);
  return std::make_unique<Finished>();
}

void Communicator::all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                              const std::vector<int64_t>& recv_counts) {
  check_tensor("all_to_all", "in", in);
  check_tensor("all_to_all", "out", out);
  G4_CHECK(in.dim() >= 1 && out.dim() >= 1, backend(), " all_to_all: in ", in.describe(), " and out ", out.describe(),
           " need rows (dim 0)");
  G4_CHECK(out.dtype() == in.dtype() && with_rows(out.shape(), 0) == with_rows(in.shape(), 0), backend(),
           " all_to_all: out ", out.describe(), " and in ", in.describe(), " differ beyond dim 0");
  check_counts("all_to_all", "send_counts", send_counts, in.size(0));
  check_counts("all_to_all", "recv_counts", recv_counts, out.size(0));
  G4_CHECK(!overlaps(in, out), backend(), " all_to_all: in and out overlap; pass separate buffers");
  do_all_to_all(in, send_counts, out, recv_counts);
}

std::vector<int64_t> Communicator::exchange_counts(const std::vector<int64_t>& send_counts) {
  check_counts("exchange_counts", "send_counts", send_counts, -1);
  return do_exchange_counts(send_counts);
}

std::vector<int64_t> Communicator::do_exchange_counts(const std::vector<int64_t>& send_counts) {
  const int64_t n = size();
  const Tensor send = Tensor::from_vector(send_counts, {n});
  Tensor recv = Tensor::empty({n}, DType::I64);
  const std::vector<int64_t> one_each(static_cast<size_t>(n), 1);
  do_all_to_all(send, one_each, recv, one_each);
  return std::vector<int64_t>(recv.data<int64_t>(), recv.data<int64_t>() + n);
}

void Communicator::broadcast(Tensor& t, int root) {
  check_tensor("broadcast", "tensor", t);
  G4_CHECK(root >= 0 && root < size(), backend(), " broadcast: root ", root, " is not a rank of this ", size(),
           "-rank communicator");
  do_broadcast(t, root);
}

void Communicator::send(const Tensor& t, int peer) {
  check_tensor("send", "tensor", t);
  check_peer("send", "destination", peer);
  do_send(t, peer);
}

void Communicator::recv(Tensor& t, int peer) {
  check_tensor("recv", "tensor", t);
  check_peer("recv", "source", peer);
  do_recv(t, peer);
}

void Communicator::send_recv(const Tensor& to_send, int dst, Tensor& to_recv, int src) {
  check_tensor("send_recv", "sent tensor", to_send);
  check_tensor("send_recv", "received tensor", to_recv);
  check_peer("send_recv", "destination", dst);
  check_peer("send_recv", "source", src);
  G4_CHECK(!overlaps(to_send, to_recv), backend(), " send_recv: the sent and received tensors overlap");
  do_send_recv(to_send, dst, to_recv, src);
}

void Communicator::barrier() {
  do_barrier();
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) {
  G4_CHECK(color >= 0, backend(), " split: color ", color, " is negative; every rank joins a group (color >= 0)");
  return do_split(color, key);
}

Tensor Communicator::all_gather(const Tensor& in) {
  G4_CHECK(device() == Device::CPU, backend(), " all_gather: allocating forms need CPU tensors; pass `out`");
  check_tensor("all_gather", "in", in);
  G4_CHECK(in.dim() >= 1, backend(), " all_gather: in ", in.describe(), " has no rows (dim 0) to gather");
  Tensor out = Tensor::empty(with_rows(in.shape(), in.size(0) * size()), in.dtype());
  all_gather(in, out);
  return out;
}

Tensor Communicator::reduce_scatter(const Tensor& in, ReduceOp op) {
  G4_CHECK(device() == Device::CPU, backend(), " reduce_scatter: allocating forms need CPU tensors; pass `out`");
  check_tensor("reduce_scatter", "in", in);
  G4_CHECK(in.dim() >= 1, backend(), " reduce_scatter: in ", in.describe(), " has no rows (dim 0) to scatter");
  Tensor out = Tensor::empty(with_rows(in.shape(), in.size(0) / size()), in.dtype());
  reduce_scatter(in, out, op);
  return out;
}

Tensor Communicator::all_to_all(const Tensor& in, const std::vector<int64_t>& send_counts,
                                std::vector<int64_t>* recv_counts) {
  G4_CHECK(device() == Device::CPU, backend(), " all_to_all: allocating forms need CPU tensors; pass `out`");
  check_tensor("all_to_all", "in", in);
  G4_CHECK(in.dim() >= 1, backend(), " all_to_all: in ", in.describe(), " has no rows (dim 0) to exchange");
  check_counts("all_to_all", "send_counts", send_counts, in.size(0));
  const std::vector<int64_t> counts = exchange_counts(send_counts);
  Tensor out =
      Tensor::empty(with_rows(in.shape(), std::accumulate(counts.begin(), counts.end(), int64_t{0})), in.dtype());
  all_to_all(in, send_counts, out, counts);
  if (recv_counts) *recv_counts = counts;
  return out;
}

void all_reduce_values(Communicator& c, Tensor& t, ReduceOp op) {
  if (!t.defined() || t.device() == c.device()) return c.all_reduce(t, op);
  Tensor there = t.to(c.device());
  c.all_reduce(there, op);
  t.copy_from(there);  // a copy to the host waits for the collective (ordered on the compute stream)
}

void broadcast_values(Communicator& c, Tensor& t, int root) {
  if (!t.defined() || t.device() == c.device()) return c.broadcast(t, root);
  Tensor there = t.to(c.device());
  c.broadcast(there, root);
  t.copy_from(there);
}

void all_gather_values(Communicator& c, const Tensor& in, Tensor& out) {
  if (!in.defined() || !out.defined() || (in.device() == c.device() && out.device() == c.device()))
    return c.all_gather(in, out);
  Tensor there = Tensor::empty(out.shape(), out.dtype(), c.device());
  c.all_gather(in.to(c.device()), there);
  out.copy_from(there);
}

Tensor on_device_of(const Communicator& comm, const Tensor& t) {
  return t.device() == comm.device() ? t : t.to(comm.device());
}

}  // namespace g4::parallel

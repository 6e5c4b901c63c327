#include "parallel/expert_parallel.h"

#include <any>
#include <numeric>

#include "autograd/functions.h"
#include "ops/embedding.h"

namespace g4::parallel {

namespace {

Shape with_rows(const Shape& s, int64_t rows) {
  Shape r = s;
  r[0] = rows;
  return r;
}

int64_t total(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

// out[i] = x[rows[i]] on x's device (a row gather: ops::embedding over x seen as [rows, row size]).
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  const int64_t n = x.size(0), row = n > 0 ? x.numel() / n : 0;
  const Tensor ids = Tensor::from_vector<int64_t>(rows, {static_cast<int64_t>(rows.size())});
  return ops::embedding(x.reshape({n, row}), ids).reshape(with_rows(x.shape(), static_cast<int64_t>(rows.size())));
}

// Differentiable reordering of x's rows: out[i] = x[order[i]], order a permutation of x's rows.
// Its gradient puts each row back: dx[order[i]] = dout[i], the gather by the inverse permutation.
ag::Var permute_rows(const ag::Var& x, std::vector<int64_t> order) {
  const bool rec = ag::should_record({&x});
  ag::Var out(gather_rows(x.value(), order), rec);
  if (rec) {
    std::vector<int64_t> inverse(order.size());
    for (size_t i = 0; i < order.size(); ++i) inverse[static_cast<size_t>(order[i])] = static_cast<int64_t>(i);
    auto xi = x.impl(), oi = out.impl();
    ag::record({oi},
               [xi, oi, inverse = std::move(inverse)] { ag::accumulate_grad(xi, gather_rows(oi->grad, inverse)); });
  }
  return out;
}

// What the dispatch of one MoE layer moves, seen from this rank of a G-rank group holding
// experts [rank*El, (rank+1)*El).
struct DispatchPlan {
  std::vector<int64_t> send_counts;  // [G] token copies sent to each rank
  std::vector<int64_t> recv_counts;  // [G] rows received from each rank
  // The received rows arrive grouped by source rank, each group sorted by local expert.
  // expert_order lists them grouped by local expert instead (source rank order within an
  // expert), which is what the grouped matmul needs; offsets[j] .. offsets[j+1] are expert j's.
  std::vector<int64_t> expert_order;
  std::vector<int64_t> offsets;  // [El + 1]
};

// Exchanges per-expert counts (collective): each rank tells each peer how many of its token
// copies go to each of the peer's experts. That fixes both the row counts of the all-to-alls and
// how the received rows are laid out. The counts come from the plan's host offsets and are used on
// the host; a GPU group moves the [G, El] table through the device (one small all-to-all).
DispatchPlan plan_dispatch(Communicator& ep, const ops::MoePlan& plan) {
  const int64_t G = ep.size(), El = plan.experts / G;
  G4_CHECK(plan.has_host_offsets(), "expert parallelism: the MoE plan has no host offsets (moe_plan with "
           "host_offsets = false); the dispatch sizes its exchanges by them");
  Tensor send = Tensor::empty({G, El}, DType::I64);
  int64_t* s = send.data<int64_t>();
  for (int64_t e = 0; e < plan.experts; ++e) s[e] = plan.offsets[e + 1] - plan.offsets[e];
  Tensor recv_dev = Tensor::empty({G, El}, DType::I64, ep.device());
  const std::vector<int64_t> one_row_each(static_cast<size_t>(G), 1);
  ep.all_to_all(on_device_of(ep, send), one_row_each, recv_dev, one_row_each);
  const Tensor recv = recv_dev.to(Device::CPU);
  const int64_t* r = recv.data<int64_t>();  // r[src * El + j]: rows from rank src for local expert j

  DispatchPlan d;
  std::vector<int64_t> src_start;  // first received row from each source rank
  for (int64_t g = 0; g < G; ++g) {
    d.send_counts.push_back(plan.offsets[(g + 1) * El] - plan.offsets[g * El]);
    d.recv_counts.push_back(std::accumulate(r + g * El, r + (g + 1) * El, int64_t{0}));
    src_start.push_back(g == 0 ? 0 : src_start.back() + d.recv_counts[static_cast<size_t>(g - 1)]);
  }
  d.offsets.push_back(0);
  for (int64_t j = 0; j < El; ++j) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t first = src_start[static_cast<size_t>(g)] + std::accumulate(r + g * El, r + g * El + j, int64_t{0});
      for (int64_t i = 0; i < r[g * El + j]; ++i) d.expert_order.push_back(first + i);
    }
    d.offsets.push_back(static_cast<int64_t>(d.expert_order.size()));
  }
  return d;
}

}  // namespace

ag::Var all_to_all(Communicator& comm, const ag::Var& x, const std::vector<int64_t>& send_counts,
                   const std::vector<int64_t>& recv_counts) {
  const Tensor& in = x.value();
  G4_CHECK(in.dim() >= 1, "all_to_all: ", in.describe(), " has no rows to exchange");
  Tensor out = Tensor::empty(with_rows(in.shape(), total(recv_counts)), in.dtype(), in.device());
  comm.all_to_all(in, send_counts, out, recv_counts);
  const bool rec = ag::should_record({&x});
  ag::Var y(std::move(out), rec);
  if (rec) {
    auto xi = x.impl(), yi = y.impl();
    ag::record_collective({yi}, [&comm, xi, yi, send_counts, recv_counts] {
      const Tensor& y = yi->value;
      // The gradient travels in the rows' dtype (a bf16 model's activation gradients are bf16).
      const Tensor dy = yi->grad.defined() ? (yi->grad.dtype() == y.dtype() ? yi->grad : yi->grad.to(y.dtype()))
                                           : Tensor::zeros(y.shape(), y.dtype(), y.device());
      Tensor dx = Tensor::empty(xi->value.shape(), xi->value.dtype(), xi->value.device());
      comm.all_to_all(dy, recv_counts, dx, send_counts);
      ag::accumulate_grad(xi, dx);
    });
  }
  return y;
}

ag::Var expert_parallel_moe(Communicator& ep, const ag::Var& tokens, const ag::Var& weights, const ops::MoePlan& plan,
                            const ag::Var& gate_up, const ag::Var& down, std::vector<int64_t>* local_expert_tokens) {
  ExpertParallel dispatcher(ep, plan.experts);
  return model::routed_experts(dispatcher, {0, tokens, weights, plan, dispatcher.local_experts()}, gate_up, down,
                               local_expert_tokens);
}

ExpertParallel::ExpertParallel(Communicator& ep, int64_t num_experts)
    : ep_(ep), num_experts_(num_experts), local_(expert_range(num_experts, ep.rank(), ep.size())) {}

model::TokenDispatcher::Rows ExpertParallel::dispatch(const Inputs& in) {
  // Checked before anything is sent, so every rank fails alike and none waits.
  G4_CHECK(in.plan.experts == num_experts_, "expert parallelism: layer ", in.layer, " routes over ", in.plan.experts,
           " experts, the dispatch was made for ", num_experts_);
  G4_CHECK(in.experts.begin == local_.begin && in.experts.count == local_.count, "expert parallelism: layer ", in.layer,
           " holds experts [", in.experts.begin, ", ", in.experts.begin + in.experts.count, "), but rank ", ep_.rank(),
           " of the ", ep_.size(), "-rank group owns [", local_.begin, ", ", local_.begin + local_.count, ")");
  DispatchPlan d = plan_dispatch(ep_, in.plan);
  // Token copies sorted by global expert id are sorted by owning rank too: send them there.
  const ag::Var received = all_to_all(ep_, ag::moe_permute(in.tokens, in.plan), d.send_counts, d.recv_counts);
  Rows rows{permute_rows(received, d.expert_order), d.offsets, Tensor(), {}};
  rows.route = std::move(d);
  return rows;
}

ag::Var ExpertParallel::combine(const Inputs& in, const Rows& rows, const ag::Var& out) {
  const auto& d = std::any_cast<const DispatchPlan&>(rows.route);
  // Results back to the ranks the tokens came from, in the order they were sent.
  std::vector<int64_t> arrival_order(d.expert_order.size());
  for (size_t i = 0; i < d.expert_order.size(); ++i)
    arrival_order[static_cast<size_t>(d.expert_order[i])] = static_cast<int64_t>(i);
  const ag::Var returned = all_to_all(ep_, permute_rows(out, std::move(arrival_order)), d.recv_counts, d.send_counts);
  return ag::moe_unpermute(returned, in.weights, in.plan);
}

void enable_expert_parallel(model::Gemma4& model, Communicator& ep) {
  const io::ModelConfig& cfg = model.config();
  G4_CHECK(cfg.enable_moe_block && cfg.num_experts > 0,
           "expert parallelism needs an MoE model; this config has no routed experts");
  auto dispatcher = std::make_shared<ExpertParallel>(ep, cfg.num_experts);
  const model::ExpertRange want = dispatcher->local_experts(), held = model.experts();
  G4_CHECK(held.begin == want.begin && held.count == want.count, "expert parallelism: the model holds experts [",
           held.begin, ", ", held.begin + held.count, ") but rank ", ep.rank(), " of a ", ep.size(),
           "-rank expert-parallel group owns [", want.begin, ", ", want.begin + want.count,
           "); load it with load_hf_model(dir, expert_range(config, ", ep.rank(), ", ", ep.size(), "))");
  model.set_token_dispatcher(std::move(dispatcher));
}

}  // namespace g4::parallel

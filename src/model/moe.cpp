#include "model/moe.h"

#include <cmath>

#include "autograd/functions.h"

namespace g4::model {

Routing route(const ag::Var& x, const ag::Var& scale, const ag::Var& proj, int64_t top_k, double eps,
              bool make_plan, bool host_offsets) {
  const int64_t H = x.shape()[1];
  return route_normed(ag::scale(ag::rmsnorm(x, scale, eps), std::pow(static_cast<double>(H), -0.5)), proj, top_k,
                      make_plan, host_offsets);
}

Routing route_normed(const ag::Var& z, const ag::Var& proj, int64_t top_k, bool make_plan, bool host_offsets) {
  Routing r;
  r.probs = ag::softmax_lastdim(ag::linear(z, proj));
  r.weights = ag::router_topk(r.probs, top_k, r.indices);
  if (make_plan) r.plan = ops::moe_plan(r.indices, proj.shape()[0], host_offsets);
  return r;
}

ag::Var load_balancing_loss(const Routing& r) {
  const int64_t T = r.plan.tokens, E = r.plan.experts;
  Tensor f = Tensor::zeros({1, E}, DType::F64);
  for (int64_t e = 0; e < E; ++e)
    f.data<double>()[e] =
        static_cast<double>(r.plan.offsets[e + 1] - r.plan.offsets[e]) / static_cast<double>(T * r.plan.top_k);
  f = f.to(r.probs.value().dtype()).to(r.probs.value().device());
  return ag::scale(ag::sum_all(ag::linear(r.probs, ag::Var(f))), static_cast<double>(E) / static_cast<double>(T));
}

ag::Var expert_mlp(const ag::Var& rows, const ag::Var& gate_up, const ag::Var& down,
                   const std::vector<int64_t>& offsets, const Tensor& device_offsets, const ExpertLora& lora) {
  auto grouped = [&](const ag::Var& x, const ag::Var& w) { return ag::grouped_matmul(x, w, offsets, device_offsets); };
  auto adapted = [&](const ag::Var& x, const ag::Var& w, const ExpertLora::Pair& ab, bool is_down) {
    const ag::Var y = grouped(x, w);
    if (!ab.a.defined()) return y;
    const ag::Var in = lora.dropout ? lora.dropout(x, is_down) : x;
    return ag::add(y, ag::scale(grouped(grouped(in, ab.a), ab.b), lora.scaling));
  };
  const ag::Var act = ag::gelu_gate_fused(adapted(rows, gate_up, lora.gate_up, false));
  return adapted(act, down, lora.down, true);
}

TokenDispatcher::Rows LocalDispatcher::dispatch(const Inputs& in) {
  const ExpertRange& held = in.experts;
  G4_CHECK(held.begin == 0 && held.count == in.plan.experts, "this model holds experts [", held.begin, ", ",
           held.begin + held.count, ") of ", in.plan.experts,
           " only; tokens routed to the others need expert parallelism (parallel::enable_expert_parallel with the "
           "expert-parallel group)");
  return {ag::moe_permute(in.tokens, in.plan), in.plan.offsets, in.plan.device_offsets, {}};
}

ag::Var LocalDispatcher::combine(const Inputs& in, const Rows&, const ag::Var& out) {
  return ag::moe_unpermute(out, in.weights, in.plan);
}

ag::Var routed_experts(TokenDispatcher& dispatcher, const TokenDispatcher::Inputs& in, const ag::Var& gate_up,
                       const ag::Var& down, std::vector<int64_t>* expert_tokens, const ExpertLora& lora) {
  // Checked before dispatching: a collective dispatcher must fail on every rank alike, not wait.
  const int64_t held = in.experts.count;
  G4_CHECK(gate_up.value().dim() == 3 && gate_up.shape()[0] == held && down.value().dim() == 3 &&
               down.shape()[0] == held,
           "MoE layer ", in.layer, ": the model holds experts [", in.experts.begin, ", ", in.experts.begin + held,
           "), but its expert weights are ", gate_up.value().describe(), " and ", down.value().describe());
  const TokenDispatcher::Rows rows = dispatcher.dispatch(in);
  if (expert_tokens) {
    expert_tokens->clear();
    for (size_t j = 0; j + 1 < rows.offsets.size(); ++j) expert_tokens->push_back(rows.offsets[j + 1] - rows.offsets[j]);
  }
  return dispatcher.combine(in, rows, expert_mlp(rows.rows, gate_up, down, rows.offsets, rows.device_offsets, lora));
}

}  // namespace g4::model

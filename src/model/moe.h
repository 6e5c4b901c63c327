// The routed experts of a Gemma 4 MoE layer as three parts: the router picks each token's K
// experts, a TokenDispatcher brings the token copies to the experts this model holds (and their
// results back, weighted, in token order), and the expert MLP runs once over rows grouped by
// expert. Local execution is the identity dispatcher (LocalDispatcher); expert parallelism
// (parallel/expert_parallel.h) is a dispatcher that moves rows between ranks and runs the same
// expert MLP.
#pragma once
#include <any>
#include <cstdint>
#include <functional>
#include <vector>

#include "autograd/variable.h"
#include "model/params.h"
#include "ops/moe.h"

namespace g4::model {

// One MoE layer's routing of T tokens over E experts.
struct Routing {
  ag::Var probs;      // [T, E] router probabilities (the load-balancing loss reads them)
  ag::Var weights;    // [T, K] the K largest probabilities, renormalised to sum 1
  Tensor indices;     // [T, K] i32 their expert ids
  ops::MoePlan plan;  // the T*K token copies sorted by expert id (when asked for)
};

// Gemma 4's router on x [T, H] (the raw residual): softmax(proj · (rmsnorm(x) * scale * H^-1/2))
// and its top-k. proj [E, H], scale [H]. make_plan false leaves `plan` empty: making it copies row
// counts to the host, which ops::moe_experts (inference at decode sizes) does not need.
// host_offsets false makes the plan without that copy (ops::moe_plan), for callers whose grouped
// matmuls read the offsets on the device.
Routing route(const ag::Var& x, const ag::Var& scale, const ag::Var& proj, int64_t top_k, double eps,
              bool make_plan = true, bool host_offsets = true);
// The same from the router's input z = rmsnorm(x) * scale * H^-1/2 [T, H], already computed (a
// fused inference layer computes it with the residual: ops::add_rmsnorm_norms).
Routing route_normed(const ag::Var& z, const ag::Var& proj, int64_t top_k, bool make_plan = true,
                     bool host_offsets = true);

// Switch Transformer's load-balancing loss of one layer: E * sum_e f_e * mean_t probs[t, e], f_e
// the fraction of the T*K copies routed to expert e. f is a constant (counts); the gradient flows
// through probs.
ag::Var load_balancing_loss(const Routing& routing);

// LoRA on the expert weights (model/lora.h): an adapted W [E, in, out] computes, for expert e's rows,
// x·W_e + scaling·dropout(x)·A_e·B_e with A [E, in, r] and B [E, r, out], through the grouped GEMMs
// of the same offsets.
struct ExpertLora {
  struct Pair {
    ag::Var a, b;  // undefined: the weight is not adapted
  };
  Pair gate_up, down;
  double scaling = 1;
  // The adapter's input after LoRA dropout (of the down projection's input when `down`); empty: none.
  std::function<ag::Var(const ag::Var& x, bool down)> dropout;
  bool active() const { return gate_up.a.defined() || down.a.defined(); }
};

// The expert MLP, over rows grouped by expert (expert j's rows are [offsets[j], offsets[j + 1])):
// down_j(gelu(gate_j · x) * up_j · x), gate_up [E, H, 2I] (gate | up), down [E, I, H], with the
// LoRA adapters `lora` holds.
// device_offsets: the offsets on the rows' device, when the caller has them (saves an upload).
ag::Var expert_mlp(const ag::Var& rows, const ag::Var& gate_up, const ag::Var& down,
                   const std::vector<int64_t>& offsets, const Tensor& device_offsets = Tensor(),
                   const ExpertLora& lora = {});

// Brings one MoE layer's token copies to the experts this model holds and their results back. A
// dispatcher that exchanges rows between ranks is collective: every rank of its group runs each
// MoE layer through it in the same order.
class TokenDispatcher {
 public:
  struct Inputs {
    int64_t layer = 0;
    ag::Var tokens;       // [T, H] expert inputs (after pre_feedforward_layernorm_2)
    ag::Var weights;      // [T, K] routing weights
    ops::MoePlan plan;    // this rank's token copies sorted by global expert id
    ExpertRange experts;  // the experts this model holds
  };
  // The rows the held experts process, grouped by local expert: expert experts.begin + j gets
  // rows [offsets[j], offsets[j + 1]).
  struct Rows {
    ag::Var rows;
    std::vector<int64_t> offsets;  // [experts.count + 1]
    Tensor device_offsets;         // the offsets on the rows' device, or undefined
    std::any route;                // what the dispatcher needs to send the results back
  };
  virtual ~TokenDispatcher() = default;
  virtual Rows dispatch(const Inputs& in) = 0;
  // out: the experts' results, row for row of rows.rows. Returns [T, H] in this rank's token order:
  // sum_k weights[t, k] * out(copy k of token t).
  virtual ag::Var combine(const Inputs& in, const Rows& rows, const ag::Var& out) = 0;
};

// The identity dispatcher: the model holds every expert, so the copies are only sorted by expert
// and summed back.
class LocalDispatcher final : public TokenDispatcher {
 public:
  Rows dispatch(const Inputs& in) override;
  ag::Var combine(const Inputs& in, const Rows& rows, const ag::Var& out) override;
};

// One MoE layer's routed experts: dispatch, the expert MLP on the held experts (gate_up, down:
// in.experts.count of them, with `lora`'s adapters), combine. expert_tokens, if given, receives how
// many rows each held expert processed.
ag::Var routed_experts(TokenDispatcher& dispatcher, const TokenDispatcher::Inputs& in, const ag::Var& gate_up,
                       const ag::Var& down, std::vector<int64_t>* expert_tokens = nullptr,
                       const ExpertLora& lora = {});

}  // namespace g4::model

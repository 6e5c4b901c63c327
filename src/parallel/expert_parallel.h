// Expert parallelism: the routed experts of every MoE layer are split over the ranks of an EP
// group (expert_range, device_mesh.h), and tokens travel to the experts they chose. Each rank
// routes its own tokens (the router is replicated); the ExpertParallel dispatcher sends each token
// copy to the rank that holds its expert (all-to-all), the rank runs the model's expert MLP on what
// it received, and the dispatcher sends the results back (the reverse all-to-all) and combines
// them with the routing weights in the rank's own token order. The backward pass runs the same
// exchanges in reverse: gradients of the expert weights stay on the rank that holds them;
// gradients of the tokens and routing weights return to the rank the tokens came from.
// The rows live where the group's communicator moves tensors (CPU, or CUDA for GPU ranks); only the
// per-expert counts are read on the host (from the routing plan's host offsets).
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/variable.h"
#include "model/gemma4.h"
#include "model/moe.h"
#include "parallel/communicator.h"
#include "parallel/device_mesh.h"

namespace g4::parallel {

// Differentiable uneven all-to-all (Communicator::all_to_all on x's rows): out has
// sum(recv_counts) rows. Backward sends the gradient rows back the way they came. Recorded as a
// collective, so every rank runs its backward even where no gradient reached the output.
ag::Var all_to_all(Communicator& comm, const ag::Var& x, const std::vector<int64_t>& send_counts,
                   const std::vector<int64_t>& recv_counts);

// One MoE layer's routed experts over the EP group `ep` (collective), outside a model. tokens
// [T, H] and weights [T, K] are this rank's; plan sorts its T*K token copies by global expert id
// (ops::moe_plan over all experts); gate_up [E/G, H, 2I] and down [E/G, I, H] are the experts this
// rank holds. Returns [T, H] = sum_k weights[t, k] * expert_{e(t,k)}(tokens[t]).
// local_expert_tokens, if given, receives how many rows each local expert processed (from every
// rank of the group).
ag::Var expert_parallel_moe(Communicator& ep, const ag::Var& tokens, const ag::Var& weights, const ops::MoePlan& plan,
                            const ag::Var& gate_up, const ag::Var& down,
                            std::vector<int64_t>* local_expert_tokens = nullptr);

// The model::TokenDispatcher of expert parallelism: it only moves rows; the model runs its expert
// MLP on them (model::routed_experts).
class ExpertParallel final : public model::TokenDispatcher {
 public:
  // ep must outlive this object. This rank holds expert_range(num_experts, ep.rank(), ep.size()).
  ExpertParallel(Communicator& ep, int64_t num_experts);
  // Sends each token copy to the rank holding its expert; returns the rows this rank's experts
  // received from every rank, grouped by local expert.
  Rows dispatch(const Inputs& in) override;
  // Sends the experts' results back where the rows came from and sums each token's copies.
  ag::Var combine(const Inputs& in, const Rows& rows, const ag::Var& out) override;
  // The experts this rank holds.
  model::ExpertRange local_experts() const { return local_; }

 private:
  Communicator& ep_;
  int64_t num_experts_;
  model::ExpertRange local_;
};

// Makes `model` run its MoE layers over the EP group `ep`. The model must hold exactly this rank's
// share of the experts (load_hf_model(dir, expert_range(config, ep.rank(), ep.size())) loads it); ep
// must outlive the model's forward and backward passes. Every rank of ep then runs the same forwards
// (and backwards) in step. A one-rank group is allowed (the dispatch then is local).
void enable_expert_parallel(model::Gemma4& model, Communicator& ep);

}  // namespace g4::parallel

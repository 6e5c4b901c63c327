#include "train/train_step.h"

#include <cmath>

namespace g4::train {

namespace {

// The metrics of every rank summed (every rank reports the same names).
void sum_over_ranks(Metrics& m, parallel::Communicator& world) {
  if (world.size() == 1 || m.empty()) return;
  Tensor t = Tensor::zeros({static_cast<int64_t>(m.size())}, DType::F64);
  double* d = t.data<double>();
  for (const auto& [name, value] : m) *d++ = value;
  parallel::all_reduce_values(world, t);
  d = t.data<double>();
  for (auto& [name, value] : m) value = *d++;
}

}  // namespace

void parameters_for(const Objective& objective, Optimizer& optimizer) {
  // A sharded model gathers block by block as it runs, not the whole parameters at once, unless
  // the objective runs it without the hooks that gather.
  if (objective.needs_whole_parameters())
    optimizer.gather_parameters();
  else
    optimizer.release_parameters();
}

StepResult train_step(model::Gemma4& model, Objective& objective, Optimizer& optimizer, const StepBatch& batch,
                      double lr, double max_grad_norm, parallel::Communicator& world, const PhaseMark& mark) {
  StepResult r;
  parameters_for(objective, optimizer);
  for (int64_t i = 0; i < batch.micro_batches(); ++i) {
    MicroLoss micro = objective.forward(model, batch, i);
    if (mark) mark(StepPhase::Forward);
    for (const auto& [name, value] : micro.metrics) r.metrics[name] += value;
    for (const auto& [layer, counts] : micro.expert_tokens) {
      std::vector<int64_t>& acc = r.expert_tokens[layer];
      acc.resize(counts.size(), 0);
      for (size_t e = 0; e < counts.size(); ++e) acc[e] += counts[e];
    }
    if (micro.loss.defined())
      ag::backward(micro.loss, micro.weight);
    else
      ag::clear_tape();
    if (mark) mark(StepPhase::Backward);
  }
  optimizer.reduce_gradients();
  sum_over_ranks(r.metrics, world);
  r.grad_norm = optimizer.clip_grad_norm(max_grad_norm);
  // Every rank has the same norm and summed metrics, so every rank decides alike.
  r.finite = std::isfinite(r.grad_norm);
  for (const auto& [name, value] : r.metrics) r.finite = r.finite && std::isfinite(value);
  if (r.finite)
    optimizer.step(lr);
  else
    optimizer.skip_step();
  if (mark) mark(StepPhase::Update);
  return r;
}

}  // namespace g4::train

// A small define-by-run tape. A Var holds a value and, after backward(), its gradient. Ops in
// autograd/functions.h append a node to the current thread's tape whenever grad mode is on and
// an input requires a gradient; backward() runs the nodes in reverse order of recording, which
// is a valid topological order because a node can only consume values recorded before it.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace g4::ag {

struct VarImpl {
  Tensor value;
  Tensor grad;  // undefined until some gradient reaches this variable
  bool requires_grad = false;
  // The first gradient is stored without a copy and may alias another tensor; it is copied
  // before anything is accumulated into it in place.
  bool grad_owned = false;
  // Parameters stored in bf16 (the GPU's compute copies) accumulate their gradient in f32, so
  // that summing many contributions (micro-batches, tied weights) loses nothing to rounding.
  bool fp32_grad = false;
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const { return impl_->value; }
  Tensor& mutable_value() { return impl_->value; }
  const Tensor& grad() const { return impl_->grad; }
  // The gradient as a tensor this Var owns exclusively (safe to modify in place).
  Tensor& owned_grad();
  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  void set_requires_grad(bool r) { impl_->requires_grad = r; }
  void zero_grad() { impl_->grad = Tensor(); }
  const Shape& shape() const { return impl_->value.shape(); }
  const std::shared_ptr<VarImpl>& impl() const { return impl_; }

 private:
  std::shared_ptr<VarImpl> impl_;
};

// v's gradient as a tensor v owns exclusively (copied first if it aliases another), for in-place updates.
Tensor& owned_grad(const std::shared_ptr<VarImpl>& v);
// Adds g into v's gradient (allocating it on first use). No-op when v needs no gradient.
// `exclusive`: the caller hands over a tensor nothing else references, so the first gradient may
// later be updated in place without a copy.
void accumulate_grad(const std::shared_ptr<VarImpl>& v, const Tensor& g, bool exclusive = false);

// Records a node: `backward` reads the gradients of `outputs` and accumulates into inputs.
// It runs only if at least one output received a gradient.
void record(std::vector<std::shared_ptr<VarImpl>> outputs, std::function<void()> backward);
// Records a node that runs during backward even when no gradient reached its outputs (`backward`
// must then read them as zeros). Collectives are recorded this way: every rank has to take part
// in the backward exchange, whether or not its own loss depends on the exchanged values.
void record_collective(std::vector<std::shared_ptr<VarImpl>> outputs, std::function<void()> backward);

// True when ops should record (grad mode on and some input requires a gradient).
bool grad_enabled();
bool should_record(std::initializer_list<const Var*> inputs);

// Runs the tape backwards from `loss` (a one-element Var) seeded with d(loss) = seed, then
// clears the tape. Gradients accumulate into Vars' grad() (call zero_grad() between steps).
void backward(const Var& loss, double seed = 1.0);
// Same from any Var, seeded with a gradient of its shape.
void backward(const Var& output, const Tensor& grad);
// Drops every recorded node (e.g. after an evaluation forward that recorded by mistake).
void clear_tape();
size_t tape_size();

// Disables recording for its lifetime (evaluation, decoding).
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

}  // namespace g4::ag

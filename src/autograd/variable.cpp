#include "autograd/variable.h"

#include "ops/elementwise.h"

namespace g4::ag {

namespace {
struct Node {
  std::vector<std::shared_ptr<VarImpl>> outputs;
  std::function<void()> backward;
  bool always_run = false;  // a collective: runs even without output gradients
};
struct Tape {
  std::vector<Node> nodes;
  bool grad_mode = true;
};
thread_local Tape g_tape;
}  // namespace

Var::Var(Tensor value, bool requires_grad) : impl_(std::make_shared<VarImpl>()) {
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

Tensor& owned_grad(const std::shared_ptr<VarImpl>& v) {
  if (v->grad.defined() && !v->grad_owned) {
    v->grad = v->grad.clone();
    v->grad_owned = true;
  }
  return v->grad;
}

Tensor& Var::owned_grad() { return g4::ag::owned_grad(impl_); }

void accumulate_grad(const std::shared_ptr<VarImpl>& v, const Tensor& g, bool exclusive) {
  if (!v || !v->requires_grad || !g.defined()) return;
  G4_CHECK(g.shape() == v->value.shape(), "autograd: gradient ", g.describe(), " for a value ", v->value.describe());
  if (v->fp32_grad && g.dtype() != DType::F32) {
    if (!v->grad.defined()) {
      v->grad = g.to(DType::F32);
      v->grad_owned = true;
    } else {
      if (!v->grad_owned) {
        v->grad = v->grad.clone();
        v->grad_owned = true;
      }
      ops::add_(v->grad, g);  // f32 += bf16
    }
    return;
  }
  if (!v->grad.defined()) {
    v->grad = g;
    v->grad_owned = exclusive;
    return;
  }
  if (!v->grad_owned) {
    v->grad = v->grad.clone();
    v->grad_owned = true;
  }
  ops::add_(v->grad, g);
}

void record(std::vector<std::shared_ptr<VarImpl>> outputs, std::function<void()> backward) {
  g_tape.nodes.push_back(Node{std::move(outputs), std::move(backward), false});
}

void record_collective(std::vector<std::shared_ptr<VarImpl>> outputs, std::function<void()> backward) {
  g_tape.nodes.push_back(Node{std::move(outputs), std::move(backward), true});
}

bool grad_enabled() { return g_tape.grad_mode; }

bool should_record(std::initializer_list<const Var*> inputs) {
  if (!g_tape.grad_mode) return false;
  for (const Var* v : inputs)
    if (v && v->requires_grad()) return true;
  return false;
}

void backward(const Var& loss, double seed) {
  G4_CHECK(loss.defined() && loss.value().numel() == 1, "backward() needs a one-element loss, got ",
           loss.defined() ? loss.value().describe() : "undefined");
  backward(loss, Tensor::full(loss.value().shape(), seed, loss.value().dtype(), loss.value().device()));
}

void backward(const Var& output, const Tensor& grad) {
  G4_CHECK(output.requires_grad(), "backward(): the output does not depend on any value that requires a gradient");
  accumulate_grad(output.impl(), grad);
  // Taking the nodes off the tape first lets a node's backward record and run a tape of its
  // own (activation recompute); nodes also free their captured tensors as soon as they ran.
  std::vector<Node> nodes = std::move(g_tape.nodes);
  g_tape.nodes.clear();
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    bool any = it->always_run;
    for (const auto& o : it->outputs) any = any || (o && o->grad.defined());
    if (any) it->backward();
    it->backward = nullptr;
    // Intermediate gradients are not needed once consumed; leaves (parameters) keep theirs.
    for (const auto& o : it->outputs)
      if (o) o->grad = Tensor();
  }
}

void clear_tape() { g_tape.nodes.clear(); }
size_t tape_size() { return g_tape.nodes.size(); }

NoGrad::NoGrad() : previous_(g_tape.grad_mode) { g_tape.grad_mode = false; }
NoGrad::~NoGrad() { g_tape.grad_mode = previous_; }

}  // namespace g4::ag

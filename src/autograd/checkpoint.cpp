#include "autograd/checkpoint.h"

namespace g4::ag {

Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs) {
  if (!grad_enabled()) return fn(inputs);
  Tensor value;
  {
    NoGrad no_grad;
    value = fn(inputs).value();
  }
  // The block reads parameters that require gradients, so its result always does.
  Var out(value, true);
  std::vector<std::shared_ptr<VarImpl>> ins;
  for (const Var& x : inputs) ins.push_back(x.impl());
  auto oi = out.impl();
  record({oi}, [fn, ins, oi] {
    std::vector<Var> fresh;
    for (const auto& x : ins) fresh.push_back(x ? Var(x->value, x->requires_grad) : Var());
    const Var y = fn(fresh);
    backward(y, oi->grad);
    for (size_t i = 0; i < ins.size(); ++i)
      if (ins[i]) accumulate_grad(ins[i], fresh[i].grad());
  });
  return out;
}

}  // namespace g4::ag

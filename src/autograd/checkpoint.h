// Activation recompute: run a block without keeping its intermediate values, and run it again
// during backward to get them. Same losses and gradients, lower peak memory.
#pragma once
#include <functional>
#include <vector>

#include "autograd/variable.h"

namespace g4::ag {

// fn must be deterministic (it runs twice). Gradients reach `inputs` and every parameter fn
// reads. Values fn produces other than its result (e.g. K/V another layer reuses) are not
// differentiable through this call; keep such blocks out of recompute.
Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs);

}  // namespace g4::ag

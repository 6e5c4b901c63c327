// Learning rate per optimizer step (0-based), as transformers' schedulers compute it: linear
// warmup from 0 over warmup_steps, then cosine or linear decay to min_lr_ratio * lr, or constant.
#pragma once
#include <string>

namespace g4::train {

double learning_rate(const std::string& kind, double lr, int64_t step, int64_t total_steps, int64_t warmup_steps,
                     double min_lr_ratio);

}  // namespace g4::train

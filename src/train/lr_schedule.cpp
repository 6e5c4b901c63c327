#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"

namespace g4::train {

double learning_rate(const std::string& kind, double lr, int64_t step, int64_t total, int64_t warmup, double min_ratio) {
  if (step < warmup) return lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (kind == "constant") return lr;
  const double progress = std::min(
      1.0, static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup)));
  double factor;
  if (kind == "cosine") {
    factor = 0.5 * (1.0 + std::cos(M_PI * progress));
  } else if (kind == "linear") {
    factor = 1.0 - progress;
  } else {
    G4_FAIL("unknown learning-rate schedule '", kind, "'");
  }
  return lr * (min_ratio + (1.0 - min_ratio) * factor);
}

}  // namespace g4::train

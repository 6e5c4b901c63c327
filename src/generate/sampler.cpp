#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/philox.h"

namespace g4::gen {

void validate(const SamplingOptions& opt, OptionStyle style) {
  SamplingParams p;
  p.temperature = opt.temperature;
  p.top_k = opt.top_k;
  p.top_p = opt.top_p;
  validate(p, style);
}

int64_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& opt, uint64_t draw) {
  G4_CHECK(vocab > 0, "sampling from an empty vocabulary");
  if (opt.greedy || opt.temperature <= 0.0) {
    // First maximum wins, as torch.argmax does.
    return std::max_element(logits, logits + vocab) - logits;
  }
  std::vector<int64_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  size_t keep = ids.size();
  if (opt.top_k > 0) keep = std::min(keep, static_cast<size_t>(opt.top_k));
  std::vector<double> p(keep);
  const double top = logits[ids[0]] / opt.temperature;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += p[i] = std::exp(logits[ids[i]] / opt.temperature - top);
  if (opt.top_p < 1.0) {
    // Smallest prefix whose probability reaches top_p (always at least one token).
    double acc = 0;
    size_t n = 0;
    while (n < keep) {
      acc += p[n++] / sum;
      if (acc >= opt.top_p) break;
    }
    keep = n;
    sum = std::accumulate(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  const double u = philox_uniform(opt.seed, 0x5A4D50ull, draw) * sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u <= acc) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace g4::gen

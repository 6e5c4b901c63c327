// The CPU reference of the batched sampler, and the checks both devices share. Log-probs are
// accumulated in double here; the token decisions use generate/sampling_math.h, as the GPU does.
#include "generate/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "generate/sampling_math.h"
#ifdef G4_WITH_CUDA
#include "generate/cuda/sampling.h"
#endif

namespace g4::gen {

std::string option_name(const char* field, OptionStyle style) {
  std::string name = field;
  if (style == OptionStyle::Field) return name;
  for (char& c : name)
    if (c == '_') c = '-';
  return "--" + name;
}

void validate(const SamplingParams& p, OptionStyle style) {
  // Temperature 0 is argmax; NaN would make every probability NaN and infinity every token equal.
  G4_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.0, option_name("temperature", style),
           " must be a finite number >= 0, got ", p.temperature);
  G4_CHECK(p.top_k >= 0, option_name("top_k", style), " must be >= 0 (0 keeps every token), got ", p.top_k);
  G4_CHECK(p.top_p > 0.0 && p.top_p <= 1.0, option_name("top_p", style), " must be in (0, 1], got ", p.top_p);
  G4_CHECK(p.min_p >= 0.0 && p.min_p <= 1.0, option_name("min_p", style), " must be in [0, 1], got ", p.min_p);
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The ids of the n largest values, largest first, lower id on ties.
std::vector<int64_t> top_ids(const float* x, int64_t V, int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [&](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  ids.resize(static_cast<size_t>(n));
  return ids;
}

// The smallest z that top-p keeps among the tokens with z >= floor: groups of equal z, most
// likely first, are kept while the mass of the groups before them is below top_p of the total.
float top_p_cut(const std::vector<float>& z, float floor, double top_p) {
  std::vector<float> kept;
  for (float v : z)
    if (v >= floor) kept.push_back(v);
  std::sort(kept.begin(), kept.end(), std::greater<float>());
  uint64_t total = 0;
  for (float v : kept) total += detail::det_mass(v);
  const double target = top_p * static_cast<double>(total);
  uint64_t above = 0;
  float cut = kept.front();
  for (size_t i = 0; i < kept.size();) {
    if (!(static_cast<double>(above) < target)) break;
    cut = kept[i];
    for (; i < kept.size() && kept[i] == cut; ++i) above += detail::det_mass(kept[i]);
  }
  return cut;
}

SampledToken sample_row(const float* x, int64_t V, const RowSampling& rs, int64_t row) {
  int64_t argmax = -1;
  float m = kNegInf;
  for (int64_t i = 0; i < V; ++i) {
    G4_CHECK(!std::isnan(x[i]) && x[i] != std::numeric_limits<float>::infinity(), "sample_batch: row ", row,
             " has a ", x[i], " logit at token ", i);
    if (x[i] > m) {
      m = x[i];
      argmax = i;
    }
  }
  G4_CHECK(argmax >= 0, "sample_batch: row ", row, " has no finite logit");
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  const double log_sum = std::log(sum);
  auto raw = [&](int64_t i) { return static_cast<float>(static_cast<double>(x[i]) - m - log_sum); };

  SampledToken out;
  out.top_ids = top_ids(x, V, std::min(rs.top_logprobs, V));
  const SamplingParams& p = rs.params;
  const float t = static_cast<float>(p.temperature);
  if (!(t > 0.0f)) {  // 0, or so small that it rounds to 0 in fp32
    out.token = argmax;
    out.logprob = raw(argmax);
    for (int64_t id : out.top_ids) out.top_logprobs.push_back(raw(id));
    return out;
  }

  std::vector<float> z(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) z[i] = (x[i] - m) / t;
  float floor = kNegInf;  // keep z >= floor
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<float> s = z;
    std::nth_element(s.begin(), s.begin() + (p.top_k - 1), s.end(), std::greater<float>());
    floor = s[static_cast<size_t>(p.top_k - 1)];
  }
  if (p.top_p < 1.0) floor = std::max(floor, top_p_cut(z, floor, p.top_p));
  floor = std::max(floor, p.min_p > 0.0 ? static_cast<float>(std::log(p.min_p)) : kNegInf);

  int64_t token = -1;
  float best = kNegInf;
  double kept_sum = 0;
  for (int64_t g = 0; g * 4 < V; ++g) {
    float noise[4];
    detail::race_noise(p.seed, rs.draw, static_cast<uint64_t>(g), noise);
    for (int64_t i = g * 4; i < std::min(V, g * 4 + 4); ++i) {
      if (!(z[i] >= floor)) continue;
      kept_sum += std::exp(static_cast<double>(z[i]));
      const float score = z[i] - noise[i - g * 4];
      if (score > best || token < 0) {
        best = score;
        token = i;
      }
    }
  }
  const double log_kept = std::log(kept_sum);
  auto processed = [&](int64_t i) {
    return z[i] >= floor ? static_cast<float>(static_cast<double>(z[i]) - log_kept) : kNegInf;
  };
  const bool raw_mode = rs.logprob_mode == LogprobMode::kRaw;
  out.token = token;
  out.logprob = raw_mode ? raw(token) : processed(token);
  for (int64_t id : out.top_ids) out.top_logprobs.push_back(raw_mode ? raw(id) : processed(id));
  return out;
}

}  // namespace

std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows) {
  G4_CHECK(logits.defined() && logits.dim() == 2 && logits.dtype() == DType::F32,
           "sample_batch: logits must be f32 [rows, vocab], got ", logits.defined() ? logits.describe() : "undefined");
  const int64_t R = logits.size(0), V = logits.size(1);
  G4_CHECK(static_cast<int64_t>(rows.size()) == R, "sample_batch: ", rows.size(), " row settings for logits ",
           logits.describe());
  G4_CHECK(V > 0 && V < (int64_t{1} << 31), "sample_batch: vocabulary of ", V, " tokens (logits ",
           logits.describe(), ")");
  for (int64_t r = 0; r < R; ++r) {
    validate(rows[r].params);
    G4_CHECK(rows[r].top_logprobs >= 0 && rows[r].top_logprobs <= kMaxTopLogprobs, "sample_batch: row ", r,
             ": top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", rows[r].top_logprobs);
  }
  if (R == 0) return {};
#ifdef G4_WITH_CUDA
  if (logits.device() == Device::CUDA) return cuda::sample_batch(logits, rows);
#endif
  std::vector<SampledToken> out;
  out.reserve(static_cast<size_t>(R));
  const float* x = logits.data<float>();
  for (int64_t r = 0; r < R; ++r) out.push_back(sample_row(x + r * V, V, rows[r], r));
  return out;
}

}  // namespace g4::gen

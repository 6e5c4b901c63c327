#include "rl/advantages.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace g4::rl {

void scale_rewards(std::vector<double>& rewards, const RewardScaling& s) {
  if (!s.enabled) return;
  G4_CHECK(s.source_max > s.source_min, "grpo.reward_scaling: source_max (", s.source_max,
           ") must exceed source_min (", s.source_min, ")");
  for (double& r : rewards) {
    const double c = std::clamp(r, s.source_min, s.source_max);
    r = s.target_min + (c - s.source_min) / (s.source_max - s.source_min) * (s.target_max - s.target_min);
  }
}

void shape_rewards(std::vector<double>& rewards, const std::vector<int64_t>& response_lengths,
                   const OverlongShaping& s) {
  if (!s.enabled) return;
  G4_CHECK(s.overlong_buffer_length > 0, "grpo.reward_shaping.overlong_buffer_length must be > 0, got ",
           s.overlong_buffer_length);
  G4_CHECK(s.overlong_buffer_penalty >= 0, "grpo.reward_shaping.overlong_buffer_penalty must be >= 0, got ",
           s.overlong_buffer_penalty);
  G4_CHECK(s.max_response_length > 0, "grpo.reward_shaping.max_response_length must be > 0, got ",
           s.max_response_length);
  G4_CHECK(response_lengths.size() == rewards.size(), "shape_rewards: ", response_lengths.size(),
           " response lengths for ", rewards.size(), " rewards");
  const auto buffer = static_cast<double>(s.overlong_buffer_length);
  const auto expected = static_cast<double>(s.max_response_length - s.overlong_buffer_length);
  for (size_t i = 0; i < rewards.size(); ++i) {
    const double exceed = static_cast<double>(response_lengths[i]) - expected;
    rewards[i] += std::min(-exceed / buffer * s.overlong_buffer_penalty, 0.0);
  }
}

std::vector<int64_t> group_by_prompt(const std::vector<std::vector<int64_t>>& prompts) {
  std::map<std::vector<int64_t>, int64_t> ids;
  std::vector<int64_t> groups;
  groups.reserve(prompts.size());
  for (const auto& p : prompts) groups.push_back(ids.try_emplace(p, static_cast<int64_t>(ids.size())).first->second);
  return groups;
}

BaselineStd baseline_and_std(const std::vector<double>& rewards, const std::vector<int64_t>& groups,
                             const std::vector<double>& valid, bool leave_one_out,
                             const std::vector<double>& std_rewards) {
  const size_t n = rewards.size();
  const std::vector<double>& sr = std_rewards.empty() ? rewards : std_rewards;
  G4_CHECK(groups.size() == n && valid.size() == n && sr.size() == n, "baseline_and_std: ", n, " rewards, ",
           groups.size(), " group ids, ", valid.size(), " validity flags, ", sr.size(), " std rewards");
  // Per group: Σ valid, Σ valid·r, Σ valid·s, Σ valid·s² (s: the std's reward).
  struct Sums {
    double count = 0, r = 0, s = 0, s2 = 0;
  };
  std::map<int64_t, Sums> sums;
  for (size_t i = 0; i < n; ++i) {
    Sums& g = sums[groups[i]];
    g.count += valid[i];
    g.r += valid[i] * rewards[i];
    g.s += valid[i] * sr[i];
    g.s2 += valid[i] * sr[i] * sr[i];
  }
  BaselineStd out;
  out.baseline.assign(n, 0.0);
  out.std.assign(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    const Sums& g = sums.at(groups[i]);
    if (g.count <= 1) {  // nothing to compare with: the advantage is 0
      out.baseline[i] = rewards[i];
      continue;
    }
    // Leave-one-out drops sample i's own term from every sum and one from the count, whether or not
    // i is valid (NeMo-RL's (1 - I) matrix over the valid-weighted rewards); every recipe passes
    // all samples as valid.
    const double own = leave_one_out ? valid[i] : 0.0;
    const double count = g.count - (leave_one_out ? 1.0 : 0.0);
    const double mean_r = (g.r - own * rewards[i]) / count;
    const double mean_s = (g.s - own * sr[i]) / count;
    const double mean_s2 = (g.s2 - own * sr[i] * sr[i]) / count;
    out.baseline[i] = mean_r;
    // Bessel's correction over `count` values. One value (leave-one-out in a group of two) has no
    // spread: std 0, where NeMo-RL's 0·inf gives NaN, which it maps to 0. A variance that
    // rounding made negative is 0 as well (NaN there too).
    const double var = count > 1 ? (mean_s2 - mean_s * mean_s) * (count / (count - 1)) : 0.0;
    out.std[i] = var > 0 ? std::sqrt(var) : 0.0;
  }
  return out;
}

std::vector<double> grpo_advantages(const std::vector<double>& rewards, const std::vector<int64_t>& groups,
                                    const std::vector<double>& valid, bool normalize, bool leave_one_out) {
  const BaselineStd bs = baseline_and_std(rewards, groups, valid, leave_one_out);
  std::vector<double> a(rewards.size());
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = rewards[i] - bs.baseline[i];
    // A group without spread keeps its raw difference rather than being divided by ~1e-6.
    if (normalize && bs.std[i] > 0) a[i] /= bs.std[i] + 1e-6;
  }
  return a;
}

DynamicSampling::DynamicSampling(int64_t target, int64_t max_rounds) : target_(target), max_rounds_(max_rounds) {
  G4_CHECK(target > 0, "dynamic sampling: the target batch (grpo.num_prompts_per_step x "
           "grpo.num_generations_per_prompt) must be > 0, got ", target);
  G4_CHECK(max_rounds > 0, "grpo.dynamic_sampling_max_gen_batches must be > 0 with grpo.use_dynamic_sampling, got ",
           max_rounds);
}

std::vector<int64_t> DynamicSampling::add_round(const std::vector<double>& std) {
  G4_CHECK(!complete(), "dynamic sampling: the cache already holds its ", target_, " samples");
  ++rounds_;
  std::vector<int64_t> kept;
  for (size_t i = 0; i < std.size(); ++i)
    if (std[i] != 0.0) kept.push_back(static_cast<int64_t>(i));
  const int64_t total = cached_ + static_cast<int64_t>(kept.size());
  if (total < target_) {
    // NeMo-RL allows round max + 1 (its counter is checked with <=) and fails only if that round
    // still leaves the cache short.
    G4_CHECK(rounds_ <= max_rounds_, "dynamic sampling: ", rounds_, " generation rounds (more than "
             "grpo.dynamic_sampling_max_gen_batches = ", max_rounds_, ") gave only ", total, " of the ", target_,
             " samples with a reward spread (std != 0) that a step needs: raise "
             "grpo.dynamic_sampling_max_gen_batches or use prompts the policy solves sometimes, not always or never");
    cached_ = total;
    return kept;
  }
  discarded_ = total - target_;
  kept.resize(static_cast<size_t>(target_ - cached_));
  cached_ = target_;
  return kept;
}

}  // namespace g4::rl

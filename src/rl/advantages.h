// From rewards to advantages, as NeMo-RL's GRPO/DAPO step does it (docs/rl.md):
// reward scaling, DAPO's overlong shaping, groups of samples of one prompt, the GRPO baseline and
// std (optionally leave-one-out), and DAPO's dynamic-sampling filter. Pure functions on the host.
#pragma once
#include <cstdint>
#include <vector>

namespace g4::rl {

// grpo.reward_scaling: r <- clamp(r, source_min, source_max) mapped linearly onto [target_min, target_max].
struct RewardScaling {
  bool enabled = false;
  double source_min = 0, source_max = 1, target_min = 0, target_max = 1;
};
void scale_rewards(std::vector<double>& rewards, const RewardScaling& s);

// grpo.reward_shaping (DAPO's soft overlong punishment): r += min(-(L - (max_response_length -
// buffer)) / buffer * penalty, 0), L = the response's token count.
struct OverlongShaping {
  bool enabled = false;
  int64_t overlong_buffer_length = 0;
  double overlong_buffer_penalty = 1;
  int64_t max_response_length = 0;
};
void shape_rewards(std::vector<double>& rewards, const std::vector<int64_t>& response_lengths, const OverlongShaping& s);

// Group index of every sample: samples whose prompt token rows are identical share a group
// (NeMo-RL groups by identical prompts, not by position; a prompt drawn twice merges its groups).
// Groups are numbered in order of first appearance.
std::vector<int64_t> group_by_prompt(const std::vector<std::vector<int64_t>>& prompts);

struct BaselineStd {
  std::vector<double> baseline, std;  // per sample
};
// calculate_baseline_and_std_per_prompt: the group mean and Bessel-corrected std of the valid
// samples (valid[i] != 0), or with leave_one_out those of the group's other valid samples.
// A group with at most one valid sample has baseline = the reward (advantage 0) and std 0.
// `std_rewards` (may be empty: `rewards`) is what the std is computed from (DAPO: the unshaped reward).
BaselineStd baseline_and_std(const std::vector<double>& rewards, const std::vector<int64_t>& groups,
                             const std::vector<double>& valid, bool leave_one_out,
                             const std::vector<double>& std_rewards = {});

// GRPOAdvantageEstimator: A = r - b, divided by (std + 1e-6) when normalize and std > 0.
std::vector<double> grpo_advantages(const std::vector<double>& rewards, const std::vector<int64_t>& groups,
                                    const std::vector<double>& valid, bool normalize, bool leave_one_out);

// DAPO dynamic sampling across generation rounds of one step: keeps the samples whose group's std
// (of the unshaped reward) is not 0, in order, until `target` samples (prompts per step x
// generations per prompt) are cached; the cache is then cut to exactly `target`.
class DynamicSampling {
 public:
  DynamicSampling(int64_t target, int64_t max_rounds);
  // One round's samples by their std: returns the indices (into this round) kept, appending them
  // to the cache count. Throws g4::Error (naming grpo.dynamic_sampling_max_gen_batches) when a
  // round after round max_rounds still leaves the cache short (NeMo-RL checks rounds <= max, so
  // round max_rounds + 1 may complete the step), and when called on a complete cache.
  std::vector<int64_t> add_round(const std::vector<double>& std);
  bool complete() const { return cached_ >= target_; }
  int64_t rounds() const { return rounds_; }
  int64_t cached() const { return cached_; }
  // Valid samples dropped because the cache was already full (NeMo-RL's
  // dynamic_sampling_num_discarded_valid_samples).
  int64_t discarded() const { return discarded_; }

 private:
  int64_t target_, max_rounds_;
  int64_t rounds_ = 0, cached_ = 0, discarded_ = 0;
};

}  // namespace g4::rl

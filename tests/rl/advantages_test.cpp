// Rewards to advantages (RL.md §2.5, §3): hand-computed groups (leave-one-out, a lone correct
// sample, zero spread, singletons, invalid samples), random groups against the textbook mean and
// Bessel std of the other samples, grouping by identical prompts, reward scaling, overlong shaping
// and DAPO's dynamic-sampling cache.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "rl/advantages.h"

namespace g4 {
namespace {

TEST(Advantages, ScalingClampsThenMapsOntoTheTarget) {
  std::vector<double> r = {0.0, 1.0, 0.25, -0.3, 1.7};
  rl::RewardScaling s;
  rl::scale_rewards(r, s);  // disabled: untouched
  EXPECT_EQ(r, (std::vector<double>{0.0, 1.0, 0.25, -0.3, 1.7}));
  s.enabled = true, s.target_min = -1.0;
  rl::scale_rewards(r, s);
  EXPECT_EQ(r, (std::vector<double>{-1.0, 1.0, -0.5, -1.0, 1.0}));
  s.source_min = 1, s.source_max = 1;
  EXPECT_THROW(rl::scale_rewards(r, s), Error);
}

TEST(Advantages, OverlongShapingAtBelowAndAboveTheBuffer) {
  rl::OverlongShaping s;
  s.enabled = true, s.max_response_length = 100, s.overlong_buffer_length = 20, s.overlong_buffer_penalty = 0.5;
  std::vector<double> r(6, 1.0);
  // Below the buffer, at its start, inside, at the cap, past the cap (not clamped, as in NeMo-RL).
  rl::shape_rewards(r, {10, 79, 80, 90, 100, 110}, s);
  EXPECT_EQ(r, (std::vector<double>{1.0, 1.0, 1.0, 1.0 - 0.25, 0.5, 1.0 - 0.75}));
  std::vector<double> again = r;
  s.enabled = false;
  rl::shape_rewards(again, {100, 100, 100, 100, 100, 100}, s);
  EXPECT_EQ(again, r);
  s.enabled = true;
  EXPECT_THROW(rl::shape_rewards(r, {1, 2}, s), Error);
  s.overlong_buffer_length = 0;
  EXPECT_THROW(rl::shape_rewards(r, {1, 2, 3, 4, 5, 6}, s), Error);
}

TEST(Advantages, GroupsAreIdenticalPromptsIncludingARepeatedPrompt) {
  // Prompt {1, 2} drawn twice (rows 0-1 and 4-5) is one group of four; {1, 2, 0} differs from it.
  const std::vector<std::vector<int64_t>> prompts = {{1, 2}, {1, 2}, {7}, {7}, {1, 2}, {1, 2}, {1, 2, 0}};
  EXPECT_EQ(rl::group_by_prompt(prompts), (std::vector<int64_t>{0, 0, 1, 1, 0, 0, 2}));
}

TEST(Advantages, HandComputedGroups) {
  // Group 0: {1, 0, 0, 1}; group 1: a lone correct sample {1, 0, 0, 0}; group 2: no spread
  // {1, 1, 1}; group 3: a singleton.
  const std::vector<double> r = {1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0.5};
  const std::vector<int64_t> g = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3};
  const std::vector<double> all(r.size(), 1.0);

  const rl::BaselineStd plain = rl::baseline_and_std(r, g, all, false);
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(plain.baseline[i], 0.5);
    EXPECT_DOUBLE_EQ(plain.std[i], std::sqrt(1.0 / 3.0));  // Bessel: (1/2 - 1/4) * 4/3
  }
  const std::vector<double> a = rl::grpo_advantages(r, g, all, true, false);
  EXPECT_DOUBLE_EQ(a[0], 0.5 / (std::sqrt(1.0 / 3.0) + 1e-6));
  EXPECT_DOUBLE_EQ(a[1], -0.5 / (std::sqrt(1.0 / 3.0) + 1e-6));
  EXPECT_DOUBLE_EQ(a[4], 0.75 / (0.5 + 1e-6));  // {1,0,0,0}: mean 1/4, std sqrt(3/16 * 4/3) = 1/2
  for (int i = 8; i < 12; ++i) EXPECT_EQ(a[i], 0.0);  // no spread, singleton

  // Leave-one-out: sample i against the other three.
  const std::vector<double> loo = rl::grpo_advantages(r, g, all, true, true);
  EXPECT_DOUBLE_EQ(loo[0], (1 - 1.0 / 3) / (std::sqrt(1.0 / 3.0) + 1e-6));  // others {0,0,1}
  EXPECT_DOUBLE_EQ(loo[1], (0 - 2.0 / 3) / (std::sqrt(1.0 / 3.0) + 1e-6));  // others {1,0,1}
  // The lone correct sample sees only wrong ones: std 0, so it keeps the raw r - b = 1.
  EXPECT_EQ(loo[4], 1.0);
  EXPECT_DOUBLE_EQ(loo[5], (0 - 1.0 / 3) / (std::sqrt(1.0 / 3.0) + 1e-6));
  for (int i = 8; i < 12; ++i) EXPECT_EQ(loo[i], 0.0);
  // Without normalisation: r - b.
  const std::vector<double> raw = rl::grpo_advantages(r, g, all, false, true);
  EXPECT_DOUBLE_EQ(raw[1], -2.0 / 3);
  EXPECT_DOUBLE_EQ(raw[5], -1.0 / 3);

  // Leave-one-out in a group of two: one other sample, no spread.
  const rl::BaselineStd two = rl::baseline_and_std({1, 0}, {0, 0}, {1, 1}, true);
  EXPECT_EQ(two.baseline, (std::vector<double>{0.0, 1.0}));
  EXPECT_EQ(two.std, (std::vector<double>{0.0, 0.0}));
}

TEST(Advantages, InvalidSamplesAndTheStdReward) {
  // Sample 1 is invalid: the group's statistics are those of {1, 0, 1}. Group 1 has a single valid
  // sample: baseline = reward (advantage 0) for both of its samples, std 0.
  const std::vector<double> r = {1, 5, 0, 1, 2, 3};
  const std::vector<int64_t> g = {0, 0, 0, 0, 1, 1};
  const std::vector<double> valid = {1, 0, 1, 1, 1, 0};
  const rl::BaselineStd bs = rl::baseline_and_std(r, g, valid, false);
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(bs.baseline[i], 2.0 / 3);
    EXPECT_DOUBLE_EQ(bs.std[i], std::sqrt((2.0 / 3 - 4.0 / 9) * 1.5));
  }
  EXPECT_EQ(bs.baseline[4], 2.0);
  EXPECT_EQ(bs.baseline[5], 3.0);
  EXPECT_EQ(bs.std[4], 0.0);
  EXPECT_EQ(rl::grpo_advantages(r, g, valid, true, false)[5], 0.0);

  // DAPO: the baseline from the shaped reward, the std from the unshaped one. Shaped {1, 0.5} with
  // unshaped {1, 1}: no spread (the group is filtered), baseline 0.75.
  const rl::BaselineStd dapo = rl::baseline_and_std({1, 0.5, -1, 0}, {0, 0, 1, 1}, {1, 1, 1, 1}, false, {1, 1, -1, 1});
  EXPECT_EQ(dapo.baseline[0], 0.75);
  EXPECT_EQ(dapo.std[0], 0.0);
  EXPECT_EQ(dapo.baseline[2], -0.5);
  EXPECT_DOUBLE_EQ(dapo.std[2], std::sqrt(2.0));  // of {-1, 1}
}

TEST(Advantages, RandomGroupsMatchTheTextbookStatistics) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-2.0, 1.0);
  std::uniform_int_distribution<int> group(0, 4);
  const int n = 40;
  std::vector<double> r(n), s(n), valid(n);
  std::vector<int64_t> g(n);
  for (int i = 0; i < n; ++i) {
    r[i] = u(rng), s[i] = u(rng), g[i] = group(rng);
    valid[i] = i % 7 == 3 ? 0.0 : 1.0;
  }
  for (bool loo : {false, true}) {
    const rl::BaselineStd bs = rl::baseline_and_std(r, g, valid, loo, s);
    for (int i = 0; i < n; ++i) {
      std::vector<double> others_r, others_s;
      for (int j = 0; j < n; ++j)
        if (g[j] == g[i] && valid[j] != 0 && !(loo && j == i)) others_r.push_back(r[j]), others_s.push_back(s[j]);
      const auto k = static_cast<double>(others_r.size());
      double mean_r = 0, mean_s = 0, ss = 0;
      for (size_t j = 0; j < others_r.size(); ++j) mean_r += others_r[j] / k, mean_s += others_s[j] / k;
      for (double x : others_s) ss += (x - mean_s) * (x - mean_s);
      SCOPED_TRACE(::testing::Message() << "sample " << i << (loo ? ", leave-one-out" : ""));
      // Under leave-one-out an invalid sample gets NeMo-RL's sum over all valid ones divided by their
      // count - 1 (never used: its loss is masked, and the recipes pass every sample as valid).
      if (loo && valid[i] == 0) continue;
      EXPECT_NEAR(bs.baseline[i], mean_r, 1e-12);
      EXPECT_NEAR(bs.std[i], std::sqrt(ss / (k - 1)), 1e-12);
    }
  }
}

TEST(Advantages, DynamicSamplingFillsTheCacheAcrossRounds) {
  rl::DynamicSampling ds(5, 2);
  EXPECT_EQ(ds.add_round({0, 0.5, 0, 1, 0}), (std::vector<int64_t>{1, 3}));
  EXPECT_FALSE(ds.complete());
  EXPECT_EQ(ds.add_round({1, 1, 0}), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ds.cached(), 4);
  // Round max + 1 is still allowed (NeMo-RL checks rounds <= max before giving up); it fills the
  // cache, which is cut to the target: the second kept sample is discarded.
  EXPECT_EQ(ds.add_round({0, 0, 0, 2, 3}), (std::vector<int64_t>{3}));
  EXPECT_TRUE(ds.complete());
  EXPECT_EQ(ds.rounds(), 3);
  EXPECT_EQ(ds.cached(), 5);
  EXPECT_EQ(ds.discarded(), 1);
  EXPECT_THROW(ds.add_round({1}), Error);

  rl::DynamicSampling one(3, 10);
  EXPECT_EQ(one.add_round({1, 1, 0, 1, 1, 1}), (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(one.discarded(), 2);
  EXPECT_EQ(one.rounds(), 1);
}

TEST(Advantages, DynamicSamplingFailsAfterMaxRounds) {
  rl::DynamicSampling ds(4, 2);
  EXPECT_EQ(ds.add_round({0, 0, 1}), (std::vector<int64_t>{2}));
  EXPECT_TRUE(ds.add_round({0, 0}).empty());
  try {
    ds.add_round({0, 2});
    ADD_FAILURE() << "no error after max rounds";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grpo.dynamic_sampling_max_gen_batches = 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rl::DynamicSampling(4, 0), Error);
}

}  // namespace
}  // namespace g4

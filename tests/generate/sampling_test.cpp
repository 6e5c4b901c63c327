// The CPU reference of the batched sampler: greedy is argmax, each filter keeps exactly the tokens
// its rule names, draws follow the processed distribution, log-probs in both modes, seeds that
// reproduce whatever else is in the batch, and the errors of bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/random.h"
#include "generate/sampling.h"
#include "generate/sampling_math.h"
#include "support/error_message.h"

namespace g4 {
namespace {

using gen::LogprobMode;
using gen::RowSampling;
using gen::SampledToken;
using test::error_of;

constexpr float kInf = std::numeric_limits<float>::infinity();

Tensor rows_of(const std::vector<std::vector<float>>& rows) {
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return Tensor::from_vector(flat, {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
}

// Logits whose softmax is `probs` (the log-probs themselves).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> x;
  for (double p : probs) x.push_back(static_cast<float>(std::log(p)));
  return x;
}

RowSampling sampled(double temperature, int64_t top_k = 0, double top_p = 1.0, double min_p = 0.0) {
  RowSampling r;
  r.params.temperature = temperature;
  r.params.top_k = top_k;
  r.params.top_p = top_p;
  r.params.min_p = min_p;
  r.params.seed = 1234;
  return r;
}

SampledToken sample_one(const std::vector<float>& logits, const RowSampling& r) {
  return gen::sample_batch(rows_of({logits}), {r}).at(0);
}

// The tokens the row's filters keep among the 64 most likely: those with a finite processed
// log-prob.
std::vector<int64_t> kept_tokens(const std::vector<float>& logits, RowSampling r) {
  r.top_logprobs = std::min<int64_t>(static_cast<int64_t>(logits.size()), gen::kMaxTopLogprobs);
  r.logprob_mode = LogprobMode::kProcessed;
  const SampledToken t = sample_one(logits, r);
  std::vector<int64_t> kept;
  for (size_t i = 0; i < t.top_ids.size(); ++i)
    if (std::isfinite(t.top_logprobs[i])) kept.push_back(t.top_ids[i]);
  std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<double> log_softmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double v : z) s += std::exp(v - m);
  std::vector<double> out;
  for (double v : z) out.push_back(v - m - std::log(s));
  return out;
}

TEST(Sampling, GreedyIsTheFirstArgmaxWithRawLogprobs) {
  const std::vector<float> x = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  const std::vector<double> lp = log_softmax({0.5, 3.0, -1.0, 3.0, 2.0});
  for (LogprobMode mode : {LogprobMode::kRaw, LogprobMode::kProcessed}) {
    RowSampling r = sampled(0.0, 2, 0.5, 0.5);  // filters do not matter to greedy
    r.top_logprobs = 3;
    r.logprob_mode = mode;
    const SampledToken t = sample_one(x, r);
    EXPECT_EQ(t.token, 1);
    EXPECT_NEAR(t.logprob, lp[1], 1e-6);
    EXPECT_EQ(t.top_ids, (std::vector<int64_t>{1, 3, 4}));
    ASSERT_EQ(t.top_logprobs.size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(t.top_logprobs[i], lp[t.top_ids[i]], 1e-6);
  }
}

TEST(Sampling, TopKKeepsEveryTokenTiedWithTheKth) {
  const std::vector<float> x = {3, 2, 1, 2, 0, 2};
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 1)), (std::vector<int64_t>{0}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 2)), (std::vector<int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 4)), (std::vector<int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 5)), (std::vector<int64_t>{0, 1, 2, 3, 5}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 6)).size(), 6u);
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 60)).size(), 6u);
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0)).size(), 6u);
}

TEST(Sampling, TopPKeepsTokensWhileTheMoreLikelyOnesHoldLessThanP) {
  const std::vector<float> x = logits_of({0.1, 0.5, 0.1, 0.3});
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.4)), (std::vector<int64_t>{1}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.51)), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.79)), (std::vector<int64_t>{1, 3}));
  // The two tokens of 0.1 are equally likely: kept or cut together.
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.81)), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 1e-9)), (std::vector<int64_t>{1}));
  // After temperature 4 the distribution is flatter: more tokens make up the same mass.
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.6)), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(kept_tokens(x, sampled(4.0, 0, 0.6)), (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(Sampling, TopPMeasuresMassAfterTopK) {
  const std::vector<float> x = logits_of({0.4, 0.3, 0.2, 0.1});
  // Alone: 0.4 above token 1 is < 0.5, 0.7 above token 2 is not.
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 0.5)), (std::vector<int64_t>{0, 1}));
  // After top-2 the renormalised 4/7 above token 1 is not < 0.5.
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 2, 0.5)), (std::vector<int64_t>{0}));
}

TEST(Sampling, MinPKeepsTokensAtLeastMinPTimesTheMostLikely) {
  const std::vector<float> x = logits_of({0.05, 0.5, 0.2, 0.1, 0.15});
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 1.0, 0.29)), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 1.0, 0.19)), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 0, 1.0, 1.0)), (std::vector<int64_t>{1}));
  // Temperature 2 takes square roots of the ratios: 0.1 / 0.5 becomes 0.447.
  EXPECT_EQ(kept_tokens(x, sampled(2.0, 0, 1.0, 0.42)), (std::vector<int64_t>{1, 2, 3, 4}));
  // With the other filters: the intersection.
  EXPECT_EQ(kept_tokens(x, sampled(1.0, 2, 1.0, 0.19)), (std::vector<int64_t>{1, 2}));
}

// The filters against a direct reading of their rules, in double, on random rows.
TEST(Sampling, FiltersMatchTheirRulesOnRandomRows) {
  struct Setting {
    double temperature;
    int64_t top_k;
    double top_p, min_p;
  };
  const std::vector<Setting> settings = {
      {1.0, 37, 1.0, 0.0}, {0.6, 0, 0.8, 0.0}, {1.4, 0, 1.0, 0.02}, {0.9, 120, 0.9, 0.01}, {2.0, 5, 0.3, 0.5}};
  int64_t checked = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    const int64_t V = 50 + static_cast<int64_t>(seed) * 47;
    const Tensor t = randn({1, V}, seed, DType::F32, 2.0);
    const std::vector<float> x(t.data<float>(), t.data<float>() + V);
    const float m = *std::max_element(x.begin(), x.end());
    for (const Setting& s : settings) {
      const float temp = static_cast<float>(s.temperature);
      std::vector<float> z;
      for (float v : x) z.push_back((v - m) / temp);
      std::vector<float> sorted = z;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const float kth = s.top_k > 0 && s.top_k < V ? sorted[static_cast<size_t>(s.top_k - 1)] : -kInf;
      double total = 0;
      for (float v : z)
        if (v >= kth) total += std::exp(static_cast<double>(v));
      // kept_tokens sees the 64 most likely; the rules keep a most-likely-first prefix anyway.
      const float z64 = sorted[63];
      std::vector<int64_t> expected;
      int64_t beyond = 0;  // kept tokens past the first 64
      for (int64_t i = 0; i < V; ++i) {
        if (!(z[i] >= kth)) continue;
        double above = 0;
        for (float v : z)
          if (v >= kth && v > z[i]) above += std::exp(static_cast<double>(v)) / total;
        if (!(above < s.top_p && std::exp(static_cast<double>(z[i])) >= s.min_p)) continue;
        if (z[i] > z64) {
          expected.push_back(i);
        } else {
          ++beyond;
        }
      }
      const std::vector<int64_t> got = kept_tokens(x, sampled(s.temperature, s.top_k, s.top_p, s.min_p));
      const std::string what = "V " + std::to_string(V) + " T " + std::to_string(s.temperature) + " k " +
                               std::to_string(s.top_k) + " p " + std::to_string(s.top_p) + " min_p " +
                               std::to_string(s.min_p);
      if (beyond == 0) {
        EXPECT_EQ(got, expected) << what;
        ++checked;
      } else {
        // The cut lies past the 64 reported: at least everything above the 64th is kept.
        EXPECT_GE(got.size(), expected.size()) << what;
      }
    }
  }
  std::printf("  %lld of 60 cuts within the 64 most likely, checked exactly\n", static_cast<long long>(checked));
  EXPECT_GE(checked, 30);
}

TEST(Sampling, RawAndProcessedLogprobs) {
  const std::vector<float> x = {1.0f, -0.5f, 2.5f, 0.25f, 2.0f, -3.0f};
  const double t = 0.7;
  RowSampling r = sampled(t, 3);
  r.top_logprobs = 6;
  std::vector<double> xd(x.begin(), x.end()), z3;
  const std::vector<double> raw = log_softmax(xd);
  for (int64_t id : {2, 4, 0}) z3.push_back(xd[id] / t);
  const std::vector<double> proc3 = log_softmax(z3);
  const std::map<int64_t, double> processed = {{2, proc3[0]}, {4, proc3[1]}, {0, proc3[2]}};
  const std::vector<int64_t> order = {2, 4, 0, 3, 1, 5};
  for (uint64_t draw = 0; draw < 8; ++draw) {
    r.draw = draw;
    r.logprob_mode = LogprobMode::kRaw;
    const SampledToken a = sample_one(x, r);
    r.logprob_mode = LogprobMode::kProcessed;
    const SampledToken b = sample_one(x, r);
    EXPECT_EQ(a.token, b.token);  // the mode changes reports, never the draw
    ASSERT_TRUE(processed.count(a.token)) << a.token;
    EXPECT_NEAR(a.logprob, raw[a.token], 1e-6);
    EXPECT_NEAR(b.logprob, processed.at(a.token), 1e-6);
    EXPECT_EQ(a.top_ids, order);
    EXPECT_EQ(b.top_ids, order);
    for (size_t i = 0; i < order.size(); ++i) {
      EXPECT_NEAR(a.top_logprobs[i], raw[order[i]], 1e-6);
      if (i < 3) {
        EXPECT_NEAR(b.top_logprobs[i], processed.at(order[i]), 1e-6);
      } else {
        EXPECT_EQ(b.top_logprobs[i], -kInf);
      }
    }
  }
}

// Pearson's chi-square of `draws` draws against the processed distribution, per setting. The
// seed is fixed, so the statistic is too; the bound is the 0.1% critical value for its degrees of
// freedom, so a correct sampler passes with a margin and a biased one fails.
TEST(Sampling, DrawsFollowTheProcessedDistribution) {
  const std::vector<float> x = {1.2f, 0.3f, -0.4f, 2.0f, 0.9f, -1.5f, 0.0f, 1.9f};
  // The chi-square distribution's 0.999 quantile for 1 .. 7 degrees of freedom.
  const double critical[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32};
  struct Case {
    RowSampling row;
    int64_t kept;  // tokens the filters keep (worked out by hand from the probabilities)
  };
  const std::vector<Case> cases = {
      {sampled(1.0), 8}, {sampled(0.5), 8}, {sampled(1.5, 5), 5}, {sampled(1.0, 0, 0.9), 5},
      {sampled(0.8, 6, 0.95, 0.1), 5},
  };
  const int64_t draws = 40000;
  for (const Case& c : cases) {
    std::vector<RowSampling> rows(static_cast<size_t>(draws), c.row);
    for (int64_t d = 0; d < draws; ++d) rows[d].draw = static_cast<uint64_t>(d);
    rows[0].top_logprobs = 8;
    rows[0].logprob_mode = LogprobMode::kProcessed;
    std::vector<std::vector<float>> rep(static_cast<size_t>(draws), x);
    const std::vector<SampledToken> got = gen::sample_batch(rows_of(rep), rows);
    std::vector<double> expected(8, 0.0);
    int64_t kept = 0;
    for (size_t i = 0; i < 8; ++i) {
      const float lp = got[0].top_logprobs[i];
      if (std::isfinite(lp)) {
        expected[got[0].top_ids[i]] = std::exp(static_cast<double>(lp)) * draws;
        ++kept;
      }
    }
    std::vector<double> seen(8, 0.0);
    for (const SampledToken& t : got) seen[t.token] += 1;
    double chi2 = 0;
    for (size_t i = 0; i < 8; ++i) {
      if (expected[i] == 0) {
        EXPECT_EQ(seen[i], 0) << "a filtered token was drawn: " << i;
      } else {
        chi2 += (seen[i] - expected[i]) * (seen[i] - expected[i]) / expected[i];
      }
    }
    ASSERT_EQ(kept, c.kept);
    std::printf("  T %.2f k %lld p %.2f min_p %.2f: %lld tokens kept, chi2 %.2f (bound %.2f)\n",
                c.row.params.temperature, static_cast<long long>(c.row.params.top_k), c.row.params.top_p,
                c.row.params.min_p, static_cast<long long>(kept), chi2, critical[kept - 1]);
    EXPECT_LT(chi2, critical[kept - 1]);
  }
}

TEST(Sampling, SeedsReproduceAndRowsAreIndependent) {
  std::vector<std::vector<float>> logits;
  std::vector<RowSampling> rows;
  for (int r = 0; r < 6; ++r) {
    std::vector<float> x(257);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * i * (r + 1)) * 3);
    logits.push_back(x);
    RowSampling s = sampled(0.3 + 0.2 * r, r % 3 == 0 ? 0 : 40, r % 2 ? 0.9 : 1.0, r == 5 ? 0.05 : 0.0);
    s.params.seed = 100 + static_cast<uint64_t>(r);
    s.draw = 7;
    s.top_logprobs = r;
    rows.push_back(s);
  }
  const std::vector<SampledToken> batch = gen::sample_batch(rows_of(logits), rows);
  for (int r = 0; r < 6; ++r) {
    const SampledToken alone = sample_one(logits[r], rows[r]);
    EXPECT_EQ(alone.token, batch[r].token) << r;
    EXPECT_EQ(alone.logprob, batch[r].logprob) << r;
    EXPECT_EQ(alone.top_ids, batch[r].top_ids) << r;
  }
  // Another seed or another draw index gives other tokens (some of 32 tries differ).
  int seed_changes = 0, draw_changes = 0;
  for (uint64_t k = 1; k <= 32; ++k) {
    RowSampling s = rows[1];
    s.params.seed += k;
    seed_changes += sample_one(logits[1], s).token != batch[1].token;
    s = rows[1];
    s.draw += k;
    draw_changes += sample_one(logits[1], s).token != batch[1].token;
  }
  EXPECT_GT(seed_changes, 8);
  EXPECT_GT(draw_changes, 8);
}

TEST(Sampling, TinyTemperatureIsAlmostGreedyAndNegInfIsNeverDrawn) {
  const std::vector<float> x = {1.0f, -kInf, 1.5f, 1.49f, -kInf};
  for (uint64_t d = 0; d < 20; ++d) {
    RowSampling r = sampled(1e-4);
    r.draw = d;
    EXPECT_EQ(sample_one(x, r).token, 2);
    r = sampled(100.0);
    r.draw = d;
    const int64_t t = sample_one(x, r).token;
    EXPECT_TRUE(t == 0 || t == 2 || t == 3) << t;
  }
}

TEST(Sampling, DeterministicExpAndLogAreAccurate) {
  double worst_log = 0, worst_exp = 0;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(1.0f + static_cast<float>(i % 997) / 997.0f, i % 61 - 40);
    const double l = std::log(static_cast<double>(x));
    worst_log = std::max(worst_log, std::fabs(gen::detail::det_log(x) - l) / std::max(std::fabs(l), 1e-30));
    const float y = -static_cast<float>(i) * 4e-4f;  // down to e^-80, still a normal float
    const double e = std::exp(static_cast<double>(y));
    worst_exp = std::max(worst_exp, std::fabs(gen::detail::det_exp(y) - e) / e);
  }
  for (float v : {1e-9f, 3e-6f, 0.01f, 0.5f, 0.9f}) {
    const double l = std::log1p(-static_cast<double>(v));
    worst_log = std::max(worst_log, std::fabs(gen::detail::det_log1p(-v) - l) / std::fabs(l));
  }
  std::printf("  det_log worst relative error %.2e, det_exp %.2e\n", worst_log, worst_exp);
  EXPECT_LT(worst_log, 4e-7);
  EXPECT_LT(worst_exp, 4e-7);
}

// The GPU draw passes over a token when its z plus race_boost_bound stays under a score already
// reached: the bound must be above every token's exact noise -ln(E), with room for the rounding of
// the score. Checked on the edge words (0, powers of two and their neighbours, the largest) and on
// a million Philox words.
TEST(Sampling, RaceBoostBoundIsAboveEveryNoise) {
  std::vector<uint32_t> words = {0u, 0xFFFFFFFFu};
  for (int b = 0; b < 32; ++b)
    for (int64_t d : {-1, 0, 1}) {
      const int64_t w = (int64_t{1} << b) + d;
      if (w >= 0 && w <= 0xFFFFFFFFll) words.push_back(static_cast<uint32_t>(w));
    }
  for (uint64_t g = 0; g < 250000; ++g) {
    const Philox4 r = gen::detail::race_words(7, 3, g);
    words.insert(words.end(), r.v, r.v + 4);
  }
  float least_room = INFINITY;
  for (uint32_t w : words) {
    const float noise = -gen::detail::race_log_e(w), bound = gen::detail::race_boost_bound(w);
    least_room = std::min(least_room, bound - noise);
    ASSERT_LT(noise, bound - 5e-4f) << "word " << w;
  }
  EXPECT_LT(gen::detail::race_boost_bound(0), 22.9f);  // no looser than the group test's 23
  std::printf("  race_boost_bound: least room above the noise %.2e over %zu words\n", least_room, words.size());
}

TEST(Sampling, BadInputNamesTheProblem) {
  const Tensor ok = rows_of({{1.0f, 2.0f, 3.0f}});
  RowSampling r = sampled(1.0);
  r.params.min_p = 1.5;
  EXPECT_NE(error_of([&] { gen::sample_batch(ok, {r}); }).find("min_p must be in [0, 1], got 1.5"), std::string::npos);
  r = sampled(1.0);
  r.params.top_p = 0;
  EXPECT_NE(error_of([&] { gen::sample_batch(ok, {r}); }).find("top_p must be in (0, 1]"), std::string::npos);
  gen::SamplingParams p;
  p.min_p = -0.1;
  EXPECT_NE(error_of([&] { gen::validate(p, gen::OptionStyle::Flag); }).find("--min-p must be in [0, 1]"),
            std::string::npos);
  r = sampled(1.0);
  r.top_logprobs = gen::kMaxTopLogprobs + 1;
  EXPECT_NE(error_of([&] { gen::sample_batch(ok, {r}); }).find("row 0: top_logprobs must be in [0, 64], got 65"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gen::sample_batch(ok, {sampled(1.0), sampled(1.0)}); }).find("2 row settings for logits f32[1, 3]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { gen::sample_batch(ok.to(DType::F64), {sampled(1.0)}); }).find("must be f32 [rows, vocab]"),
            std::string::npos);
  const Tensor nan = rows_of({{1.0f, 2.0f, 3.0f}, {0.0f, std::nanf(""), 1.0f}});
  EXPECT_NE(error_of([&] { gen::sample_batch(nan, {sampled(1.0), sampled(0.0)}); }).find("row 1 has a nan logit at token 1"),
            std::string::npos);
  const Tensor none = rows_of({{-kInf, -kInf}});
  EXPECT_NE(error_of([&] { gen::sample_batch(none, {sampled(1.0)}); }).find("row 0 has no finite logit"),
            std::string::npos);
  EXPECT_TRUE(gen::sample_batch(Tensor::empty({0, 5}, DType::F32), {}).empty());
}

}  // namespace
}  // namespace g4

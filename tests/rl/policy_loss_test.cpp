// The clipped policy-gradient loss against a separate float64 evaluation of RL.md §2 / §5 written
// as NeMo-RL's ClippedPGLossFn lays it out ([sequence][token] arrays, masked_mean with its 1e-8):
// loss, metrics, every clip / truncation / KL branch (each asserted to occur in the data), token-
// and sequence-level reduction, masks; the gradient against central differences of that reference
// and through the autograd node.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "autograd/functions.h"
#include "core/error.h"
#include "rl/policy_loss.h"

namespace g4 {
namespace {

using rl::KlType;
using rl::LossConfig;
using rl::Truncation;
using Rows = std::vector<std::vector<double>>;

// One micro-batch as [sequence][token] rows.
struct Batch {
  Rows cur, prev, gen, ref, token_mask;
  std::vector<double> adv, sample_mask;
  rl::Normalizers norm;
};

Batch random_batch(uint32_t seed, int sequences = 16) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> len(4, 9);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  Batch b;
  double tokens = 0, seqs = 0;
  for (int s = 0; s < sequences; ++s) {
    const int n = len(rng);
    for (Rows* rows : {&b.cur, &b.prev, &b.gen, &b.ref, &b.token_mask}) rows->emplace_back();
    for (int t = 0; t < n; ++t) {
      const double prev = -0.05 - 3.0 * u(rng);
      b.prev.back().push_back(prev);
      b.gen.back().push_back(prev + 0.25 * normal(rng));
      // log r in [-0.7, 0.7]: r below, inside and above [0.8, 1.28], and above a dual clip of 1.5.
      const double cur = prev + 1.4 * (u(rng) - 0.5);
      b.cur.back().push_back(cur);
      b.ref.back().push_back(cur + 2.4 * (u(rng) - 0.5));
      b.token_mask.back().push_back(t == 0 || u(rng) < 0.8 ? 1.0 : 0.0);
    }
    b.adv.push_back(normal(rng));
    b.sample_mask.push_back(s == 3 ? 0.0 : 1.0);
    seqs += b.sample_mask.back();
    for (double m : b.token_mask.back()) tokens += m * b.sample_mask.back();
  }
  // Other micro-batches and ranks hold the rest of the step's tokens and sequences.
  b.norm = {tokens + 17, seqs + 3};
  return b;
}

std::vector<double> flat(const Rows& rows) {
  std::vector<double> v;
  for (const auto& r : rows) v.insert(v.end(), r.begin(), r.end());
  return v;
}

rl::LossTokens tokens_of(const Batch& b) {
  rl::LossTokens t;
  for (size_t s = 0; s < b.cur.size(); ++s)
    for (size_t i = 0; i < b.cur[s].size(); ++i) {
      t.seq.push_back(static_cast<int64_t>(s));
      t.advantage.push_back(b.adv[s]);
    }
  t.lp_prev = flat(b.prev);
  t.lp_gen = flat(b.gen);
  t.lp_ref = flat(b.ref);
  t.token_mask = flat(b.token_mask);
  t.sample_mask = b.sample_mask;
  return t;
}

struct Reference {
  double loss = 0;
  std::map<std::string, double> metrics;
  std::map<std::string, int> hits;  // how often each branch was taken on a valid token / sequence
};

double finite_or_zero(double x) { return std::isfinite(x) ? x : 0.0; }

double kl_k(KlType type, double logr) {
  if (type == KlType::kK1) return -logr;
  if (type == KlType::kK2) return logr * logr / 2;
  return std::exp(logr) - 1 - logr;
}

// RL.md §2.2-2.3 and §5 read off literally. `detached` holds the lp_curr that the on-policy KL
// weight (a .detach() in NeMo-RL) is evaluated at, so that finite differences treat it as data.
Reference reference(const Rows& cur, const Batch& b, const LossConfig& c, const Rows& detached) {
  const double eps = 1e-8;  // masked_mean
  const double n_tok = b.norm.valid_tokens + eps, n_seq = b.norm.valid_seqs + eps;
  const double lo = 1 - c.ratio_clip_min, hi = 1 + c.ratio_clip_max, R = c.truncation_ratio;
  const double R_min = c.truncation_ratio_min;
  Reference out;
  double actor = 0, kl = 0;
  std::map<std::string, double> sum;  // Σ m·(metric term)
  double seq_oob = 0;
  for (size_t s = 0; s < cur.size(); ++s) {
    const std::vector<double>& tm = b.token_mask[s];
    const double sm = b.sample_mask[s], A = b.adv[s];
    double tm_sum = 0, log_is = 0;
    for (size_t t = 0; t < tm.size(); ++t) {
      tm_sum += tm[t];
      log_is += tm[t] * finite_or_zero(b.prev[s][t] - b.gen[s][t]);
    }
    const double geo = std::exp(log_is / (tm_sum + eps));
    const bool seq_kept = geo >= R_min && geo <= R;
    if (c.truncation == Truncation::kSeqMaskTis) {
      seq_oob += sm * (seq_kept ? 0.0 : 1.0);
      if (sm != 0) ++out.hits[seq_kept ? "seq kept" : "seq dropped"];
    }
    double seq_actor = 0, seq_kl = 0;
    for (size_t t = 0; t < tm.size(); ++t) {
      const double m = tm[t] * sm;
      if (m == 0) continue;
      const double lc = cur[s][t], lp = b.prev[s][t], lg = b.gen[s][t], lr = b.ref[s][t];
      const double r = std::exp(lc - lp);
      const double r_clip = std::min(std::max(r, lo), hi);
      double ell = std::max(-A * r, -A * r_clip);
      if (c.ratio_clip_c && A < 0) {
        if (-A * *c.ratio_clip_c < ell) ++out.hits["dual clip"];
        ell = std::min(ell, -A * *c.ratio_clip_c);
      }
      ++out.hits[std::string(A > 0 ? "A>0 " : "A<0 ") + (r < lo ? "below" : r > hi ? "above" : "inside")];
      double w = finite_or_zero(std::exp(lp - lg));
      if (c.truncation == Truncation::kTis) {
        if (w > R) ++out.hits["tis truncated"], sum["is_oob_ratio"] += m;
        w = std::min(w, R);
      } else if (c.truncation == Truncation::kIcepop) {
        if (w < R_min || w > R) ++out.hits["icepop dropped"], sum["is_oob_ratio"] += m, w = 0;
      } else if (c.truncation == Truncation::kSeqMaskTis && !seq_kept) {
        w = 0;
      }
      const double w_used = c.importance_sampling_correction ? w : 1.0;
      double k = 0;
      if (c.kl_penalty != 0) {
        const double raw = lr - lc;
        const double logr = std::min(std::max(raw, -c.kl_input_clamp), c.kl_input_clamp);
        const double unclamped = kl_k(c.kl_type, logr);
        k = std::min(std::max(unclamped, -c.kl_output_clamp), c.kl_output_clamp);
        // Each clamp alone (an output clamp hides whether the input one was active).
        if (logr != raw && k == unclamped) ++out.hits["kl input clamp only"];
        if (logr == raw && k != unclamped) ++out.hits["kl output clamp only"];
        if (c.on_policy_kl_approximation) k *= finite_or_zero(std::exp(detached[s][t] - lg));
        k *= c.kl_penalty;
      }
      if (c.token_level_loss) {
        actor += m * w_used * ell;
        kl += m * k;
      } else {
        seq_actor += tm[t] * w_used * ell;
        seq_kl += tm[t] * k;
      }
      sum["token_mult_prob_error"] += m * std::exp(std::abs(lg - lp) * m);
      // NeMo-RL evaluates both mismatch KLs with the configured estimator type (RL.md says k3).
      sum["gen_kl_error"] += m * kl_k(c.kl_type, lp - lg);
      sum["policy_kl_error"] += m * kl_k(c.kl_type, lg - lp);
      const double M = std::log(0.5 * std::exp(lp) + 0.5 * std::exp(lg));
      sum["js_divergence_error"] +=
          m * (0.5 * (std::exp(lp - M) - (lp - M) - 1) + 0.5 * (std::exp(lg - M) - (lg - M) - 1));
      sum["sampling_importance_ratio"] += m * w;
      sum["probs_ratio"] += m * r;
      sum["probs_ratio_clamped"] += m * r_clip;
      sum["clip_fraction"] += m * (ell != -A * r ? 1.0 : 0.0);
      sum["approx_entropy"] += m * -std::exp(lc - lg) * lc;
    }
    if (!c.token_level_loss) {
      actor += sm * seq_actor / (tm_sum + eps);
      kl += sm * seq_kl / (tm_sum + eps);
    }
  }
  actor /= c.token_level_loss ? n_tok : n_seq;
  kl /= c.token_level_loss ? n_tok : n_seq;
  out.loss = actor + kl;
  for (const auto& [k, v] : sum) out.metrics[k] = v / n_tok;
  out.metrics["loss"] = out.loss;
  out.metrics["actor_loss"] = actor;
  out.metrics["kl_penalty"] = c.kl_penalty != 0 ? kl / c.kl_penalty : 0.0;
  if (c.truncation == Truncation::kSeqMaskTis) out.metrics["is_oob_ratio"] = seq_oob / n_seq;
  if (c.truncation != Truncation::kNone) out.metrics.try_emplace("is_oob_ratio", 0.0);
  for (const char* k : {"clip_fraction", "token_mult_prob_error", "gen_kl_error", "policy_kl_error",
                        "js_divergence_error", "sampling_importance_ratio", "probs_ratio", "probs_ratio_clamped",
                        "approx_entropy"})
    out.metrics.try_emplace(k, 0.0);
  return out;
}

struct Case {
  const char* name;
  LossConfig config;
  std::vector<const char*> must_hit;  // branches the data has to exercise
};

std::vector<Case> cases() {
  std::vector<Case> out;
  const std::vector<const char*> ppo = {"A>0 below", "A>0 inside", "A>0 above", "A<0 below", "A<0 inside", "A<0 above"};
  LossConfig c;
  out.push_back({"ppo, no importance correction (w = 1)", c, ppo});

  c = LossConfig();
  c.ratio_clip_max = 0.28, c.ratio_clip_c = 1.5;
  c.importance_sampling_correction = true, c.truncation = Truncation::kTis, c.truncation_ratio = 1.1;
  out.push_back({"dapo: clip-higher, dual clip, tis", c, {"A<0 above", "dual clip", "tis truncated"}});

  c = LossConfig();
  c.ratio_clip_c = 2.0;
  c.importance_sampling_correction = true, c.truncation = Truncation::kIcepop;
  c.truncation_ratio_min = 0.85, c.truncation_ratio = 1.15;
  out.push_back({"icepop", c, {"icepop dropped"}});

  c = LossConfig();
  c.importance_sampling_correction = true, c.truncation = Truncation::kSeqMaskTis;
  c.truncation_ratio_min = 0.93, c.truncation_ratio = 1.07;
  out.push_back({"seq-mask-tis", c, {"seq kept", "seq dropped"}});

  c = LossConfig();
  c.importance_sampling_correction = true;
  out.push_back({"importance correction without truncation", c, {}});

  c = LossConfig();
  c.kl_penalty = 0.3, c.kl_type = KlType::kK1, c.kl_input_clamp = 0.5;
  out.push_back({"k1 with the input clamp", c, {"kl input clamp only"}});

  c = LossConfig();
  c.kl_penalty = 0.2, c.kl_type = KlType::kK2, c.kl_output_clamp = 0.1;
  out.push_back({"k2 with the output clamp", c, {"kl output clamp only"}});

  c = LossConfig();
  c.kl_penalty = 0.5, c.kl_type = KlType::kK3, c.kl_input_clamp = 0.7, c.kl_output_clamp = 0.22;
  c.on_policy_kl_approximation = true, c.importance_sampling_correction = true;
  c.truncation = Truncation::kTis, c.truncation_ratio = 1.2;
  out.push_back({"k3 with both clamps, on-policy weight, tis", c, {"kl input clamp only", "kl output clamp only"}});

  c = LossConfig();
  c.kl_penalty = 0.05;  // default clamps (inactive here)
  c.ratio_clip_c = 3.0;
  out.push_back({"k3 default clamps", c, {}});
  return out;
}

// Central differences of the reference loss, in double, per token.
std::vector<double> numeric_grad(const Batch& b, const LossConfig& c) {
  const double h = 1e-6;
  std::vector<double> g;
  for (size_t s = 0; s < b.cur.size(); ++s)
    for (size_t t = 0; t < b.cur[s].size(); ++t) {
      Rows plus = b.cur, minus = b.cur;
      plus[s][t] += h, minus[s][t] -= h;
      g.push_back((reference(plus, b, c, b.cur).loss - reference(minus, b, c, b.cur).loss) / (2 * h));
    }
  return g;
}

TEST(PolicyLoss, MatchesTheSpecInEveryBranchWithExactGradients) {
  const Batch b = random_batch(7);
  const rl::LossTokens tokens = tokens_of(b);
  const std::vector<double> lp = flat(b.cur);
  for (const Case& cs : cases()) {
    for (bool token_level : {true, false}) {
      SCOPED_TRACE(std::string(cs.name) + (token_level ? ", token-level" : ", sequence-level"));
      LossConfig c = cs.config;
      c.token_level_loss = token_level;
      const Reference want = reference(b.cur, b, c, b.cur);
      for (const char* branch : cs.must_hit) EXPECT_GT(want.hits.count(branch), 0u) << branch;
      const rl::LossResult got = rl::policy_loss(lp, tokens, c, b.norm);
      EXPECT_NEAR(got.loss, want.loss, 1e-14);
      EXPECT_NE(got.loss, 0.0);
      ASSERT_EQ(got.metrics.size(), want.metrics.size());
      for (const auto& [name, value] : want.metrics) {
        ASSERT_TRUE(got.metrics.count(name)) << name;
        EXPECT_NEAR(got.metrics.at(name), value, 1e-13 * std::max(1.0, std::abs(value))) << name;
      }
      const std::vector<double> num = numeric_grad(b, c);
      ASSERT_EQ(got.grad.size(), num.size());
      for (size_t i = 0; i < num.size(); ++i) EXPECT_NEAR(got.grad[i], num[i], 1e-8) << "token " << i;

      // The autograd node on an f64 Var: the same loss, and the same gradient times the incoming one.
      ag::Var x(Tensor::from_vector(lp, {static_cast<int64_t>(lp.size())}), true);
      std::map<std::string, double> metrics;
      ag::Var loss = rl::policy_loss(x, tokens, c, b.norm, metrics);
      EXPECT_EQ(loss.value().dtype(), DType::F64);
      EXPECT_EQ(loss.value().dim(), 0);
      EXPECT_DOUBLE_EQ(loss.value().item(), got.loss);
      EXPECT_EQ(metrics, got.metrics);
      ag::backward(ag::scale(loss, -2.5));
      for (size_t i = 0; i < num.size(); ++i) EXPECT_DOUBLE_EQ(x.grad().data<double>()[i], -2.5 * got.grad[i]);
    }
  }
}

TEST(PolicyLoss, MaskedTokensAndSamplesTakePartInNothing) {
  const Batch b = random_batch(11);
  LossConfig c = cases()[7].config;  // KL, on-policy weight and truncation: every input is read
  c.ratio_clip_c = 1.5;
  const rl::LossTokens tokens = tokens_of(b);
  const std::vector<double> lp = flat(b.cur);
  const rl::LossResult base = rl::policy_loss(lp, tokens, c, b.norm);

  // Garbage (non-finite log-probs, other advantages) wherever the mask is 0.
  rl::LossTokens junk = tokens;
  std::vector<double> junk_lp = lp;
  const double values[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity(), 40.0};
  size_t masked = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    if (tokens.token_mask[i] * tokens.sample_mask[tokens.seq[i]] != 0) continue;
    ++masked;
    junk_lp[i] = values[i % 4];
    junk.lp_prev[i] = values[(i + 1) % 4];
    junk.lp_gen[i] = values[(i + 2) % 4];
    junk.lp_ref[i] = values[(i + 3) % 4];
    junk.advantage[i] = 1e6;
    EXPECT_EQ(base.grad[i], 0.0);
  }
  ASSERT_GT(masked, 6u);
  for (Truncation tr : {Truncation::kTis, Truncation::kIcepop, Truncation::kSeqMaskTis}) {
    c.truncation = tr;
    c.truncation_ratio_min = 0.5;
    const rl::LossResult want = rl::policy_loss(lp, tokens, c, b.norm);
    const rl::LossResult got = rl::policy_loss(junk_lp, junk, c, b.norm);
    EXPECT_EQ(got.loss, want.loss);
    EXPECT_EQ(got.grad, want.grad);
    EXPECT_EQ(got.metrics, want.metrics);
  }
}

TEST(PolicyLoss, HandComputedMetricsOfOneToken) {
  // lp_prev = -1, lp_gen = -1.5, lp_curr = -0.9, A = 2, one valid token in the whole step.
  rl::LossTokens t;
  t.seq = {0, 0};
  t.lp_prev = {-1.0, -2.0};
  t.lp_gen = {-1.5, -2.0};
  t.advantage = {2.0, 2.0};
  t.token_mask = {1.0, 0.0};
  t.sample_mask = {1.0};
  LossConfig c;
  c.importance_sampling_correction = true;
  const rl::LossResult r = rl::policy_loss({-0.9, -3.0}, t, c, {1.0, 1.0});
  const double d = 1e-8;  // NeMo-RL's masked_mean adds it to the normaliser
  const double ratio = std::exp(0.1), w = std::exp(0.5);
  EXPECT_NEAR(r.loss, -2.0 * ratio * w / (1 + d), 1e-14);  // r = 1.105 is inside [0.8, 1.2]
  EXPECT_NEAR(r.grad[0], -2.0 * ratio * w / (1 + d), 1e-14);
  EXPECT_EQ(r.grad[1], 0.0);
  EXPECT_NEAR(r.metrics.at("token_mult_prob_error"), std::exp(0.5) / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("gen_kl_error"), (std::exp(0.5) - 1 - 0.5) / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("policy_kl_error"), (std::exp(-0.5) - 1 + 0.5) / (1 + d), 1e-14);
  const double M = std::log(0.5 * std::exp(-1.0) + 0.5 * std::exp(-1.5));
  const double js = 0.5 * (std::exp(-1 - M) - (-1 - M) - 1) + 0.5 * (std::exp(-1.5 - M) - (-1.5 - M) - 1);
  EXPECT_NEAR(r.metrics.at("js_divergence_error"), js / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("sampling_importance_ratio"), w / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("probs_ratio"), ratio / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("probs_ratio_clamped"), ratio / (1 + d), 1e-14);
  EXPECT_NEAR(r.metrics.at("approx_entropy"), std::exp(0.6) * 0.9 / (1 + d), 1e-14);
  EXPECT_EQ(r.metrics.at("clip_fraction"), 0.0);
  EXPECT_EQ(r.metrics.at("kl_penalty"), 0.0);
  EXPECT_EQ(r.metrics.count("is_oob_ratio"), 0u);
}

TEST(PolicyLoss, TiesSplitTheGradientAsTorchDoes) {
  rl::LossTokens t;
  t.seq = {0, 1};
  t.lp_prev = {-1.0, -1.0};
  t.lp_gen = {-1.0, -1.0};
  t.advantage = {1.5, -2.0};
  t.token_mask = {1.0, 1.0};
  t.sample_mask = {1.0, 1.0};
  LossConfig c;
  // Token 0: r = e^0.25 is exactly the upper bound 1 + (e^0.25 - 1). max(-A·r, -A·clamp(r)) ties
  // and clamp passes the gradient at its bound, so the whole unclipped gradient flows.
  c.ratio_clip_max = std::exp(0.25) - 1;
  // Token 1 (A < 0): r = e^0.5 = c, so min(ℓ, -A·c) ties: torch.minimum gives each side half.
  c.ratio_clip_c = std::exp(0.5);
  const rl::LossResult r = rl::policy_loss({-0.75, -0.5}, t, c, {2.0, 2.0});
  const double d = 2 + 1e-8;
  EXPECT_DOUBLE_EQ(r.grad[0], -1.5 * std::exp(0.25) / d);
  EXPECT_DOUBLE_EQ(r.grad[1], 0.5 * 2.0 * std::exp(0.5) / d);
  EXPECT_EQ(r.metrics.at("clip_fraction"), 0.0);  // a tie replaces nothing
}

void expect_error(const LossConfig& c, const std::string& key) {
  try {
    rl::check(c);
    ADD_FAILURE() << "no error for " << key;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

TEST(PolicyLoss, ConfigurationErrorsNameTheRecipeKey) {
  LossConfig ok;
  ok.ratio_clip_c = 3.0, ok.importance_sampling_correction = true, ok.truncation = Truncation::kIcepop;
  ok.truncation_ratio_min = 0.5;
  EXPECT_NO_THROW(rl::check(ok));
  LossConfig c = ok;
  c.ratio_clip_c = 1.0;
  expect_error(c, "loss_fn.ratio_clip_c");
  c = ok, c.importance_sampling_correction = false;
  expect_error(c, "loss_fn.use_importance_sampling_correction");
  c = ok, c.truncation_ratio_min = 2.5;
  expect_error(c, "loss_fn.truncated_importance_sampling_ratio_min");
  c = ok, c.truncation_ratio_min = -0.1;
  expect_error(c, "loss_fn.truncated_importance_sampling_ratio_min");
  c = ok, c.truncation_ratio = 0;
  expect_error(c, "loss_fn.truncated_importance_sampling_ratio");
  c = ok, c.ratio_clip_min = -0.1;
  expect_error(c, "loss_fn.ratio_clip_min");
  c = ok, c.ratio_clip_max = std::nan("");
  expect_error(c, "loss_fn.ratio_clip_max");
  c = ok, c.kl_input_clamp = 0;
  expect_error(c, "loss_fn.kl_input_clamp_value");
  c = ok, c.kl_output_clamp = -1;
  expect_error(c, "loss_fn.kl_output_clamp_value");
}

TEST(PolicyLoss, MalformedTokensAreErrors) {
  const Batch b = random_batch(3, 3);
  const rl::LossTokens good = tokens_of(b);
  const std::vector<double> lp = flat(b.cur);
  LossConfig kl;
  kl.kl_penalty = 0.1;
  rl::LossTokens t = good;
  t.lp_gen.pop_back();
  EXPECT_THROW(rl::policy_loss(lp, t, kl, b.norm), Error);
  t = good, t.lp_ref.clear();
  EXPECT_THROW(rl::policy_loss(lp, t, kl, b.norm), Error);
  EXPECT_NO_THROW(rl::policy_loss(lp, t, LossConfig(), b.norm));  // no KL: no reference needed
  t = good, t.seq.back() = 0;
  EXPECT_THROW(rl::policy_loss(lp, t, kl, b.norm), Error);
  t = good, t.seq.back() = 3;
  EXPECT_THROW(rl::policy_loss(lp, t, kl, b.norm), Error);
}

TEST(PolicyLoss, AutogradNodeOnF32KeepsTheDtype) {
  const Batch b = random_batch(5, 4);
  const rl::LossTokens tokens = tokens_of(b);
  std::vector<float> lp32;
  for (double v : flat(b.cur)) lp32.push_back(static_cast<float>(v));
  std::vector<double> lp64(lp32.begin(), lp32.end());
  LossConfig c = cases()[1].config;
  const rl::LossResult want = rl::policy_loss(lp64, tokens, c, b.norm);
  ag::Var x(Tensor::from_vector(lp32, {static_cast<int64_t>(lp32.size())}), true);
  std::map<std::string, double> metrics;
  ag::Var loss = rl::policy_loss(x, tokens, c, b.norm, metrics);
  EXPECT_EQ(loss.value().dtype(), DType::F32);
  EXPECT_FLOAT_EQ(static_cast<float>(loss.value().item()), static_cast<float>(want.loss));
  ag::backward(loss);
  ASSERT_EQ(x.grad().dtype(), DType::F32);
  for (size_t i = 0; i < lp32.size(); ++i)
    EXPECT_FLOAT_EQ(x.grad().data<float>()[i], static_cast<float>(want.grad[i]));
}

}  // namespace
}  // namespace g4

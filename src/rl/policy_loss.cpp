#include "rl/policy_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace g4::rl {

namespace {

// NeMo-RL's masked_mean adds 1e-8 to every denominator (global token or sequence count, a
// sequence's token count); kept so that the values match to the last digit and an empty
// sequence or micro-batch gives 0 rather than 0/0.
constexpr double kMaskedMeanEps = 1e-8;
constexpr double kNoClamp = std::numeric_limits<double>::infinity();

double nan_to_zero(double x) { return std::isfinite(x) ? x : 0.0; }

bool inside(double x, double lo, double hi) { return x >= lo && x <= hi; }

// The share of the gradient of max(a, b) (or of min(b, a)) that flows into `a`: all of it when a
// is the larger one, half at a tie (torch.maximum / torch.minimum split a tie's gradient evenly
// between both inputs), none otherwise.
double larger_share(double a, double b) { return a > b ? 1.0 : (a < b ? 0.0 : 0.5); }

// calculate_kl(logprobs = lp, logprobs_reference = lp_ref): the estimate and its derivative with
// respect to lp. torch.clamp passes the gradient where min <= x <= max (bounds included) and
// blocks it outside.
struct Kl {
  double value = 0, d_lp = 0;
};
Kl kl_estimate(double lp, double lp_ref, KlType type, double input_clamp, double output_clamp) {
  const double raw = lp_ref - lp;
  const double logr = std::clamp(raw, -input_clamp, input_clamp);
  const double d_logr = inside(raw, -input_clamp, input_clamp) ? -1.0 : 0.0;  // d logr / d lp
  double k = 0, dk = 0;                                                        // dk: d k / d logr
  switch (type) {
    case KlType::kK1:
      k = -logr, dk = -1.0;
      break;
    case KlType::kK2:
      k = logr * logr / 2, dk = logr;
      break;
    case KlType::kK3:
      k = std::exp(logr) - 1 - logr, dk = std::exp(logr) - 1;
      break;
  }
  const double out = std::clamp(k, -output_clamp, output_clamp);
  return {out, inside(k, -output_clamp, output_clamp) ? dk * d_logr : 0.0};
}

const char* truncation_name(Truncation t) {
  switch (t) {
    case Truncation::kNone: return "none";
    case Truncation::kTis: return "tis";
    case Truncation::kIcepop: return "icepop";
    case Truncation::kSeqMaskTis: return "seq-mask-tis";
  }
  return "?";
}

void check_tokens(size_t n, const LossTokens& t, const LossConfig& config) {
  const auto check_size = [n](const std::vector<double>& v, const char* name) {
    G4_CHECK(v.size() == n, "policy_loss: ", name, " has ", v.size(), " values for ", n, " tokens");
  };
  G4_CHECK(t.seq.size() == n, "policy_loss: seq has ", t.seq.size(), " values for ", n, " tokens");
  check_size(t.lp_prev, "lp_prev");
  check_size(t.lp_gen, "lp_gen");
  check_size(t.advantage, "advantage");
  check_size(t.token_mask, "token_mask");
  if (config.kl_penalty != 0) check_size(t.lp_ref, "lp_ref (needed by loss_fn.reference_policy_kl_penalty != 0)");
  const auto sequences = static_cast<int64_t>(t.sample_mask.size());
  for (size_t i = 0; i < n; ++i) {
    G4_CHECK(t.seq[i] >= 0 && t.seq[i] < sequences, "policy_loss: token ", i, " belongs to sequence ", t.seq[i],
             " of ", sequences, " (sample_mask's length)");
    G4_CHECK(i == 0 || t.seq[i] >= t.seq[i - 1], "policy_loss: sequence ids must be ascending, token ", i, " has ",
             t.seq[i], " after ", t.seq[i - 1]);
  }
}

}  // namespace

void check(const LossConfig& c) {
  G4_CHECK(c.ratio_clip_min >= 0 && std::isfinite(c.ratio_clip_min), "loss_fn.ratio_clip_min must be >= 0, got ",
           c.ratio_clip_min);
  G4_CHECK(c.ratio_clip_max >= 0 && std::isfinite(c.ratio_clip_max), "loss_fn.ratio_clip_max must be >= 0, got ",
           c.ratio_clip_max);
  G4_CHECK(!c.ratio_clip_c || (*c.ratio_clip_c > 1 && std::isfinite(*c.ratio_clip_c)),
           "loss_fn.ratio_clip_c must exceed 1 (or be null: no dual clip), got ", c.ratio_clip_c.value_or(0));
  G4_CHECK(std::isfinite(c.kl_penalty), "loss_fn.reference_policy_kl_penalty must be finite, got ", c.kl_penalty);
  G4_CHECK(c.kl_input_clamp > 0, "loss_fn.kl_input_clamp_value must be > 0, got ", c.kl_input_clamp);
  G4_CHECK(c.kl_output_clamp > 0, "loss_fn.kl_output_clamp_value must be > 0, got ", c.kl_output_clamp);
  if (c.truncation == Truncation::kNone) return;
  G4_CHECK(c.importance_sampling_correction, "loss_fn.truncated_importance_sampling_type: ",
           truncation_name(c.truncation), " needs loss_fn.use_importance_sampling_correction: true");
  G4_CHECK(c.truncation_ratio > 0 && std::isfinite(c.truncation_ratio),
           "loss_fn.truncated_importance_sampling_ratio must be > 0, got ", c.truncation_ratio);
  G4_CHECK(c.truncation_ratio_min >= 0 && c.truncation_ratio_min <= c.truncation_ratio,
           "loss_fn.truncated_importance_sampling_ratio_min must lie in [0, ",
           "loss_fn.truncated_importance_sampling_ratio = ", c.truncation_ratio, "], got ", c.truncation_ratio_min);
}

LossResult policy_loss(const std::vector<double>& lp_curr, const LossTokens& t, const LossConfig& config,
                       const Normalizers& norm) {
  check(config);
  const size_t n = lp_curr.size();
  check_tokens(n, t, config);
  G4_CHECK(norm.valid_tokens >= 0 && norm.valid_seqs >= 0, "policy_loss: negative normalizers (", norm.valid_tokens,
           " tokens, ", norm.valid_seqs, " sequences)");
  const size_t sequences = t.sample_mask.size();
  const double tok_norm = norm.valid_tokens + kMaskedMeanEps;
  const double seq_norm = norm.valid_seqs + kMaskedMeanEps;

  // Per sequence: the token-mask sum (the inner mean of the sequence-level reduction) and, for
  // seq-mask-tis, whether its geometric-mean importance ratio lies in [R_min, R]. Both use the
  // token mask alone, as NeMo-RL does; sample_mask enters afterwards.
  std::vector<double> seq_tokens(sequences, 0.0), seq_log_ratio(sequences, 0.0);
  for (size_t i = 0; i < n; ++i) {
    seq_tokens[t.seq[i]] += t.token_mask[i];
    if (t.token_mask[i] != 0) seq_log_ratio[t.seq[i]] += t.token_mask[i] * nan_to_zero(t.lp_prev[i] - t.lp_gen[i]);
  }
  std::vector<double> seq_kept(sequences, 1.0);
  double seq_oob = 0;
  if (config.truncation == Truncation::kSeqMaskTis) {
    for (size_t b = 0; b < sequences; ++b) {
      const double geo = std::exp(seq_log_ratio[b] / (seq_tokens[b] + kMaskedMeanEps));
      seq_kept[b] = inside(geo, config.truncation_ratio_min, config.truncation_ratio) ? 1.0 : 0.0;
      seq_oob += t.sample_mask[b] * (1.0 - seq_kept[b]);
    }
  }

  const double lo = 1.0 - config.ratio_clip_min, hi = 1.0 + config.ratio_clip_max;
  const double beta = config.kl_penalty;
  LossResult out;
  out.grad.assign(n, 0.0);
  double actor = 0, kl_sum = 0;
  double mult_prob = 0, gen_kl = 0, policy_kl = 0, js = 0, is_ratio = 0, oob = 0;
  double ratio_sum = 0, ratio_clamped_sum = 0, clipped = 0, entropy = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t b = t.seq[i];
    const double m = t.token_mask[i] * t.sample_mask[b];
    if (m == 0) continue;
    // The weight of this token's term in the reduced loss.
    const double coef = config.token_level_loss
                            ? m / tok_norm
                            : t.sample_mask[b] * t.token_mask[i] / (seq_tokens[b] + kMaskedMeanEps) / seq_norm;
    const double A = t.advantage[i], lc = lp_curr[i], lp = t.lp_prev[i], lg = t.lp_gen[i];

    // PPO surrogate (loss sign), with d/dr of the branch torch's autograd takes.
    const double r = std::exp(lc - lp);
    const double r_clip = std::clamp(r, lo, hi);
    const double loss1 = -A * r, loss2 = -A * r_clip;
    double ell = std::max(loss1, loss2);
    const double s1 = larger_share(loss1, loss2);
    double d_ell_dr = s1 * -A + (1 - s1) * (inside(r, lo, hi) ? -A : 0.0);
    bool was_clipped = loss2 > loss1;
    if (config.ratio_clip_c && A < 0) {
      const double loss3 = -A * *config.ratio_clip_c;
      const double keep = larger_share(loss3, ell);  // min(ell, loss3) passes ell's gradient where loss3 is larger
      was_clipped = was_clipped || ell > loss3;
      ell = std::min(ell, loss3);
      d_ell_dr *= keep;
    }

    // The train/inference importance weight: a constant of the data (no gradient).
    const double w_raw = nan_to_zero(std::exp(lp - lg));
    double w = w_raw;
    switch (config.truncation) {
      case Truncation::kNone:
        break;
      case Truncation::kTis:
        oob += m * (w_raw > config.truncation_ratio ? 1.0 : 0.0);
        w = std::min(w_raw, config.truncation_ratio);
        break;
      case Truncation::kIcepop: {
        const bool kept = inside(w_raw, config.truncation_ratio_min, config.truncation_ratio);
        oob += m * (kept ? 0.0 : 1.0);
        w = kept ? w_raw : 0.0;
        break;
      }
      case Truncation::kSeqMaskTis:
        w = w_raw * seq_kept[b];
        break;
    }
    const double w_used = config.importance_sampling_correction ? w : 1.0;
    actor += coef * w_used * ell;
    out.grad[i] += coef * w_used * d_ell_dr * r;

    if (beta != 0) {
      const Kl k = kl_estimate(lc, t.lp_ref[i], config.kl_type, config.kl_input_clamp, config.kl_output_clamp);
      const double kw = config.on_policy_kl_approximation ? nan_to_zero(std::exp(lc - lg)) : 1.0;
      kl_sum += coef * kw * beta * k.value;
      out.grad[i] += coef * kw * beta * k.d_lp;
    }

    mult_prob += m * std::exp(std::abs(lg - lp) * m);
    gen_kl += m * kl_estimate(lg, lp, config.kl_type, kNoClamp, kNoClamp).value;
    policy_kl += m * kl_estimate(lp, lg, config.kl_type, kNoClamp, kNoClamp).value;
    // M = log(e^a/2 + e^g/2), written so that it stays finite for very unlikely tokens.
    const double mix = std::max(lp, lg) + std::log(0.5 + 0.5 * std::exp(-std::abs(lp - lg)));
    js += m * (0.5 * (std::exp(lp - mix) - (lp - mix) - 1) + 0.5 * (std::exp(lg - mix) - (lg - mix) - 1));
    is_ratio += m * w;
    ratio_sum += m * r;
    ratio_clamped_sum += m * r_clip;
    clipped += m * (was_clipped ? 1.0 : 0.0);
    entropy -= m * std::exp(lc - lg) * lc;
  }

  out.loss = actor + kl_sum;
  auto& mt = out.metrics;
  mt["loss"] = out.loss;
  mt["actor_loss"] = actor;
  mt["kl_penalty"] = beta != 0 ? kl_sum / beta : 0.0;
  mt["token_mult_prob_error"] = mult_prob / tok_norm;
  mt["gen_kl_error"] = gen_kl / tok_norm;
  mt["policy_kl_error"] = policy_kl / tok_norm;
  mt["js_divergence_error"] = js / tok_norm;
  mt["sampling_importance_ratio"] = is_ratio / tok_norm;
  if (config.truncation != Truncation::kNone)
    mt["is_oob_ratio"] = config.truncation == Truncation::kSeqMaskTis ? seq_oob / seq_norm : oob / tok_norm;
  mt["probs_ratio"] = ratio_sum / tok_norm;
  mt["probs_ratio_clamped"] = ratio_clamped_sum / tok_norm;
  mt["clip_fraction"] = clipped / tok_norm;
  mt["approx_entropy"] = entropy / tok_norm;
  return out;
}

ag::Var policy_loss(const ag::Var& lp_curr, const LossTokens& tokens, const LossConfig& config,
                    const Normalizers& norm, std::map<std::string, double>& metrics) {
  const Tensor& v = lp_curr.value();
  G4_CHECK(v.dtype() == DType::F32 || v.dtype() == DType::F64 || v.dtype() == DType::BF16,
           "policy_loss: lp_curr must be f32, f64 or bf16, got ", v.describe());
  const Tensor host = v.to(Device::CPU).to(DType::F64);
  const double* p = host.data<double>();
  LossResult r = policy_loss(std::vector<double>(p, p + host.numel()), tokens, config, norm);
  metrics = std::move(r.metrics);

  const bool rec = ag::should_record({&lp_curr});
  const DType out_dtype = v.dtype() == DType::F64 ? DType::F64 : DType::F32;
  ag::Var out(Tensor::scalar(r.loss, out_dtype, v.device()), rec);
  if (rec) {
    auto li = lp_curr.impl(), oi = out.impl();
    ag::record({oi}, [li, oi, grad = std::move(r.grad)]() mutable {
      const double g = oi->grad.item();
      for (double& x : grad) x *= g;
      const Tensor& lv = li->value;
      ag::accumulate_grad(li, Tensor::from_vector(grad, lv.shape()).to(lv.dtype()).to(lv.device()), true);
    });
  }
  return out;
}

}  // namespace g4::rl

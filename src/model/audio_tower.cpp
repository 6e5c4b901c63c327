#include "model/audio_tower.h"

#include <cmath>
#include <iterator>
#include <limits>
#include <numbers>
#include <optional>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"

namespace g4::model {

namespace {

constexpr const char* kEmbed = "model.embed_audio.embedding_projection.weight";
// transformers builds the feed-forward norms and the layer's three norms with Gemma4RMSNorm's
// default eps, not rms_norm_eps (which the subsampler's LayerNorm, the light conv's norms and
// embed_audio take); the published configs set both to 1e-6.
constexpr double kDefaultNormEps = 1e-6;

bool flag(const Tensor& mask, int64_t i) { return element_as_int(mask, i) != 0; }

// "model.audio_tower.layers.0.self_attn.q_proj." -> "layers.0.self_attn.q_proj" (the tower's own names).
std::string linear_name(const std::string& prefix) {
  return prefix.substr(kAudioPrefix.size(), prefix.size() - kAudioPrefix.size() - 1);
}

}  // namespace

void set_default_audio_buffers(ParamStore& params, const io::AudioConfig& a) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (!a.use_clipped_linears) return;
  for (const std::string& lin : audio_clipped_linears(a))
    for (const char* b : kClipBounds)
      params.set_buffer(lin + b, ParamKind::kAudioClip,
                        Tensor::full({}, std::string(b).find("min") != std::string::npos ? -inf : inf));
}

AudioTower AudioTower::load(const io::SafetensorsReader& r, const io::AudioConfig& c, int64_t text_hidden) {
  return build(
      c, text_hidden,
      [&](const std::string& name, const Shape& shape) { return ag::Var(r.get_f32(name, shape), true); },
      [&](const std::string& name) -> std::optional<double> {
        if (!r.has(name)) return std::nullopt;
        return element_as_double(r.get_f32(name, {}, io::SafetensorsReader::Infinities::kAllowed), 0);
      });
}

AudioTower AudioTower::from_params(const ParamStore& store, const io::ModelConfig& cfg) {
  G4_CHECK(cfg.has_audio && !cfg.diffusion, "audio tower: the model's config has no audio_config");
  auto get = [&](const std::string& name, const Shape& shape) {
    const ag::Var& v = store.at(name);
    G4_CHECK(v.value().shape() == shape, "audio tower: '", name, "' is ", v.value().describe(), ", expected shape ",
             shape_str(shape));
    return v;
  };
  auto bound = [&](const std::string& name) -> std::optional<double> {
    auto it = store.buffers.find(name);
    if (it == store.buffers.end()) return std::nullopt;
    return element_as_double(it->second.value.to(Device::CPU), 0);
  };
  return build(cfg.audio, cfg.hidden_size, get, bound);
}

AudioTower AudioTower::build(const io::AudioConfig& c, int64_t text_hidden,
                             const std::function<ag::Var(const std::string&, const Shape&)>& get,
                             const std::function<std::optional<double>(const std::string&)>& bound) {
  AudioTower t;
  t.config_ = c;
  t.text_hidden_ = text_hidden;
  for (const ParamSpec& s : audio_param_specs(c, text_hidden)) t.params_[s.name] = get(s.name, s.shape);
  const double inf = std::numeric_limits<double>::infinity();
  for (const std::string& lin : audio_clipped_linears(c)) {
    Clip clip{-inf, inf, -inf, inf};
    if (c.use_clipped_linears) {
      double* out[] = {&clip.in_min, &clip.in_max, &clip.out_min, &clip.out_max};
      for (size_t i = 0; i < std::size(kClipBounds); ++i)
        if (const std::optional<double> v = bound(lin + kClipBounds[i])) *out[i] = *v;
    }
    t.clips_[linear_name(lin)] = clip;
  }
  return t;
}

AudioTower AudioTower::to_f64() const {
  AudioTower t = *this;
  for (auto& [name, v] : t.params_) v = ag::Var(v.value().to(DType::F64), true);
  return t;
}

ag::Var AudioTower::constant(const std::vector<double>& v, const Shape& shape) const {
  const Tensor& w = p("output_proj.weight").value();
  return ag::Var(Tensor::from_vector(v, shape).to(w.dtype()).to(w.device()));
}

Tensor AudioTower::ids(const std::vector<int64_t>& v, const Shape& shape) const {
  return Tensor::from_vector(v, shape).to(p("output_proj.weight").value().device());
}

// Rows of `table` [N, D] picked by ids (N itself picks a zero row): the differentiable gather the
// convolutions and the relative-position shift are made of.
ag::Var AudioTower::gather_rows(const ag::Var& table, const std::vector<int64_t>& v, const Shape& id_shape) const {
  const int64_t d = table.value().size(-1);
  const ag::Var zero(Tensor::zeros({1, d}, table.value().dtype(), table.value().device()));
  return ag::embedding(ag::concat({table, zero}, 0), ids(v, id_shape), -1);
}

// x + b (b [N] broadcast over the rows of x [..., N]).
ag::Var AudioTower::add_bias(const ag::Var& x, const ag::Var& b) const {
  const int64_t n = b.value().numel(), rows = x.value().numel() / n;
  const ag::Var rowsb = gather_rows(ag::reshape(b, {1, n}), std::vector<int64_t>(size_t(rows), 0), {rows});
  return ag::add(x, ag::reshape(rowsb, x.value().shape()));
}

const ag::Var& AudioTower::p(const std::string& name) const {
  auto it = params_.find(kAudioPrefix + name);
  if (it == params_.end()) it = params_.find(name);
  G4_CHECK(it != params_.end(), "audio tower: no parameter ", name);
  return it->second;
}

ag::Var AudioTower::clipped_linear(const ag::Var& x, const std::string& name) const {
  const Clip& c = clips_.at(name);
  ag::Var y = config_.use_clipped_linears ? ag::clamp(x, c.in_min, c.in_max) : x;
  y = ag::linear(y, p(name + ".linear.weight"));
  return config_.use_clipped_linears ? ag::clamp(y, c.out_min, c.out_max) : y;
}

// Conv2d(k 3, stride 2, pad 1, no bias) on x [B, T, W, Cin] (channels last), then LayerNorm over
// channels (weight, no bias) and ReLU. The convolution is a gather of 3x3 patches (zero row for
// the padding) times the weight reordered to [Cout, 3*3*Cin]; LayerNorm is RMSNorm of the
// channel-centred values, the centring a constant matrix I - 1/C.
ag::Var AudioTower::conv_block(const ag::Var& x, const Tensor& mask, int64_t layer) const {
  const Tensor& xv = x.value();
  const int64_t B = xv.size(0), T = xv.size(1), W = xv.size(2), C = xv.size(3);
  std::vector<double> keep(size_t(B * T * W * C));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      std::fill_n(keep.begin() + (b * T + t) * W * C, W * C, flag(mask, b * T + t) ? 1.0 : 0.0);
  const ag::Var masked = ag::mul(x, constant(keep, xv.shape()));

  const int64_t To = (T - 1) / 2 + 1, Wo = (W - 1) / 2 + 1, zero_row = B * T * W;
  std::vector<int64_t> ids;
  ids.reserve(size_t(B * To * Wo * 9));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < To; ++i)
      for (int64_t j = 0; j < Wo; ++j)
        for (int64_t di = 0; di < 3; ++di)
          for (int64_t dj = 0; dj < 3; ++dj) {
            const int64_t r = 2 * i - 1 + di, c = 2 * j - 1 + dj;
            ids.push_back(r >= 0 && r < T && c >= 0 && c < W ? (b * T + r) * W + c : zero_row);
          }
  const ag::Var patches = ag::reshape(gather_rows(ag::reshape(masked, {B * T * W, C}), ids, {B * To * Wo, 9}),
                                      {B * To * Wo, 9 * C});
  const std::string name = "subsample_conv_projection.layer" + std::to_string(layer) + ".";
  const ag::Var& w = p(name + "conv.weight");
  const int64_t Co = w.value().size(0);
  std::vector<int64_t> order;
  order.reserve(size_t(Co * 9 * C));
  for (int64_t o = 0; o < Co; ++o)
    for (int64_t k = 0; k < 9; ++k)
      for (int64_t c = 0; c < C; ++c) order.push_back((o * C + c) * 9 + k);
  const ag::Var w_taps = ag::reshape(gather_rows(ag::reshape(w, {Co * C * 9, 1}), order, {Co, 9 * C}), {Co, 9 * C});
  const ag::Var y = ag::linear(patches, w_taps);

  std::vector<double> centre(size_t(Co * Co), -1.0 / double(Co));
  for (int64_t i = 0; i < Co; ++i) centre[size_t(i * Co + i)] += 1.0;
  const ag::Var centred = ag::linear(y, constant(centre, {Co, Co}));
  const ag::Var normed = ag::rmsnorm(centred, p(name + "norm.weight"), config_.rms_norm_eps);
  return ag::reshape(ag::activation(normed, ops::Activation::kRelu), {B, To, Wo, Co});
}

ag::Var AudioTower::feed_forward(const ag::Var& x, const std::string& f) const {
  const double gc = config_.gradient_clipping;
  ag::Var y = ag::rmsnorm(ag::clamp(x, -gc, gc), p(f + "pre_layer_norm.weight"), kDefaultNormEps);
  y = clipped_linear(ag::activation(clipped_linear(y, f + "ffw_layer_1"), ops::Activation::kSilu), f + "ffw_layer_2");
  y = ag::rmsnorm(ag::clamp(y, -gc, gc), p(f + "post_layer_norm.weight"), kDefaultNormEps);
  return ag::add(x, ag::scale(y, config_.residual_weight));
}

// transformers' blocked attention (chunks of C queries over C + P keys, P = context_left - 1),
// written per query as the band it reduces to: query t sees keys s with 0 <= t - s <= P - 1
// (transformers' sliding_window_mask_function((P, 0)) keeps P keys, MULTIMODAL.md 12.1) that are
// valid. The relative term follows transformers' table and shift: the table holds the distances
// M, M - 1, ..., 0 with M = (C + P) / 2 (half its context, floored), and _rel_shift gives key s of
// query t the table row c = P - (t - s), that is the distance M - P + (t - s), or nothing (a zero
// row) when c > M. With the released configs (C = 12, P = 12) M = P and the row is distance t - s;
// other chunk/context pairs shift or cut it, and g4 follows. Softcapped logits, masked ones set to
// the invalid value, softmax over the keys.
ag::Var AudioTower::attention(const ag::Var& x, const Tensor& key_mask, const std::string& a) const {
  const Tensor& xv = x.value();
  const int64_t B = xv.size(0), T = xv.size(1), H = config_.hidden_size, N = config_.num_heads, D = H / N;
  const int64_t P = config_.context_left - 1, M = (config_.chunk_size + P) / 2, R = M + 1;  // R table rows
  const double q_scale = std::pow(double(D), -0.5) / std::numbers::ln2;
  const double k_scale = std::log1p(std::numbers::e) / std::numbers::ln2;

  const ag::Var pds = ag::activation(p(a + "per_dim_scale"), ops::Activation::kSoftplus);
  const ag::Var q = ag::mul_rowvec(ag::scale(ag::reshape(clipped_linear(x, a + "q_proj"), {B, T, N, D}), q_scale), pds);
  const ag::Var k = ag::scale(ag::reshape(clipped_linear(x, a + "k_proj"), {B, T, N, D}), k_scale);
  const ag::Var v = ag::reshape(clipped_linear(x, a + "v_proj"), {B, T, N, D});

  // Sinusoidal table of distances M..0 (row j is distance M - j), as transformers computes it in f32.
  const int64_t half = H / 2;
  const double inc = std::log(1e4) / double(std::max<int64_t>(half - 1, 1));
  std::vector<double> pe(size_t(R * H));
  for (int64_t j = 0; j < R; ++j)
    for (int64_t i = 0; i < half; ++i) {
      const float ts = float(double(M - j)) * std::exp(-float(double(i) * inc));
      pe[size_t(j * H + i)] = std::sin(ts);
      pe[size_t(j * H + half + i)] = std::cos(ts);
    }
  const ag::Var relk = ag::reshape(ag::linear(constant(pe, {R, H}), p(a + "relative_k_proj.weight")), {R, N, D});

  std::vector<int64_t> shift(size_t(T * T));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < T; ++s) {
      const int64_t c = P - (t - s);  // the table row of key s (masked outside 0 <= t - s < P)
      shift[size_t(t * T + s)] = t - s >= 0 && c >= 0 && c < R ? t * R + c : T * R;
    }

  std::vector<ag::Var> rows;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> keep(size_t(T * T), 0.0), fill(size_t(T * T), config_.invalid_logit);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = std::max<int64_t>(0, t - P + 1); s <= t; ++s)
        if (flag(key_mask, b * T + s)) keep[size_t(t * T + s)] = 1.0, fill[size_t(t * T + s)] = 0.0;
    const ag::Var keep_v = constant(keep, {T, T}), fill_v = constant(fill, {T, T});
    auto head = [&](const ag::Var& z, int64_t h) { return ag::reshape(ag::narrow(ag::narrow(z, 0, b, 1), 2, h, 1), {T, D}); };
    std::vector<ag::Var> heads;
    for (int64_t h = 0; h < N; ++h) {
      const ag::Var qh = head(q, h);
      const ag::Var ac = ag::linear(qh, head(k, h));
      const ag::Var rel = ag::linear(qh, ag::reshape(ag::narrow(relk, 1, h, 1), {R, D}));
      const ag::Var bd = ag::reshape(gather_rows(ag::reshape(rel, {T * R, 1}), shift, {T, T}), {T, T});
      const ag::Var logits = ag::add(ag::mul(ag::softcap(ag::add(ac, bd), config_.logit_cap), keep_v), fill_v);
      heads.push_back(ag::matmul(ag::softmax_lastdim(logits), head(v, h)));
    }
    rows.push_back(ag::reshape(ag::concat(heads, 1), {1, T, H}));
  }
  return clipped_linear(ag::concat(rows, 0), a + "post");
}

// Pre-norm, GLU, causal depthwise convolution (taps as shifted copies times per-channel weights),
// norm, SiLU, projection, residual.
ag::Var AudioTower::light_conv(const ag::Var& x, const std::string& l) const {
  const Tensor& xv = x.value();
  const int64_t B = xv.size(0), T = xv.size(1), H = config_.hidden_size, K = config_.conv_kernel_size;
  ag::Var y = clipped_linear(ag::rmsnorm(x, p(l + "pre_layer_norm.weight"), config_.rms_norm_eps), l + "linear_start");
  y = ag::mul(ag::narrow(y, 2, 0, H), ag::activation(ag::narrow(y, 2, H, H), ops::Activation::kSigmoid));
  const ag::Var flat = ag::reshape(y, {B * T, H});
  const ag::Var w = ag::reshape(p(l + "depthwise_conv1d.weight"), {H, K});
  ag::Var conv;
  for (int64_t j = 0; j < K; ++j) {
    const int64_t lag = K - 1 - j;
    std::vector<int64_t> ids(size_t(B * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) ids[size_t(b * T + t)] = t >= lag ? b * T + t - lag : B * T;
    const ag::Var tap = ag::mul_rowvec(gather_rows(flat, ids, {B * T}), ag::reshape(ag::narrow(w, 1, j, 1), {H}));
    conv = j == 0 ? tap : ag::add(conv, tap);
  }
  const double gc = config_.gradient_clipping;
  ag::Var z = ag::rmsnorm(ag::clamp(ag::reshape(conv, {B, T, H}), -gc, gc), p(l + "conv_norm.weight"), config_.rms_norm_eps);
  z = clipped_linear(ag::activation(z, ops::Activation::kSilu), l + "linear_end");
  return ag::add(x, z);
}

AudioTower::Output AudioTower::forward(const Tensor& features, const Tensor& mask_in) const {
  G4_CHECK(features.dim() == 3 && features.size(2) == 128, "audio tower: input_features ", features.describe(),
           " must be [B, T, 128]");
  G4_CHECK(mask_in.dim() == 2 && mask_in.size(0) == features.size(0) && mask_in.size(1) == features.size(1),
           "audio tower: input_features_mask ", mask_in.describe(), " must be [B, T] for input_features ",
           features.describe());
  G4_CHECK(is_floating(features.dtype()), "audio tower: input_features must be floating point, got ",
           features.describe());
  const Tensor features_mask = mask_in.to(Device::CPU);  // read on the host to build the gathers
  const int64_t B = features.size(0), T = features.size(1);
  G4_CHECK(T >= 1, "audio tower: no frames");
  const Tensor& w = p("output_proj.weight").value();
  auto halve = [](const Tensor& m) {  // mask[:, ::2]
    const int64_t b = m.size(0), t = m.size(1), to = (t + 1) / 2;
    Tensor out = Tensor::zeros({b, to}, DType::Bool);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < to; ++j) out.data<uint8_t>()[i * to + j] = flag(m, i * t + 2 * j) ? 1 : 0;
    return out;
  };
  ag::Var h = ag::Var(features.to(w.device()).to(w.dtype()).reshape({B, T, 128, 1}));
  h = conv_block(h, features_mask, 0);
  const Tensor mask2 = halve(features_mask);
  h = conv_block(h, mask2, 1);
  const Tensor mask4 = halve(mask2);
  const int64_t T4 = h.value().size(1);
  h = ag::linear(ag::reshape(h, {B, T4, h.value().size(2) * h.value().size(3)}),
                 p("subsample_conv_projection.input_proj_linear.weight"));
  const double gc = config_.gradient_clipping;
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    h = feed_forward(h, L + "feed_forward1.");
    ag::Var y = ag::rmsnorm(ag::clamp(h, -gc, gc), p(L + "norm_pre_attn.weight"), kDefaultNormEps);
    y = attention(y, mask4, L + "self_attn.");
    h = ag::add(h, ag::rmsnorm(ag::clamp(y, -gc, gc), p(L + "norm_post_attn.weight"), kDefaultNormEps));
    h = light_conv(h, L + "lconv1d.");
    h = feed_forward(h, L + "feed_forward2.");
    h = ag::rmsnorm(ag::clamp(h, -gc, gc), p(L + "norm_out.weight"), kDefaultNormEps);
  }
  return {add_bias(ag::linear(h, p("output_proj.weight")), p("output_proj.bias")), mask4};
}

ag::Var AudioTower::embed(const ag::Var& hidden) const {
  return ag::linear(ag::rmsnorm(hidden, ag::Var(), config_.rms_norm_eps), p(kEmbed));
}

ag::Var AudioTower::soft_tokens(const Tensor& features, const Tensor& features_mask) const {
  const Output out = forward(features, features_mask);
  const ag::Var e = embed(out.hidden);
  const int64_t rows = out.mask.numel();
  std::vector<int64_t> valid;
  for (int64_t i = 0; i < rows; ++i)
    if (flag(out.mask, i)) valid.push_back(i);
  const int64_t n = static_cast<int64_t>(valid.size());
  return ag::reshape(gather_rows(ag::reshape(e, {rows, text_hidden_}), valid, {n}), {n, text_hidden_});
}

}  // namespace g4::model


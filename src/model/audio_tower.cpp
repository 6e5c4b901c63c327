#include "model/audio_tower.h"

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"

namespace g4::model {

namespace {

constexpr const char* kTower = "model.audio_tower.";
constexpr const char* kEmbed = "model.embed_audio.embedding_projection.weight";
// transformers builds the feed-forward norms and the layer's three norms with Gemma4RMSNorm's
// default eps, not rms_norm_eps (which the subsampler's LayerNorm, the light conv's norms and
// embed_audio take); the published configs set both to 1e-6.
constexpr double kDefaultNormEps = 1e-6;

// A constant (no gradient) from f64 values, in `dtype`.
ag::Var constant(const std::vector<double>& v, const Shape& shape, DType dtype) {
  return ag::Var(Tensor::from_vector(v, shape).to(dtype));
}

bool flag(const Tensor& mask, int64_t i) { return element_as_int(mask, i) != 0; }

// Rows of `table` [N, D] picked by ids (N itself picks a zero row): the differentiable gather the
// convolutions and the relative-position shift are made of.
ag::Var gather_rows(const ag::Var& table, const std::vector<int64_t>& ids, const Shape& id_shape) {
  const int64_t d = table.value().size(-1);
  const ag::Var zero(Tensor::zeros({1, d}, table.value().dtype()));
  return ag::embedding(ag::concat({table, zero}, 0), Tensor::from_vector(ids, id_shape), -1);
}

// x + b (b [N] broadcast over the rows of x [..., N]).
ag::Var add_bias(const ag::Var& x, const ag::Var& b) {
  const int64_t n = b.value().numel(), rows = x.value().numel() / n;
  const ag::Var rowsb = gather_rows(ag::reshape(b, {1, n}), std::vector<int64_t>(size_t(rows), 0), {rows});
  return ag::add(x, ag::reshape(rowsb, x.value().shape()));
}

}  // namespace

AudioTower AudioTower::load(const io::SafetensorsReader& r, const io::AudioConfig& c, int64_t text_hidden) {
  return build(
      c, text_hidden, [&](const std::string& name, const Shape& shape) { return r.get_f32(name, shape); },
      [&](const std::string& name) { return r.has(name); });
}

AudioTower AudioTower::from_buffers(const ParamStore& store, const io::ModelConfig& cfg) {
  G4_CHECK(cfg.has_audio, "audio tower: the model's config has no audio_config");
  auto get = [&](const std::string& name, const Shape& shape) {
    auto it = store.buffers.find(name);
    G4_CHECK(it != store.buffers.end() && it->second.kind == ParamKind::kAudioTower, "audio tower: the model holds no '",
             name, "' (its checkpoint had no audio tower weights)");
    G4_CHECK(it->second.value.shape() == shape, "audio tower: '", name, "' is ", it->second.value.describe(),
             ", expected shape ", shape_str(shape));
    return it->second.value;
  };
  return build(cfg.audio, cfg.hidden_size, get, [&](const std::string& name) { return store.buffers.count(name) > 0; });
}

AudioTower AudioTower::build(const io::AudioConfig& c, int64_t text_hidden,
                             const std::function<Tensor(const std::string&, const Shape&)>& get,
                             const std::function<bool(const std::string&)>& has) {
  AudioTower t;
  t.config_ = c;
  t.text_hidden_ = text_hidden;
  const int64_t H = c.hidden_size, D = H / c.num_heads;
  auto add = [&](const std::string& name, const Shape& shape) {
    t.params_[kTower + name] = ag::Var(get(kTower + name, shape), true);
  };
  auto add_clipped = [&](const std::string& name, const Shape& shape) {
    add(name + ".linear.weight", shape);
    const double inf = std::numeric_limits<double>::infinity();
    Clip clip{-inf, inf, -inf, inf};
    if (c.use_clipped_linears) {
      // Absent bounds are transformers' initial ±inf buffers.
      auto bound = [&](const char* which, double& out) {
        const std::string key = kTower + name + "." + which;
        if (has(key)) out = element_as_double(get(key, {}), 0);
      };
      bound("input_min", clip.in_min), bound("input_max", clip.in_max);
      bound("output_min", clip.out_min), bound("output_max", clip.out_max);
    }
    t.clips_[name] = clip;
  };
  const std::string sub = "subsample_conv_projection.";
  add(sub + "layer0.conv.weight", {c.conv_channels0, 1, 3, 3});
  add(sub + "layer0.norm.weight", {c.conv_channels0});
  add(sub + "layer1.conv.weight", {c.conv_channels1, c.conv_channels0, 3, 3});
  add(sub + "layer1.norm.weight", {c.conv_channels1});
  add(sub + "input_proj_linear.weight", {H, c.conv_channels0 / 4 * c.conv_channels1});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    for (const char* ff : {"feed_forward1.", "feed_forward2."}) {
      add_clipped(L + ff + "ffw_layer_1", {4 * H, H});
      add_clipped(L + ff + "ffw_layer_2", {H, 4 * H});
      add(L + ff + "pre_layer_norm.weight", {H});
      add(L + ff + "post_layer_norm.weight", {H});
    }
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "post"}) add_clipped(L + "self_attn." + proj, {H, H});
    add(L + "self_attn.relative_k_proj.weight", {H, H});
    add(L + "self_attn.per_dim_scale", {D});
    add_clipped(L + "lconv1d.linear_start", {2 * H, H});
    add_clipped(L + "lconv1d.linear_end", {H, H});
    add(L + "lconv1d.depthwise_conv1d.weight", {H, 1, c.conv_kernel_size});
    add(L + "lconv1d.pre_layer_norm.weight", {H});
    add(L + "lconv1d.conv_norm.weight", {H});
    for (const char* n : {"norm_pre_attn", "norm_post_attn", "norm_out"}) add(L + n + ".weight", {H});
  }
  add("output_proj.weight", {c.output_proj_dims, H});
  add("output_proj.bias", {c.output_proj_dims});
  t.params_[kEmbed] = ag::Var(get(kEmbed, {text_hidden, c.output_proj_dims}), true);
  return t;
}

AudioTower AudioTower::to_f64() const {
  AudioTower t = *this;
  for (auto& [name, v] : t.params_) v = ag::Var(v.value().to(DType::F64), true);
  return t;
}

const ag::Var& AudioTower::p(const std::string& name) const {
  auto it = params_.find(kTower + name);
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
  const DType dt = xv.dtype();
  std::vector<double> keep(size_t(B * T * W * C));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      std::fill_n(keep.begin() + (b * T + t) * W * C, W * C, flag(mask, b * T + t) ? 1.0 : 0.0);
  const ag::Var masked = ag::mul(x, constant(keep, xv.shape(), dt));

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
  const ag::Var centred = ag::linear(y, constant(centre, {Co, Co}, dt));
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
// valid, with the relative logit q_t . relk[P - (t - s)]. Softcapped logits, masked ones set to
// the invalid value, softmax over the keys.
ag::Var AudioTower::attention(const ag::Var& x, const Tensor& key_mask, const std::string& a) const {
  const Tensor& xv = x.value();
  const int64_t B = xv.size(0), T = xv.size(1), H = config_.hidden_size, N = config_.num_heads, D = H / N;
  const int64_t P = config_.context_left - 1, R = P + 1;  // R relative distances 0..P
  const DType dt = xv.dtype();
  const double q_scale = std::pow(double(D), -0.5) / std::numbers::ln2;
  const double k_scale = std::log1p(std::numbers::e) / std::numbers::ln2;

  const ag::Var pds = ag::activation(p(a + "per_dim_scale"), ops::Activation::kSoftplus);
  const ag::Var q = ag::mul_rowvec(ag::scale(ag::reshape(clipped_linear(x, a + "q_proj"), {B, T, N, D}), q_scale), pds);
  const ag::Var k = ag::scale(ag::reshape(clipped_linear(x, a + "k_proj"), {B, T, N, D}), k_scale);
  const ag::Var v = ag::reshape(clipped_linear(x, a + "v_proj"), {B, T, N, D});

  // Sinusoidal table of distances P..0 (row j is distance P - j), as transformers computes it in f32.
  const int64_t half = H / 2;
  const double inc = std::log(1e4) / double(std::max<int64_t>(half - 1, 1));
  std::vector<double> pe(size_t(R * H));
  for (int64_t j = 0; j < R; ++j)
    for (int64_t i = 0; i < half; ++i) {
      const float ts = float(double(P - j)) * std::exp(-float(double(i) * inc));
      pe[size_t(j * H + i)] = std::sin(ts);
      pe[size_t(j * H + half + i)] = std::cos(ts);
    }
  const ag::Var relk = ag::reshape(ag::linear(constant(pe, {R, H}, dt), p(a + "relative_k_proj.weight")), {R, N, D});

  std::vector<int64_t> shift(size_t(T * T));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < T; ++s) shift[size_t(t * T + s)] = t - s >= 0 && t - s <= P ? t * R + (P - (t - s)) : T * R;

  std::vector<ag::Var> rows;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> keep(size_t(T * T), 0.0), fill(size_t(T * T), config_.invalid_logit);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = std::max<int64_t>(0, t - P + 1); s <= t; ++s)
        if (flag(key_mask, b * T + s)) keep[size_t(t * T + s)] = 1.0, fill[size_t(t * T + s)] = 0.0;
    const ag::Var keep_v = constant(keep, {T, T}, dt), fill_v = constant(fill, {T, T}, dt);
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

AudioTower::Output AudioTower::forward(const Tensor& features, const Tensor& features_mask) const {
  G4_CHECK(features.dim() == 3 && features.size(2) == 128, "audio tower: input_features ", features.describe(),
           " must be [B, T, 128]");
  G4_CHECK(features_mask.dim() == 2 && features_mask.size(0) == features.size(0) && features_mask.size(1) == features.size(1),
           "audio tower: input_features_mask ", features_mask.describe(), " must be [B, T] for input_features ",
           features.describe());
  const int64_t B = features.size(0), T = features.size(1);
  G4_CHECK(T >= 1, "audio tower: no frames");
  const DType dt = p("output_proj.weight").value().dtype();
  auto halve = [](const Tensor& m) {  // mask[:, ::2]
    const int64_t b = m.size(0), t = m.size(1), to = (t + 1) / 2;
    Tensor out = Tensor::zeros({b, to}, DType::Bool);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < to; ++j) out.data<uint8_t>()[i * to + j] = flag(m, i * t + 2 * j) ? 1 : 0;
    return out;
  };
  ag::Var h = ag::Var(features.to(dt).reshape({B, T, 128, 1}));
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

}  // namespace g4::model

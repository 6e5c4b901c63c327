#include "model/vision_tower.h"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "model/rope_freqs.h"

namespace g4::model {

namespace {

struct Tower {
  const ParamStore& params;
  const io::VisionConfig& cfg;
  DType dtype;
  Device device;
  Tensor inv_freq;  // [head_dim / 4]: one half of a head is rotated by x, the other by y

  // A constant (no gradient) of the model's dtype, on its device, from host floats.
  ag::Var constant(const std::vector<float>& values, const Shape& shape) const {
    return ag::Var(Tensor::from_vector(values, shape).to(dtype).to(device), false);
  }

  const ag::Var& p(const std::string& name) const { return params.at(name); }
  double bound(const std::string& name) const { return element_as_double(params.buffer(name).to(Device::CPU), 0); }

  // Gemma4ClippableLinear: clamp the input, linear, clamp the output (when configured).
  ag::Var linear(const std::string& prefix, const ag::Var& x) const {
    if (!cfg.use_clipped_linears) return ag::linear(x, p(prefix + "linear.weight"));
    ag::Var y = ag::linear(ag::clamp(x, bound(prefix + "input_min"), bound(prefix + "input_max")),
                           p(prefix + "linear.weight"));
    return ag::clamp(y, bound(prefix + "output_min"), bound(prefix + "output_max"));
  }

  // x [1, n, nH, d]: the first half of each head rotated by the x positions, the second by y.
  ag::Var rope2d(const ag::Var& x, const Tensor& px, const Tensor& py) const {
    const int64_t half = cfg.head_dim / 2;
    return ag::concat({ag::rope(ag::narrow(x, 3, 0, half), px, inv_freq),
                       ag::rope(ag::narrow(x, 3, half, half), py, inv_freq)},
                      3);
  }

  ag::Var layer(int64_t l, const ag::Var& h, const Tensor& px, const Tensor& py) const {
    const std::string pre = vision_layer_prefix(l);
    const double eps = cfg.rms_norm_eps;
    const int64_t n = h.value().size(0), nH = cfg.num_heads, d = cfg.head_dim;
    const Shape heads{1, n, nH, d};
    const ag::Var a = ag::rmsnorm(h, p(pre + "input_layernorm.weight"), eps);
    ag::Var q = ag::rmsnorm(ag::reshape(linear(pre + "self_attn.q_proj.", a), heads), p(pre + "self_attn.q_norm.weight"),
                            eps);
    ag::Var k = ag::rmsnorm(ag::reshape(linear(pre + "self_attn.k_proj.", a), heads), p(pre + "self_attn.k_norm.weight"),
                            eps);
    const ag::Var v = ag::rmsnorm(ag::reshape(linear(pre + "self_attn.v_proj.", a), heads), ag::Var(), eps);
    q = rope2d(q, px, py);
    k = rope2d(k, px, py);
    ops::AttentionMask mask;
    mask.causal = false;
    // Gemma4VisionAttention: scaling 1.0 (the q/k norms set the scale).
    const ag::Var o = ag::reshape(ag::attention(q, k, v, mask, 1.0), {n, nH * d});
    ag::Var x = ag::add(h, ag::rmsnorm(linear(pre + "self_attn.o_proj.", o), p(pre + "post_attention_layernorm.weight"),
                                       eps));
    const ag::Var m = ag::rmsnorm(x, p(pre + "pre_feedforward_layernorm.weight"), eps);
    const ag::Var g = ag::gelu_gate(linear(pre + "mlp.gate_proj.", m), linear(pre + "mlp.up_proj.", m));
    return ag::add(x, ag::rmsnorm(linear(pre + "mlp.down_proj.", g), p(pre + "post_feedforward_layernorm.weight"), eps));
  }
};

}  // namespace

void set_default_vision_buffers(ParamStore& params, const io::VisionConfig& v, Device device) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (v.use_clipped_linears)
    for (const std::string& lin : vision_clipped_linears(v))
      for (const char* b : kClipBounds)
        params.set_buffer(lin + b, ParamKind::kVisionClip,
                          Tensor::full({}, std::string(b).find("min") != std::string::npos ? -inf : inf,
                                       DType::F32, device));
  if (v.standardize) {
    params.set_buffer(kVisionPrefix + "std_bias", ParamKind::kVisionStandardize,
                      Tensor::zeros({v.hidden_size}, DType::F32, device));
    params.set_buffer(kVisionPrefix + "std_scale", ParamKind::kVisionStandardize,
                      Tensor::full({v.hidden_size}, 1.0, DType::F32, device));
  }
}

VisionOutputs vision_forward(const ParamStore& params, const io::VisionConfig& v, const VisionInputs& in, DType dtype,
                             Device device) {
  // The patches are gathered and the pooling weights built on the host.
  const Tensor pv = in.pixel_values.to(Device::CPU);
  const Tensor pos = in.image_position_ids.to(Device::CPU);
  G4_CHECK(pv.dim() == 3 && pv.size(2) == v.patch_dim(), "pixel_values ", pv.describe(), " must be [N, P, ",
           v.patch_dim(), "] (3 x patch_size² = 3 x ", v.patch_size, "²)");
  G4_CHECK(pos.dim() == 3 && pos.size(0) == pv.size(0) && pos.size(1) == pv.size(1) && pos.size(2) == 2,
           "image_position_ids ", pos.describe(), " must be [N, P, 2] for pixel_values ", pv.describe());
  G4_CHECK(is_floating(pv.dtype()), "pixel_values must be floating point, got ", pv.describe());
  const int64_t N = pv.size(0), P = pv.size(1), D = pv.size(2), Hv = v.hidden_size, k = v.pooling_kernel_size;
  const Tower tower{params, v, dtype, device,
                    rope_inv_freq(io::RopeSpec{"default", v.rope_theta, 1.0, 1.0}, v.head_dim / 2).to(device)};
  const ag::Var& table = params.at(kVisionPrefix + "patch_embedder.position_embedding_table");
  const int64_t E = v.position_embedding_size;
  const ag::Var table_x = ag::reshape(ag::narrow(table, 0, 0, 1), {E, Hv});
  const ag::Var table_y = ag::reshape(ag::narrow(table, 0, 1, 1), {E, Hv});
  const Tensor pv32 = pv.to(DType::F32);

  VisionOutputs out;
  std::vector<ag::Var> pooled;
  for (int64_t i = 0; i < N; ++i) {
    // The image's valid patches, in order.
    std::vector<int64_t> xs, ys;
    std::vector<float> x;
    int64_t max_x = 0;
    for (int64_t j = 0; j < P; ++j) {
      const int64_t px = element_as_int(pos, (i * P + j) * 2), py = element_as_int(pos, (i * P + j) * 2 + 1);
      if (px == -1 && py == -1) continue;
      G4_CHECK(px >= 0 && py >= 0 && px < E && py < E, "image_position_ids[", i, ", ", j, "] = (", px, ", ", py,
               ") is outside [0, ", E, ") (position_embedding_size) and is not the padding (-1, -1)");
      xs.push_back(px);
      ys.push_back(py);
      max_x = std::max(max_x, px + 1);
      // Gemma4VisionPatchEmbedder: 2·(pixel - 0.5) in fp32.
      const float* row = pv32.data<float>() + (i * P + j) * D;
      for (int64_t c = 0; c < D; ++c) x.push_back(2.0f * (row[c] - 0.5f));
    }
    const int64_t n = static_cast<int64_t>(xs.size());
    G4_CHECK(n > 0 && n % (k * k) == 0 && max_x % k == 0, "image ", i, " has ", n, " valid patches over ", max_x,
             " columns: the pooler needs a whole number of ", k, "x", k, " blocks");
    const Tensor px = Tensor::from_vector(xs, {n}).to(device), py = Tensor::from_vector(ys, {n}).to(device);
    ag::Var h = ag::linear(tower.constant(x, {n, D}), params.at(kVisionPrefix + "patch_embedder.input_proj.weight"));
    h = ag::add(h, ag::add(ag::embedding(table_x, px, -1), ag::embedding(table_y, py, -1)));
    const Tensor rx = px.reshape({1, n}), ry = py.reshape({1, n});
    for (int64_t l = 0; l < v.num_layers; ++l) h = tower.layer(l, h, rx, ry);
    out.encoder.push_back(h);

    // Gemma4VisionPooler: each soft token is the mean of a k×k block, row-major over the blocks.
    const int64_t m = n / (k * k), cols = max_x / k;
    std::vector<float> w(static_cast<size_t>(m * n), 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t cell = xs[j] / k + cols * (ys[j] / k);
      G4_CHECK(cell < m, "image ", i, ": patch (", xs[j], ", ", ys[j], ") falls outside its ", m, " pooled cells");
      w[cell * n + j] = 1.0f / static_cast<float>(k * k);
    }
    pooled.push_back(ag::matmul(tower.constant(w, {m, n}), h));
    out.tokens_per_image.push_back(m);
  }
  ag::Var soft = ag::scale(ag::concat(pooled, 0), std::sqrt(static_cast<double>(Hv)));
  if (v.standardize) {
    const int64_t rows = soft.value().size(0);
    const Tensor bias = params.buffer(kVisionPrefix + "std_bias").to(Device::CPU).to(DType::F32);
    const Tensor scale = params.buffer(kVisionPrefix + "std_scale").to(Device::CPU).to(DType::F32);
    std::vector<float> neg_bias(static_cast<size_t>(rows * Hv)), scales(static_cast<size_t>(rows * Hv));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < Hv; ++c) {
        neg_bias[r * Hv + c] = -bias.data<float>()[c];
        scales[r * Hv + c] = scale.data<float>()[c];
      }
    soft = ag::mul(ag::add(soft, tower.constant(neg_bias, {rows, Hv})), tower.constant(scales, {rows, Hv}));
  }
  out.soft_tokens = soft;
  // Gemma4MultimodalEmbedder: projection of the weightless RMSNorm (no √H scaling).
  out.projected = ag::linear(ag::rmsnorm(soft, ag::Var(), v.rms_norm_eps),
                             params.at(kVisionEmbedPrefix + "embedding_projection.weight"));
  return out;
}

Tensor vision_block_ids(const Tensor& types) {
  G4_CHECK(types.dim() == 2 && !is_floating(types.dtype()), "mm_token_type_ids must be [B, S] integers, got ",
           types.describe());
  const int64_t B = types.size(0), S = types.size(1);
  Tensor out = Tensor::empty({B, S}, DType::I32);
  int32_t* o = out.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int32_t next = 0;
    bool prev = false;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = element_as_int(types, b * S + s);
      G4_CHECK(t >= 0 && t <= 3, "mm_token_type_ids[", b, ", ", s, "] = ", t,
               ": expected 0 (text), 1 (image), 2 (video) or 3 (audio)");
      const bool vis = t == 1 || t == 2;  // audio tokens stay causal
      if (vis && !prev) ++next;
      o[b * S + s] = vis ? next - 1 : -1;
      prev = vis;
    }
  }
  return out;
}

ag::Var merge_soft_tokens(const ag::Var& embeds, const Tensor& ids, int64_t token_id, const ag::Var& features) {
  const Tensor& e = embeds.value();
  G4_CHECK(e.dim() == 3 && ids.dim() == 2 && ids.size(0) == e.size(0) && ids.size(1) == e.size(1),
           "merge_soft_tokens: embeddings ", e.describe(), " do not match input_ids ", ids.describe());
  const int64_t B = e.size(0), S = e.size(1), H = e.size(2);
  int64_t count = 0;
  for (int64_t i = 0; i < ids.numel(); ++i) count += element_as_int(ids, i) == token_id;
  const Tensor& f = features.value();
  G4_CHECK(f.dim() == 2 && f.size(1) == H && f.size(0) == count, "the input_ids hold ", count,
           " placeholder tokens (id ", token_id, ") but their features are ", f.describe(), " (need [", count, ", ", H,
           "])");
  std::vector<ag::Var> rows;
  int64_t used = 0;
  for (int64_t b = 0; b < B; ++b) {
    const ag::Var row = ag::reshape(ag::narrow(embeds, 0, b, 1), {S, H});
    std::vector<ag::Var> pieces;
    for (int64_t s = 0; s < S;) {
      const bool image = element_as_int(ids, b * S + s) == token_id;
      int64_t end = s;
      while (end < S && (element_as_int(ids, b * S + end) == token_id) == image) ++end;
      if (image) {
        pieces.push_back(ag::narrow(features, 0, used, end - s));
        used += end - s;
      } else {
        pieces.push_back(ag::narrow(row, 0, s, end - s));
      }
      s = end;
    }
    rows.push_back(ag::reshape(pieces.size() == 1 ? pieces[0] : ag::concat(pieces, 0), {1, S, H}));
  }
  return rows.size() == 1 ? rows[0] : ag::concat(rows, 0);
}

ag::Var slice_soft_tokens(const ag::Var& features, const Tensor& ids, int64_t token_id, int64_t start, int64_t len) {
  G4_CHECK(ids.dim() == 2 && start >= 0 && len >= 0 && start + len <= ids.size(1), "slice_soft_tokens: columns [",
           start, ", ", start + len, ") are not inside the rows ", ids.describe());
  const int64_t B = ids.size(0), S = ids.size(1);
  std::vector<std::pair<int64_t, int64_t>> ranges;  // (first feature row, count) per row with some in the slice
  int64_t used = 0;  // placeholders before the current column, over the rows in order
  for (int64_t b = 0; b < B; ++b) {
    int64_t first = -1, count = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (element_as_int(ids, b * S + s) != token_id) continue;
      if (s >= start && s < start + len) {
        if (first < 0) first = used;
        ++count;
      }
      ++used;
    }
    // A row's placeholders inside the slice are consecutive in the row-major order.
    if (count > 0) ranges.emplace_back(first, count);
  }
  const Tensor& f = features.value();
  G4_CHECK(f.dim() == 2 && f.size(0) == used, "the input_ids hold ", used, " placeholder tokens (id ", token_id,
           ") over their whole rows but their features are ", f.describe());
  if (ranges.empty()) return {};
  std::vector<ag::Var> pieces;
  for (const auto& [first, count] : ranges) pieces.push_back(ag::narrow(features, 0, first, count));
  return pieces.size() == 1 ? pieces[0] : ag::concat(pieces, 0);
}

}  // namespace g4::model

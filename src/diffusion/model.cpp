#include "diffusion/model.h"

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"
#include "ops/elementwise.h"

namespace g4::diffusion {

namespace {

constexpr const char* kEmbedding = "model.embed_tokens.weight";

// The rows' validity as 0/1 bytes ([B, n] of any integer dtype; undefined: all valid).
std::vector<std::vector<uint8_t>> valid_rows(const Tensor& valid, int64_t batch, int64_t n, const char* what) {
  std::vector<std::vector<uint8_t>> rows(static_cast<size_t>(batch), std::vector<uint8_t>(static_cast<size_t>(n), 1));
  if (!valid.defined()) return rows;
  G4_CHECK(valid.shape() == Shape({batch, n}), what, " ", valid.describe(), " must be [", batch, ", ", n, "]");
  const Tensor host = valid.to(Device::CPU);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) rows[b][j] = element_as_int(host, b * n + j) != 0;
  return rows;
}

void check_ids(const model::Gemma4& m, const Tensor& ids, const char* what) {
  G4_CHECK(ids.defined() && ids.dim() == 2 && ids.size(1) > 0, what, " must be [B, n] token ids, got ", ids.describe());
  G4_CHECK(!is_floating(ids.dtype()), what, " must hold integer token ids, got ", ids.describe());
  const Tensor host = ids.to(Device::CPU);
  for (int64_t i = 0; i < host.numel(); ++i) {
    const int64_t id = element_as_int(host, i);
    G4_CHECK(id >= 0 && id < m.config().vocab_size, what, " holds token id ", id, " outside the vocabulary [0, ",
             m.config().vocab_size, ")");
  }
}

}  // namespace

ag::Var canvas_input(const model::Gemma4& m, const Tensor& canvas, const Tensor& sc_logits, const Tensor& sc_mask) {
  const io::ModelConfig& cfg = m.config();
  G4_CHECK(cfg.diffusion, "canvas_input: not a diffusion_gemma model");
  check_ids(m, canvas, "canvas_ids");
  const int64_t B = canvas.size(0), C = canvas.size(1), H = cfg.hidden_size, V = cfg.vocab_size;
  const double eps = cfg.rms_norm_eps;
  auto w = [&](const std::string& name) -> const ag::Var& { return m.params().at(name); };
  ag::Var x = m.embed(canvas);
  if (sc_logits.defined()) {
    G4_CHECK(sc_logits.shape() == Shape({B, C, V}) && is_floating(sc_logits.dtype()), "self_conditioning_logits ",
             sc_logits.describe(), " must be [", B, ", ", C, ", ", V, "] floats (one row of logits per canvas token)");
    // softmax in fp32, cast to the embedding's dtype (as transformers does), on the model's device.
    Tensor p = ops::softmax_lastdim(sc_logits.to(m.device()).to(DType::F32));
    if (sc_mask.defined()) {
      // A masked example gets no signal: zero probabilities make its expected embedding exactly 0,
      // as multiplying it by the mask does.
      const std::vector<std::vector<uint8_t>> keep = valid_rows(sc_mask.reshape({1, B}), 1, B, "self_conditioning_mask");
      for (int64_t b = 0; b < B; ++b)
        if (!keep[0][static_cast<size_t>(b)]) {
          Tensor rows = p.slice0(b, 1);
          rows.copy_from(Tensor::zeros(rows.shape(), DType::F32, p.device()));
        }
    }
    const double s = static_cast<float>(std::sqrt(static_cast<double>(H)));
    const ag::Var soft = ag::scale(ag::matmul(ag::Var(p.to(m.dtype())), w(kEmbedding)), s);
    const ag::Var n = ag::rmsnorm(soft, w("model.self_conditioning.pre_norm.weight"), eps);
    const ag::Var mlp = ag::linear(ag::gelu_gate(ag::linear(n, w("model.self_conditioning.gate_proj.weight")),
                                                 ag::linear(n, w("model.self_conditioning.up_proj.weight"))),
                                   w("model.self_conditioning.down_proj.weight"));
    x = ag::add(x, mlp);
  } else {
    G4_CHECK(!sc_mask.defined(), "self_conditioning_mask is given without self_conditioning_logits");
  }
  return ag::rmsnorm(x, ag::Var(), eps);
}

Tensor EncoderCache::key_valid(model::AttnKind kind, const Tensor& extra) const {
  const int64_t n = extra.size(1);
  const int64_t first = start_[static_cast<size_t>(kind)], kept = length_ - first;
  const std::vector<std::vector<uint8_t>> own = valid_rows(extra, batch_, n, "key validity");
  Tensor t = Tensor::empty({batch_, kept + n}, DType::I64);
  int64_t* o = t.data<int64_t>();
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t j = 0; j < kept; ++j) *o++ = valid_[b][first + j];
    for (int64_t j = 0; j < n; ++j) *o++ = own[b][j];
  }
  return t;
}

void EncoderCache::set_key_valid(const Tensor& valid) {
  G4_CHECK(length_ > 0, "EncoderCache::set_key_valid: the cache is empty");
  valid_ = valid_rows(valid, batch_, length_, "the context's key validity");
}

void EncoderCache::append(const std::vector<model::LayerKV>& chunk, const Tensor& valid, const model::Gemma4& m) {
  const io::ModelConfig& cfg = m.config();
  G4_CHECK(static_cast<int64_t>(chunk.size()) == cfg.num_layers, "EncoderCache: ", chunk.size(),
           " layers of keys for a model of ", cfg.num_layers);
  const int64_t B = chunk[0].k.shape()[0], n = chunk[0].k.shape()[1];
  G4_CHECK(length_ == 0 || B == batch_, "EncoderCache: a batch of ", B, " rows appended to a cache of ", batch_);
  batch_ = B;
  if (valid_.empty()) valid_.assign(static_cast<size_t>(B), {});
  const std::vector<std::vector<uint8_t>> rows = valid_rows(valid, B, n, "attention_mask");
  for (int64_t b = 0; b < B; ++b) valid_[b].insert(valid_[b].end(), rows[b].begin(), rows[b].end());
  length_ += n;
  // transformers' sliding layers keep sliding_window - 1 positions: with the next query's own key
  // that is exactly the window.
  const int64_t sliding_keep = cfg.sliding_window > 0 ? cfg.sliding_window - 1 : length_;
  start_ = {0, std::max<int64_t>(0, length_ - sliding_keep)};
  if (layers_.empty()) layers_.assign(chunk.size(), {});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    model::LayerKV& kv = layers_[static_cast<size_t>(l)];
    const model::LayerKV& add = chunk[static_cast<size_t>(l)];
    Tensor k = kv.k.defined() ? ops::concat({kv.k.value(), add.k.value()}, 1) : add.k.value();
    Tensor v = kv.v.defined() ? ops::concat({kv.v.value(), add.v.value()}, 1) : add.v.value();
    const int64_t first = start_[static_cast<size_t>(model::layer_kind(cfg, l))], have = k.size(1);
    const int64_t drop = first - (length_ - have);
    if (drop > 0) {
      k = ops::narrow(k, 1, drop, have - drop);
      v = ops::narrow(v, 1, drop, have - drop);
    }
    kv = {ag::Var(k), ag::Var(v), first};
  }
}

ag::Var encode(const model::Gemma4& m, const Tensor& ids, const Tensor& valid, EncoderCache& cache) {
  const io::ModelConfig& cfg = m.config();
  G4_CHECK(cfg.diffusion, "encode: not a diffusion_gemma model");
  check_ids(m, ids, "input_ids");
  const int64_t B = ids.size(0), n = ids.size(1);
  G4_CHECK(cache.length() == 0 || cache.batch() == B, "encode: ", B, " rows for a cache of ", cache.batch());
  ag::NoGrad no_grad;
  Tensor text = ids.to(Device::CPU).to(DType::I64).clone();
  for (int64_t i = 0; i < text.numel(); ++i)
    if (text.data<int64_t>()[i] == cfg.image_token_id) text.data<int64_t>()[i] = cfg.pad_token_id;
  const Tensor own = valid.defined() ? valid : Tensor::full({B, n}, 1.0, DType::I64);
  model::StackAttention attn;
  attn.causal = true;
  attn.q_start = cache.length();
  if (cache.length() > 0) attn.prefix = cache.layers();
  model::StackAttention::Block block{0, n, {}};
  if (cache.length() == 0) cache = EncoderCache();  // a fresh cache learns its batch from the first chunk
  for (model::AttnKind kind : {model::AttnKind::kFull, model::AttnKind::kSliding})
    block.key_valid[static_cast<size_t>(kind)] =
        cache.length() > 0 ? cache.key_valid(kind, own) : own.to(DType::I64);
  attn.blocks = {block};
  std::vector<model::LayerKV> kv;
  const ag::Var hidden = m.run_stack(m.embed(text), model::arange_positions(B, n, cache.length()), attn, true, &kv);
  cache.append(kv, own, m);
  return hidden;
}

Tensor denoise(const model::Gemma4& m, const Tensor& canvas, const EncoderCache& cache, const Tensor& sc_logits,
               const Tensor& sc_mask, const Tensor& canvas_valid) {
  G4_CHECK(cache.length() > 0, "denoise: the cache is empty (encode the prompt first)");
  const int64_t B = canvas.size(0), C = canvas.size(1);
  G4_CHECK(B == cache.batch(), "denoise: ", B, " canvas rows for a cache of ", cache.batch());
  ag::NoGrad no_grad;
  const Tensor own = canvas_valid.defined() ? canvas_valid : Tensor::full({B, C}, 1.0, DType::I64);
  model::StackAttention attn;
  attn.causal = false;
  attn.q_start = cache.length();
  attn.prefix = cache.layers();
  model::StackAttention::Block block{0, C, {}};
  // On the model's device once per call, not in every layer.
  for (model::AttnKind kind : {model::AttnKind::kFull, model::AttnKind::kSliding})
    block.key_valid[static_cast<size_t>(kind)] = cache.key_valid(kind, own).to(m.device());
  attn.blocks = {block};
  const ag::Var x0 = canvas_input(m, canvas, sc_logits, sc_mask);
  const Tensor hidden = m.run_stack(x0, model::arange_positions(B, C, cache.length()), attn, false, nullptr).value();
  return m.head_logits(hidden);
}

}  // namespace g4::diffusion

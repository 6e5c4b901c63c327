// DiffusionGemma's two passes over one Gemma 4 MoE stack (docs/diffusion.md, DIFFUSION.md §C):
// the causal encoder over clean tokens, which fills a per-layer K/V cache (and gives next-token
// logits), and the bidirectional denoiser over a canvas of noisy tokens that attends over
// [cached keys ; canvas keys] and is self-conditioned on the previous step's logits.
#pragma once
#include <array>
#include <vector>

#include "autograd/variable.h"
#include "model/gemma4.h"

namespace g4::diffusion {

// The denoiser's input (DIFFUSION.md §C.4): the canvas's scaled token embedding plus the
// self-conditioning MLP of the expected embedding under softmax(sc_logits), through a scale-free
// RMSNorm. sc_logits [B, C, V] (undefined: no signal, the MLP term is 0 but the norm still applies)
// is a constant; sc_mask [B] (optional, 0/1) gates the signal per example. Returns x0 [B, C, H].
ag::Var canvas_input(const model::Gemma4& m, const Tensor& canvas, const Tensor& sc_logits = {},
                     const Tensor& sc_mask = {});

// The encoder's K/V as transformers' DynamicCache keeps it (§C.3): full-attention layers every
// encoded position, sliding layers the last sliding_window - 1. Built by encode(), read by denoise().
class EncoderCache {
 public:
  int64_t batch() const { return batch_; }
  int64_t length() const { return length_; }  // positions encoded so far: the next one's index
  // Per layer: the retained keys and values and the position of the first.
  const std::vector<model::LayerKV>& layers() const { return layers_; }
  // Key validity of the retained positions of `kind` followed by `extra` [B, n] (0 = padding),
  // as the attention of a call that adds n keys of its own sees them.
  Tensor key_valid(model::AttnKind kind, const Tensor& extra) const;
  // Replaces the validity of every encoded position, valid [B, length()] (undefined: all valid), for
  // the calls that read the cache next. transformers' forward takes the decoder's mask over the
  // context apart from the encoder's: without a decoder_attention_mask the canvas sees every cached
  // key, padding included.
  void set_key_valid(const Tensor& valid);
  void append(const std::vector<model::LayerKV>& chunk, const Tensor& valid, const model::Gemma4& m);

 private:
  int64_t batch_ = 0, length_ = 0;
  std::array<int64_t, model::kAttnKinds> start_{};  // per kind: the first retained position
  std::vector<model::LayerKV> layers_;
  std::vector<std::vector<uint8_t>> valid_;  // per row: every encoded position, 1 = a real token
};

// Encodes ids [B, n] as positions [cache.length(), + n) into the cache, attending causally over the
// retained cache and the chunk; valid [B, n] (optional, 0 = padding key) as HF's attention_mask.
// image_token_id is embedded as the pad token. Returns the normed hidden states [B, n, H]
// (m.logits(hidden) are the encoder's next-token "AR" logits). No tape.
ag::Var encode(const model::Gemma4& m, const Tensor& ids, const Tensor& valid, EncoderCache& cache);

// The denoiser's logits [B, C, V] (f32, after the final softcap) for canvas [B, C] at positions
// cache.length() + j, over the cache and the whole canvas (bidirectional). canvas_valid [B, C]
// (optional, 0 = a padding key); sc_logits / sc_mask as canvas_input. No tape.
Tensor denoise(const model::Gemma4& m, const Tensor& canvas, const EncoderCache& cache, const Tensor& sc_logits = {},
               const Tensor& sc_mask = {}, const Tensor& canvas_valid = {});

}  // namespace g4::diffusion

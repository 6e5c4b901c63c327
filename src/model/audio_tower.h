// Gemma 4's audio tower (transformers' Gemma4AudioModel, a USM-style conformer) and its projection
// into the text model (model.embed_audio), built from ag:: ops so the backward exists.
// MULTIMODAL.md 7; docs/multimodal.md "Audio".
#pragma once
#include <functional>
#include <map>
#include <string>

#include "autograd/variable.h"
#include "core/tensor.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace g4::model {

class AudioTower {
 public:
  // The tower's and embed_audio's tensors from a Gemma4ForConditionalGeneration checkpoint
  // (model.audio_tower.*, model.embed_audio.*) as f32 leaves that require gradients.
  // `text_hidden` is the text model's hidden size (embed_audio's output).
  static AudioTower load(const io::SafetensorsReader& reader, const io::AudioConfig& config, int64_t text_hidden);
  // The same tensors from a loaded model's kAudioTower buffers (load_hf_weights keeps them there).
  static AudioTower from_buffers(const ParamStore& store, const io::ModelConfig& config);

  struct Output {
    ag::Var hidden;  // last_hidden_state [B, T4, output_proj_dims]
    Tensor mask;     // bool [B, T4]: the frame mask after the two stride-2 convolutions
  };
  // input_features [B, T, 128] (f32, or f64 where the parameters are f64), input_features_mask
  // bool [B, T] (valid frames a prefix of each row). Outputs at invalid frames are not meaningful.
  Output forward(const Tensor& input_features, const Tensor& input_features_mask) const;
  // embed_audio: Linear(RMSNorm without scale(hidden)) -> [..., text_hidden].
  ag::Var embed(const ag::Var& hidden) const;

  // Every parameter by its Hugging Face name (clip bounds are buffers and not listed).
  const std::map<std::string, ag::Var>& parameters() const { return params_; }
  const io::AudioConfig& config() const { return config_; }
  // The parameters converted to f64 (for gradient checks in double precision).
  AudioTower to_f64() const;

 private:
  struct Clip {
    double in_min, in_max, out_min, out_max;
  };
  // Reads every tensor by HF name through `get` (required, shape-checked) and `has` (clip bounds).
  static AudioTower build(const io::AudioConfig& config, int64_t text_hidden,
                          const std::function<Tensor(const std::string&, const Shape&)>& get,
                          const std::function<bool(const std::string&)>& has);
  const ag::Var& p(const std::string& name) const;
  ag::Var clipped_linear(const ag::Var& x, const std::string& name) const;
  ag::Var conv_block(const ag::Var& x, const Tensor& mask, int64_t layer) const;
  ag::Var feed_forward(const ag::Var& x, const std::string& prefix) const;
  ag::Var attention(const ag::Var& x, const Tensor& key_mask, const std::string& prefix) const;
  ag::Var light_conv(const ag::Var& x, const std::string& prefix) const;

  io::AudioConfig config_;
  int64_t text_hidden_ = 0;
  std::map<std::string, ag::Var> params_;
  std::map<std::string, Clip> clips_;  // by the ClippableLinear's name
};

}  // namespace g4::model

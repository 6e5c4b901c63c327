// Gemma 4's audio tower (transformers' Gemma4AudioModel, a USM-style conformer) and its projection
// into the text model (model.embed_audio), built from ag:: ops so the backward exists.
// MULTIMODAL.md 7; docs/multimodal.md "Audio".
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "autograd/variable.h"
#include "core/tensor.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace g4::model {

// Unbounded clips (±inf, transformers' initial buffers) for every clipped linear of the tower when
// the config clips: what a fresh model holds, and what a checkpoint without bounds keeps.
void set_default_audio_buffers(ParamStore& params, const io::AudioConfig& a);

class AudioTower {
 public:
  // The tower's and embed_audio's tensors from a Gemma4ForConditionalGeneration checkpoint
  // (model.audio_tower.*, model.embed_audio.*) as f32 leaves that require gradients.
  // `text_hidden` is the text model's hidden size (embed_audio's output).
  static AudioTower load(const io::SafetensorsReader& reader, const io::AudioConfig& config, int64_t text_hidden);
  // The tower on a model's own parameters (audio_param_specs: gradients reach them) and clip-bound
  // buffers, in the model's dtype and on its device.
  static AudioTower from_params(const ParamStore& store, const io::ModelConfig& config);

  struct Output {
    ag::Var hidden;  // last_hidden_state [B, T4, output_proj_dims]
    Tensor mask;     // bool [B, T4] on the host: the frame mask after the two stride-2 convolutions
  };
  // input_features [B, T, 128] (floats; converted to the parameters' dtype and device),
  // input_features_mask bool [B, T] (valid frames a prefix of each row). Outputs at invalid frames
  // are not meaningful.
  Output forward(const Tensor& input_features, const Tensor& input_features_mask) const;
  // embed_audio: Linear(RMSNorm without scale(hidden)) -> [..., text_hidden].
  ag::Var embed(const ag::Var& hidden) const;
  // What replaces the audio placeholders: embed_audio's rows where the output mask is true, in
  // (clip, frame) order [n, text_hidden].
  ag::Var soft_tokens(const Tensor& input_features, const Tensor& input_features_mask) const;

  // Every parameter by its Hugging Face name (clip bounds are buffers and not listed).
  const std::map<std::string, ag::Var>& parameters() const { return params_; }
  const io::AudioConfig& config() const { return config_; }
  // The parameters converted to f64 (for gradient checks in double precision).
  AudioTower to_f64() const;

 private:
  struct Clip {
    double in_min, in_max, out_min, out_max;
  };
  // Takes every parameter of audio_param_specs through `get` (shape-checked by the caller) and each
  // clip bound through `bound` (absent: unbounded).
  static AudioTower build(const io::AudioConfig& config, int64_t text_hidden,
                          const std::function<ag::Var(const std::string&, const Shape&)>& get,
                          const std::function<std::optional<double>(const std::string&)>& bound);
  const ag::Var& p(const std::string& name) const;
  // A constant (no gradient) or an index tensor where the parameters live.
  ag::Var constant(const std::vector<double>& v, const Shape& shape) const;
  Tensor ids(const std::vector<int64_t>& v, const Shape& shape) const;
  ag::Var gather_rows(const ag::Var& table, const std::vector<int64_t>& ids, const Shape& id_shape) const;
  ag::Var add_bias(const ag::Var& x, const ag::Var& b) const;
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

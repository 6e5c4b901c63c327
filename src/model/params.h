// The parameters of a Gemma 4 text decoder in g4's native layout: their names, shapes and the
// per-layer structure. Dense weights keep Hugging Face's [out, in] Linear layout; experts are
// stored for grouped GEMMs as [E, H, 2I] (gate | up) and [E, I, H] (per_expert_scale folded in).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "io/hf_config.h"

namespace g4::model {

// The routed experts a model holds: [begin, begin + count) of num_experts.
struct ExpertRange {
  int64_t begin = 0;
  int64_t count = 0;  // 0 = all experts
};

// What a parameter or buffer is, stored with it in ParamStore: loading, export, weight decay,
// freezing and expert parallelism ask the kind, never the name.
enum class ParamKind {
  kTokenEmbedding,           // model.embed_tokens (also the LM head when tied)
  kPerLayerEmbedding,        // model.embed_tokens_per_layer: the per-layer embedding (PLE) table
  kPerLayerModelProjection,  // model.per_layer_model_projection: hidden states -> per-layer inputs
  kPerLayerInput,            // per layer: per_layer_input_gate and per_layer_projection
  kNorm,                     // every RMSNorm weight (layer norms, q/k norms, PLE norms, the final norm)
  kAttention,                // q/k/v/o projections
  kMlp,                      // the dense MLP's gate/up/down projections
  kRouter,                   // moe.gate.proj: the router's projection to expert logits
  kRouterScale,              // moe.gate.scale: the router's per-channel input scale
  kExpertGateUp,             // moe.experts.gate_and_up_projs [E, H, 2I]
  kExpertDown,               // moe.experts.down_projs [E, I, H], per_expert_scale folded in
  kLmHead,                   // lm_head (untied models only)
  kSelfConditioning,         // diffusion: the self-conditioning MLP's gate/up/down projections
  kLoraA,                    // a LoRA adapter's down projection A [r, in] (model/lora.h)
  kLoraB,                    // a LoRA adapter's up projection B [out, r]
  kExpertLoraA,              // a routed-expert weight's adapters A [E, in, r], split by expert like it
  kExpertLoraB,              // their B [E, r, out]
  kVisionTower,              // model.vision_tower: patch projection, position table, attention and MLP matrices
  kVisionEmbedding,          // model.embed_vision.embedding_projection: vision soft tokens -> text hidden
  kAudioTower,               // model.audio_tower: convolutions, projections, attention, conv and scale weights
  kAudioEmbedding,           // model.embed_audio.embedding_projection: audio soft tokens -> text hidden
  // Buffers.
  kLayerScalar,     // per layer: the scalar its output is multiplied by
  kPerExpertScale,  // router.per_expert_scale as the checkpoint had it [E]
  kPassThrough,     // a checkpoint tensor g4 does not compute with, written back as read (a vision tower)
  kVisionClip,      // a clipped vision linear's scalar bound (input_min/input_max/output_min/output_max)
  kVisionStandardize,  // vision_tower.std_bias / std_scale
  kAudioClip,          // a clipped audio linear's scalar bound (input_min/input_max/output_min/output_max)
};
// Every kind, in the enum's order.
inline constexpr ParamKind kAllParamKinds[] = {
    ParamKind::kTokenEmbedding,
    ParamKind::kPerLayerEmbedding,
    ParamKind::kPerLayerModelProjection,
    ParamKind::kPerLayerInput,
    ParamKind::kNorm,
    ParamKind::kAttention,
    ParamKind::kMlp,
    ParamKind::kRouter,
    ParamKind::kRouterScale,
    ParamKind::kExpertGateUp,
    ParamKind::kExpertDown,
    ParamKind::kLmHead,
    ParamKind::kSelfConditioning,
    ParamKind::kLoraA,
    ParamKind::kLoraB,
    ParamKind::kExpertLoraA,
    ParamKind::kExpertLoraB,
    ParamKind::kVisionTower,
    ParamKind::kVisionEmbedding,
    ParamKind::kAudioTower,
    ParamKind::kAudioEmbedding,
    ParamKind::kLayerScalar,
    ParamKind::kPerExpertScale,
    ParamKind::kPassThrough,
    ParamKind::kVisionClip,
    ParamKind::kVisionStandardize,
    ParamKind::kAudioClip,
};
// "token_embedding", "norm", "expert_down", ... (for messages and recipes).
const char* param_kind_name(ParamKind kind);
// True for the kinds whose dim 0 indexes the routed experts: a model holding an expert range holds
// only those rows, and expert parallelism splits them over ranks. Every other kind is replicated.
bool split_by_expert(ParamKind kind);
// True for the embedding tables (token and per-layer): rows indexed by token id.
bool is_embedding(ParamKind kind);
// True for LoRA adapters: with them the model trains nothing else, and checkpoints keep them apart.
bool is_lora(ParamKind kind);
// True for the towers' checkpoint buffers (clip bounds, standardisation): read from and written
// to the checkpoint under their Hugging Face names, with transformers' initial values otherwise.
bool is_tower_buffer(ParamKind kind);

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamKind kind;
};

// Every trainable parameter of the text decoder, in a fixed order.
std::vector<ParamSpec> native_param_specs(const io::ModelConfig& cfg, ExpertRange experts = {});

std::string layer_prefix(int64_t layer);  // "model.layers.<l>."

// The vision tower's and embed_vision's parameters (native names are the Hugging Face keys).
std::vector<ParamSpec> vision_param_specs(const io::VisionConfig& v, int64_t text_hidden);
inline const std::string kVisionPrefix = "model.vision_tower.";
inline const std::string kVisionEmbedPrefix = "model.embed_vision.";
std::string vision_layer_prefix(int64_t layer);  // "model.vision_tower.encoder.layers.<l>."
// The four scalar bounds of each clipped linear (buffers, when use_clipped_linears), by the
// linear's prefix ("...self_attn.q_proj."); the weight is at prefix + "linear.weight".
std::vector<std::string> vision_clipped_linears(const io::VisionConfig& v);
inline constexpr const char* kClipBounds[] = {"input_min", "input_max", "output_min", "output_max"};
// The audio tower's and embed_audio's parameters (native names are the Hugging Face keys): the
// norms are kNorm, embed_audio's projection kAudioEmbedding, every other weight kAudioTower.
std::vector<ParamSpec> audio_param_specs(const io::AudioConfig& a, int64_t text_hidden);
inline const std::string kAudioPrefix = "model.audio_tower.";
inline const std::string kAudioEmbedPrefix = "model.embed_audio.";
// The prefixes of the audio tower's clipped linears (buffers at prefix + kClipBounds[i] when
// use_clipped_linears), e.g. "model.audio_tower.layers.0.self_attn.q_proj.".
std::vector<std::string> audio_clipped_linears(const io::AudioConfig& a);
// Diffusion models: the encoder's copy of layer l's output scale (the one text buffer the
// checkpoint stores twice; the decoder's is layer_prefix(l) + "layer_scalar").
std::string encoder_layer_scalar_name(int64_t layer);

// A tensor the model reads but does not train.
struct Buffer {
  Tensor value;
  ParamKind kind;
};

// Parameters (trainable: fp32 on the CPU, bf16 compute copies with f32 gradients on the GPU, whose
// fp32 masters the optimizer holds) and buffers (not trained: layer scalars, the
// per_expert_scale the checkpoint had, kept to express gradients in Hugging Face's layout), each
// with its kind.
struct ParamStore {
  std::vector<std::string> order;
  std::map<std::string, ag::Var> params;
  std::map<std::string, Buffer> buffers;

  ag::Var& at(const std::string& name);
  const ag::Var& at(const std::string& name) const;
  bool has(const std::string& name) const { return params.count(name) > 0; }
  void add(const std::string& name, ParamKind kind, Tensor value);
  // Adds or replaces a buffer.
  void set_buffer(const std::string& name, ParamKind kind, Tensor value);
  const Tensor& buffer(const std::string& name) const;
  // The kind of a parameter or a buffer.
  ParamKind kind(const std::string& name) const;
  int64_t numel() const;
  void zero_grad();

 private:
  std::map<std::string, ParamKind> kinds_;  // of the parameters
};

}  // namespace g4::model

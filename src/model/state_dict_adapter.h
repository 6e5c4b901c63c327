// Hugging Face <-> native state dicts. Names: HF keys live under `model.` (Gemma4ForCausalLM) or
// `model.language_model.` (Gemma4ForConditionalGeneration); native keys always under `model.`.
// Layouts: experts.gate_up_proj [E, 2I, H] <-> moe.experts.gate_and_up_projs [E, H, 2I];
// experts.down_proj [E, H, I] <-> moe.experts.down_projs [E, I, H] with router.per_expert_scale
// folded in on load and written as ones on export; router.{proj.weight,scale} <-> moe.gate.*.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "model/gemma4.h"

namespace g4::model {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

std::string hf_text_prefix(const io::ModelConfig& cfg);  // "model." or "model.language_model."
// The Hugging Face key of a native parameter (as export_hf_tensor names it, without the tensor).
std::string hf_name(const io::ModelConfig& cfg, const std::string& native_name);

// Fills the model's parameters and buffers from a checkpoint (upcast to f32). Only the model's
// expert range is read. Missing tensors and wrong shapes are errors naming the key and the
// checkpoint; K/V weights of KV-shared layers are ignored (as transformers does); vision and audio
// tower tensors load as parameters (clip bounds and standardisation as buffers) when the config
// describes the tower, and are skipped with a logged note otherwise; any other unexpected key is an error.
// `visit` (optional) sees every parameter's f32 value as it is read, one at a time. A parameter the
// model holds undefined is not stored, only visited (then `visit` is required): a GPU run keeps
// its frozen weights in bf16 on the device alone, so the visitor copies them there and no f32
// copy of the whole model exists at any time (train/run_setup.cpp).
using LoadVisitor = std::function<void(const std::string& native_name, const Tensor& value)>;
void load_hf_weights(Gemma4& model, const io::SafetensorsReader& reader, const LoadVisitor& visit = {});

// The config.json of a Hugging Face model directory.
io::ModelConfig load_hf_config(const std::string& dir);
// Reads config.json and the weights of a Hugging Face model directory; of the routed experts only
// `experts` (the empty range: all of them).
std::unique_ptr<Gemma4> load_hf_model(const std::string& dir, ExpertRange experts = {}, DType dtype = DType::F32);

// One native tensor -> its Hugging Face tensor(s), for streaming weights without a full state
// dict. The kind picks the layout: an expert down projection also yields router.per_expert_scale
// (ones, the scale lives in down).
NamedTensors export_hf_tensor(const io::ModelConfig& cfg, const std::string& native_name, ParamKind kind,
                              const Tensor& value);

// The whole model in Hugging Face layout (parameters and layer_scalar buffers).
NamedTensors export_hf_state_dict(const Gemma4& model);

// Where a LoRA model's checkpoint keeps its adapter in PEFT's format, beside the frozen base.
inline constexpr const char* kLoraAdapterDir = "adapter";
// An adapter-only LoRA checkpoint (no base weights) names the base it goes with in this file.
inline constexpr const char* kLoraBaseFile = "lora_base.json";

// Writes config.json + safetensors (sharded above max_shard_bytes) into dir, and for diffusion
// models generation_config.json when the config holds one. Diffusion checkpoints get the encoder
// layer scalars and the vision tower's tensors as read. A LoRA model writes its base there and its
// adapter into dir/adapter (save_peft_adapter).
void save_hf_checkpoint(const Gemma4& model, const std::string& dir, size_t max_shard_bytes = size_t(5) << 30);

// What save_hf_checkpoint wrote, into a model built alike (with LoRA: the base and dir/adapter).
// An adapter-only checkpoint (dir/lora_base.json) loads its adapter alone: the model holds the base.
// `visit` as in load_hf_weights (the base's parameters; the adapter loads into the model).
void load_checkpoint_weights(Gemma4& model, const std::string& dir, const LoadVisitor& visit = {});

// Gradients (as f32) of the parameters expressed for Hugging Face's parameterisation (names as in the
// checkpoint; per_expert_scale gets the gradient the unfolded model would have).
NamedTensors hf_gradients(const Gemma4& model);

}  // namespace g4::model

// LoRA adapters on the text decoder's dense projections, as Hugging Face PEFT defines them:
// y = x·Wᵀ + (alpha / r)·dropout(x)·Aᵀ·Bᵀ with A [r, in] and B [out, r]; the base W stays frozen.
// The adapters are parameters of the model (kinds kLoraA / kLoraB) named after their module:
// "model.layers.<l>.self_attn.q_proj.lora_A.weight". See docs/lora.md.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "model/lora_config.h"

namespace g4::model {

class Gemma4;

// An adapted projection: its native module name ("model.layers.0.self_attn.q_proj") and W's shape.
struct LoraModule {
  std::string name;
  int64_t out = 0, in = 0;
};

// The attention q/k/v/o and dense MLP gate/up/down projections the targets select, in parameter
// order; an error when they select none. Routed experts are not adapted.
std::vector<LoraModule> lora_modules(const io::ModelConfig& cfg, const LoraConfig& lora);
std::string lora_a_name(const std::string& module);  // module + ".lora_A.weight"
std::string lora_b_name(const std::string& module);  // module + ".lora_B.weight"

// Dropout of the adapter input x: zeros with probability p, the rest scaled by 1 / (1 - p), from
// Philox keyed by (seed, call, module), so a recomputed layer draws the same mask.
Tensor lora_dropout_mask(const Shape& shape, double p, uint64_t seed, uint64_t call, const std::string& module,
                         DType dtype, Device device);

// PEFT's files: adapter_config.json and adapter_model.safetensors with the keys
// get_peft_model_state_dict gives ("base_model.model.<HF module>.lora_A.weight", no adapter name).
void save_peft_adapter(const Gemma4& model, const std::string& dir);
// adapter_config.json of a PEFT LoRA adapter directory; errors for what g4 does not compute
// (DoRA, rsLoRA, per-module ranks, biases, fan_in_fan_out).
LoraConfig read_peft_config(const std::string& dir);
// Loads adapter_model.safetensors into a model whose adapters match the directory's config.
void load_peft_adapter(Gemma4& model, const std::string& dir);
// read_peft_config + enable_lora + load_peft_adapter: a base model gets the directory's adapter.
void apply_peft_adapter(Gemma4& model, const std::string& dir);
// A copy of the model without adapters whose weights are W + (alpha / r)·B·A.
std::unique_ptr<Gemma4> merge_lora(const Gemma4& model);

}  // namespace g4::model

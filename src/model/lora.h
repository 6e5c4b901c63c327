// LoRA adapters on the text decoder's dense projections, as Hugging Face PEFT defines them:
// y = x·Wᵀ + (alpha / r)·dropout(x)·Aᵀ·Bᵀ with A [r, in] and B [out, r]; the base W stays frozen.
// The adapters are parameters of the model (kinds kLoraA / kLoraB; kExpertLoraA / kExpertLoraB for
// the experts', split by expert like the weights) named after their module:
// "model.layers.<l>.self_attn.q_proj.lora_A.weight". The routed experts' weights W [E, in, out] get
// one pair per expert, A [E, in, r] and B [E, r, out] (PEFT's ParamWrapper, target_parameters),
// named after the weight: "model.layers.<l>.moe.experts.down_projs.lora_A.weight". See docs/lora.md.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "model/lora_config.h"
#include "model/moe.h"

namespace g4::model {

class Gemma4;

// An adapted projection: its native module name ("model.layers.0.self_attn.q_proj", or an expert
// weight's parameter name "model.layers.0.moe.experts.gate_and_up_projs") and W's shape.
struct LoraModule {
  std::string name;
  int64_t out = 0, in = 0;
  int64_t experts = 0;  // > 0: a routed-experts weight [experts, in, out]
};

// The attention q/k/v/o and dense MLP gate/up/down projections and the routed-expert weights the
// targets select, in parameter order; an error when they select none.
std::vector<LoraModule> lora_modules(const io::ModelConfig& cfg, const LoraConfig& lora);
std::string lora_a_name(const std::string& module);  // module + ".lora_A.weight"
std::string lora_b_name(const std::string& module);  // module + ".lora_B.weight"

// Dropout of the adapter input x: zeros with probability p, the rest scaled by 1 / (1 - p), from
// Philox keyed by (seed, call, module), so a recomputed layer draws the same mask.
Tensor lora_dropout_mask(const Shape& shape, double p, uint64_t seed, uint64_t call, const std::string& module,
                         DType dtype, Device device);

// Layer `layer`'s expert adapters for expert_mlp (none active when its experts are not adapted).
// dropout_call: the forward's call number when LoRA dropout is on. The down projection's B is
// multiplied by the layer's per_expert_scale (a buffer, when the base checkpoint had one): Hugging
// Face scales an expert's whole output by it, PEFT's adapter included, while g4 folds it into down.
ExpertLora expert_lora(const Gemma4& model, int64_t layer, std::optional<uint64_t> dropout_call);

// PEFT's files: adapter_config.json and adapter_model.safetensors with the keys
// get_peft_model_state_dict gives ("base_model.model.<HF module>.lora_A.weight", no adapter name).
// Expert adapters are written as PEFT's ParamWrapper holds them (lora_A [E·r, in], lora_B
// [out, r·E]) under the experts module; where a layer adapts both expert weights, PEFT nests the
// down_proj wrapper around the gate_up_proj one, whose keys then read "experts.base_layer.lora_A".
// folded_expert_scale: the base the adapter goes with is save_hf_checkpoint's, whose
// per_expert_scale is ones (folded into down), so down's B carries the scale.
void save_peft_adapter(const Gemma4& model, const std::string& dir, bool folded_expert_scale = false);
// adapter_config.json of a PEFT LoRA adapter directory; errors for what g4 does not compute
// (DoRA, rsLoRA, per-module ranks, biases, fan_in_fan_out).
LoraConfig read_peft_config(const std::string& dir);
// Loads adapter_model.safetensors into a model whose adapters match the directory's config (the
// model's per_expert_scale buffers are those of the base the adapter goes with).
void load_peft_adapter(Gemma4& model, const std::string& dir);
// read_peft_config + enable_lora + load_peft_adapter: a base model gets the directory's adapter.
void apply_peft_adapter(Gemma4& model, const std::string& dir);
// A copy of the model without adapters whose weights are W + (alpha / r)·B·A.
std::unique_ptr<Gemma4> merge_lora(const Gemma4& model);

}  // namespace g4::model

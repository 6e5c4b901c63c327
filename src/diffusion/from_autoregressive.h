// Adapting an autoregressive Gemma 4 MoE checkpoint into a block-diffusion one (docs/diffusion.md,
// "Checkpoints"). DiffusionGemma runs one Gemma 4 MoE stack twice (causal encoder, bidirectional
// denoiser), so the stack's weights carry over and the encoder starts as the autoregressive
// model; only the self-conditioning MLP is new, and fine-tuning teaches the denoiser.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>

#include "model/gemma4.h"

namespace g4::diffusion {

// The diffusion_gemma config of the same stack with canvas (block) length canvas_length; every
// layer keeps its head dim and K/V heads. Refused, with the reason: a stack DiffusionGemma cannot
// express (dense layers, per-layer inputs, KV sharing, per-layer MLP widths, an untied LM head, no
// final softcap, a bidirectional encoder), or a config that already is a diffusion one.
io::ModelConfig diffusion_config_from(const io::ModelConfig& ar, int64_t canvas_length);

// generation_config.json for the adapted model: DIFFUSION.md §A.4's global defaults, with the
// eos / pad / bos ids of the source's generation_config.json (ar_generation; null: none) or else
// of its config.
nlohmann::json adapted_generation_config(const io::ModelConfig& ar, const nlohmann::json& ar_generation);

// The adapted model: ar's weights; encoder and decoder layer scalars both ar's; full layers' v_proj
// dropped where ar has one (DiffusionGemma's full layers take V from k_proj; logged); the
// self-conditioning MLP with down_proj zeros, gate/up N(0, 0.02) drawn from seed and pre_norm ones,
// so that it adds exactly 0 until down_proj has learnt something.
std::unique_ptr<model::Gemma4> adapt_autoregressive(const model::Gemma4& ar, int64_t canvas_length, uint64_t seed,
                                                    const nlohmann::json& ar_generation = nullptr);

}  // namespace g4::diffusion

// Model FLOPs of a training step, the numerator of MFU. Counted from the config and the batch's
// document layout, never measured: 2 FLOPs per multiply-add of every matmul a token takes part in
// (attention projections per layer head dims, dense MLP, router, the top-k experts it was routed
// to, per-layer-embedding projections, the LM head), plus attention's QKᵀ and PV over the
// (query, key) pairs its masks leave visible (causal, sliding window, document boundaries).
// Training counts 3 × forward (backward = 2 × forward); recomputed activations are not counted.
// The Hugging Face benchmark (tools/bench_hf_train.py) uses the same formula.
// LoRA over a frozen base (docs/lora.md) counts what such a step must compute: the base matmuls'
// forward and input gradients (their weight gradients are skipped: 2 × instead of 3 × forward),
// attention 3 ×, and the adapters' own matmuls 3 × (A and B train).
#pragma once
#include <cstdint>
#include <vector>

#include "io/hf_config.h"
#include "model/lora_config.h"

namespace g4::train {

struct StepFlops {
  double matmul = 0;     // forward FLOPs of the weight matmuls
  double attention = 0;  // forward FLOPs of QKᵀ and PV
  double adapters = 0;   // forward FLOPs of the LoRA adapters (x·Aᵀ, then ·Bᵀ)
  bool frozen_base = false;  // only the adapters train: no weight gradients of the base matmuls
  double forward() const { return matmul + attention + adapters; }
  double training() const { return (frozen_base ? 2 : 3) * matmul + 3 * attention + 3 * adapters; }
};

// Forward FLOPs of sequences made of documents of the given lengths (one entry per document of
// every row; attention never crosses a document).
StepFlops forward_flops(const io::ModelConfig& cfg, const std::vector<int64_t>& document_lengths);

// The same with LoRA adapters `lora` over a frozen base: 2 FLOPs per multiply-add of r·(in + out)
// per token through each adapted projection (a routed-expert weight: top-k rows per token).
StepFlops forward_flops(const io::ModelConfig& cfg, const std::vector<int64_t>& document_lengths,
                        const model::LoraConfig& lora);

}  // namespace g4::train

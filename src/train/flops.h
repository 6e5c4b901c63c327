// Model FLOPs of a training step, the numerator of MFU. Counted from the config and the batch's
// document layout, never measured: 2 FLOPs per multiply-add of every matmul a token takes part in
// (attention projections per layer head dims, dense MLP, router, the top-k experts it was routed
// to, per-layer-embedding projections, the LM head), plus attention's QKᵀ and PV over the
// (query, key) pairs its masks leave visible (causal, sliding window, document boundaries).
// Training counts 3 × forward (backward = 2 × forward); recomputed activations are not counted.
// The Hugging Face benchmark (tools/bench_hf_train.py) uses the same formula.
#pragma once
#include <cstdint>
#include <vector>

#include "io/hf_config.h"

namespace g4::train {

struct StepFlops {
  double matmul = 0;     // forward FLOPs of the weight matmuls
  double attention = 0;  // forward FLOPs of QKᵀ and PV
  double forward() const { return matmul + attention; }
  double training() const { return 3 * forward(); }
};

// Forward FLOPs of sequences made of documents of the given lengths (one entry per document of
// every row; attention never crosses a document).
StepFlops forward_flops(const io::ModelConfig& cfg, const std::vector<int64_t>& document_lengths);

}  // namespace g4::train

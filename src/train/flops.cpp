#include "train/flops.h"

#include <algorithm>

#include "model/lora.h"

namespace g4::train {

namespace {
// Visible (query, key) pairs of one causal document of n tokens, with a sliding window w (0 =
// none): query i sees min(i + 1, w) keys.
double visible_pairs(int64_t n, int64_t window) {
  double pairs = 0;
  for (int64_t i = 0; i < n; ++i) pairs += static_cast<double>(window > 0 ? std::min(i + 1, window) : i + 1);
  return pairs;
}
}  // namespace

StepFlops forward_flops(const io::ModelConfig& cfg, const std::vector<int64_t>& document_lengths) {
  int64_t tokens = 0;
  for (int64_t n : document_lengths) tokens += n;
  const double H = static_cast<double>(cfg.hidden_size), P = static_cast<double>(cfg.hidden_size_per_layer_input);
  double per_token = 0;  // multiply-adds per token
  double attention = 0;  // multiply-adds of QKᵀ and PV over the batch
  for (const io::LayerSpec& ls : cfg.layers) {
    const double d = static_cast<double>(ls.head_dim), q_width = static_cast<double>(cfg.num_heads) * d;
    const double kv_width = static_cast<double>(ls.num_kv_heads) * d;
    per_token += 2 * H * q_width;  // q_proj and o_proj
    if (!ls.kv_shared) per_token += H * kv_width * (ls.k_eq_v ? 1 : 2);
    per_token += 3 * H * static_cast<double>(ls.intermediate);
    if (ls.moe) {
      per_token += H * static_cast<double>(cfg.num_experts);
      per_token += static_cast<double>(cfg.top_k_experts) * 3 * H * static_cast<double>(cfg.moe_intermediate_size);
    }
    if (P > 0) per_token += 2 * H * P;  // per_layer_input_gate and per_layer_projection
    const int64_t window = ls.sliding ? cfg.sliding_window : 0;
    double pairs = 0;
    for (int64_t n : document_lengths) pairs += visible_pairs(n, window);
    attention += 2 * pairs * static_cast<double>(cfg.num_heads) * d;  // QKᵀ and PV (dv = d)
  }
  if (P > 0) per_token += H * static_cast<double>(cfg.num_layers) * P;  // per_layer_model_projection
  per_token += H * static_cast<double>(cfg.vocab_size);                 // LM head
  StepFlops f;
  f.matmul = 2 * per_token * static_cast<double>(tokens);
  f.attention = 2 * attention;
  return f;
}

StepFlops forward_flops(const io::ModelConfig& cfg, const std::vector<int64_t>& document_lengths,
                        const model::LoraConfig& lora) {
  StepFlops f = forward_flops(cfg, document_lengths);
  if (lora.rank <= 0) return f;
  int64_t tokens = 0;
  for (int64_t n : document_lengths) tokens += n;
  double macs_per_token = 0;
  for (const model::LoraModule& m : model::lora_modules(cfg, lora)) {
    const double rows = m.experts > 0 ? static_cast<double>(cfg.top_k_experts) : 1;  // rows per token
    macs_per_token += rows * static_cast<double>(lora.rank) * static_cast<double>(m.in + m.out);
  }
  f.adapters = 2 * macs_per_token * static_cast<double>(tokens);
  f.frozen_base = true;
  return f;
}

}  // namespace g4::train

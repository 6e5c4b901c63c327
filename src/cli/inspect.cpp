// g4 inspect MODEL_DIR: what a checkpoint is, layer by layer.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace g4::cli {

namespace {
// A diffusion checkpoint's vision tower: g4 does not run it but writes its tensors back as read.
std::string vision_tower(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(dir) / "model.safetensors") && !fs::exists(fs::path(dir) / "model.safetensors.index.json"))
    return "no weights here to look at";
  int64_t n = 0;
  for (const std::string& name : io::SafetensorsReader::open(dir).names())
    n += name.rfind("model.encoder.vision_tower.", 0) == 0 || name.rfind("model.encoder.embed_vision.", 0) == 0;
  return n > 0 ? std::to_string(n) + " tensors, kept as read (g4 does not run it)" : "none (no image inputs)";
}

std::string variant(const io::ModelConfig& c) {
  if (c.diffusion)
    return "block diffusion (causal encoder + bidirectional denoiser over one stack, canvas " +
           std::to_string(c.canvas_length) + " tokens, self-conditioning), MoE (dense MLP + " +
           std::to_string(c.num_experts) + " experts, top-" + std::to_string(c.top_k_experts) + ")";
  std::string v = c.enable_moe_block ? "MoE (dense MLP + " + std::to_string(c.num_experts) + " experts, top-" +
                                           std::to_string(c.top_k_experts) + ")"
                                     : "dense";
  if (c.hidden_size_per_layer_input > 0) v += ", per-layer embeddings";
  if (c.num_kv_shared_layers > 0) v += ", KV sharing (last " + std::to_string(c.num_kv_shared_layers) + " layers)";
  if (c.attention_k_eq_v) v += ", K=V on full layers";
  return v;
}
}  // namespace

void add_inspect(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("inspect", "Print a model's variant, layer table and parameter count");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("model_dir", *dir, "Hugging Face model directory (config.json + safetensors)")->required();
  cmd->callback([&action, dir] {
    action = [dir] {
      const io::ModelConfig c = io::load_model_config((std::filesystem::path(*dir) / "config.json").string());
      int64_t params = 0;
      for (const auto& s : model::native_param_specs(c)) params += shape_numel(s.shape);
      std::printf("model      %s (%s)\n", dir->c_str(), c.architecture.c_str());
      std::printf("variant    %s\n", variant(c).c_str());
      if (c.diffusion) std::printf("vision     %s\n", vision_tower(*dir).c_str());
      std::printf("sizes      hidden %lld, heads %lld, vocab %lld, layers %lld, sliding window %lld\n",
                  (long long)c.hidden_size, (long long)c.num_heads, (long long)c.vocab_size, (long long)c.num_layers,
                  (long long)c.sliding_window);
      const char* what = c.diffusion              ? "text stack, shared by encoder and denoiser, + self-conditioning MLP"
                         : c.vision && c.has_audio ? "text decoder, vision and audio towers"
                         : c.vision                ? "text decoder and vision tower"
                         : c.has_audio             ? "text decoder and audio tower"
                                                   : "text decoder";
      std::printf("parameters %lld (%s)\n\n", (long long)params, what);
      std::printf("layer  type     head_dim  kv_heads  mlp     rope                 extras\n");
      for (int64_t l = 0; l < c.num_layers; ++l) {
        const io::LayerSpec& s = c.layers[static_cast<size_t>(l)];
        std::string extras;
        if (s.moe) extras += "moe ";
        if (s.k_eq_v) extras += "k=v ";
        if (s.kv_shared) extras += "shares kv of " + std::to_string(s.kv_source) + " ";
        if (c.hidden_size_per_layer_input > 0) extras += "ple ";
        char rope[64];
        std::snprintf(rope, sizeof rope, "%s %.0f", s.rope.type.c_str(), s.rope.theta);
        std::printf("%5lld  %-7s  %8lld  %8lld  %-6lld  %-19s  %s\n", (long long)l, s.sliding ? "sliding" : "full",
                    (long long)s.head_dim, (long long)s.num_kv_heads, (long long)s.intermediate, rope, extras.c_str());
      }
    };
  });
}

}  // namespace g4::cli

// The recipe the `g4 train` tests run (CPU ranks in tests/train, the GPU in tests/gpu): a 2-layer
// tiny Gemma 4 (MoE with 4 experts, or with `dense` the same shapes without experts) trained for 8
// steps of 2 rows of 64 tokens on Genesis, checkpointing every 4 steps into dir/run; a couple of
// seconds on the CPU.
#pragma once
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "core/random.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace g4::test {

inline std::string write_train_recipe(const std::filesystem::path& dir, bool dense = false, int samples = 1) {
  const std::string data = data_dir() + "/text/genesis.txt";
  const std::string tok = source_dir() + "/recipes/data/kjv-tokenizer";
  const std::filesystem::path path = dir / "recipe.yaml";
  std::ofstream f(path);
  f << (dense ? "model:\n  name: tiny-dense\n  config: {hidden_size: 64, intermediate_size: 64, num_hidden_layers: 2,"
              : "model:\n  name: tiny-moe\n  config: {hidden_size: 64, intermediate_size: 64, num_hidden_layers: 2,"
                " num_experts: 4, moe_intermediate_size: 32,")
    << " head_dim: 16, global_head_dim: 32, sliding_window: 16}\n"
    << "tokenizer: " << tok << "\n"
    << "data:\n  train: [" << data << "]\n  seq_len: 64\n  validation_fraction: 0.2\n"
    << "optimizer:\n  lr: 3.0e-3\n  betas: [0.9, 0.95]\n  weight_decay: 0.1\n"
    << "schedule:\n  kind: cosine\n  warmup_steps: 2\n"
    << "train:\n  steps: 8\n  batch_size: 2\n"
    << "checkpoint:\n  dir: " << (dir / "run").string() << "\n  every: 4\n  keep: 3\n"
    << "log:\n  validation_every: 4\n  validation_batches: 2\n  samples: " << samples << "\n  sample_tokens: 8\n";
  return path.string();
}

// The recipe's tiny model (MoE, or `dense`) as a Hugging Face base on disk (`base`), with
// per_expert_scale drawn away from ones, and the recipe training it from there (model.path):
// dir/recipe_path.yaml.
inline std::string write_base_on_disk_recipe(const std::filesystem::path& dir, const std::filesystem::path& base,
                                             bool dense = false) {
  const std::string named = write_train_recipe(dir, dense);
  model::save_hf_checkpoint(*train::build_model(train::load_recipe(named)), base.string());
  std::vector<std::pair<std::string, Tensor>> tensors;
  {
    const io::SafetensorsReader r = io::SafetensorsReader::open(base.string());
    for (const std::string& n : r.names())
      tensors.emplace_back(n, n.find("per_expert_scale") == std::string::npos
                                  ? r.get(n).clone()
                                  : rand_uniform(r.get(n).shape(), 41, 0.7, 1.3, DType::F32));
  }
  io::save_safetensors((base / "model.safetensors").string(), tensors);
  std::ifstream in(named);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text = "model:\n  path: " + base.string() + "\n" + text.substr(text.find("tokenizer:"));
  const std::filesystem::path path = dir / "recipe_path.yaml";
  std::ofstream(path) << text;
  return path.string();
}

}  // namespace g4::test

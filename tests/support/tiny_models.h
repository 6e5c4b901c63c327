// The tiny MoE shapes the optimizer, checkpoint and GPU training tests build in memory: hidden and
// dense-MLP width `width`, 4 experts of width/2, sliding heads of width/4 and full heads of width/2,
// `layers` decoder layers, plus any other config keys in `extra`.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "io/hf_config.h"
#include "model/named_configs.h"

namespace g4::test {

inline io::ModelConfig tiny_moe_config(int64_t width, int64_t layers,
                                       const nlohmann::json& extra = nlohmann::json::object()) {
  nlohmann::json keys = {{"hidden_size", width},          {"intermediate_size", width}, {"num_hidden_layers", layers},
                         {"num_experts", 4},              {"moe_intermediate_size", width / 2},
                         {"head_dim", width / 4},         {"global_head_dim", width / 2}};
  keys.update(extra);
  io::ModelConfig cfg = io::parse_model_config(model::named_config("tiny-moe", keys), "tiny-moe (test)");
  cfg.raw = nlohmann::json();
  return cfg;
}

}  // namespace g4::test

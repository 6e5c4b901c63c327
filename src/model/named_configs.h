// Built-in model shapes a recipe can name instead of a checkpoint directory, for training from
// scratch. Each is a Gemma 4 text config (the same JSON transformers reads), so a model trained
// from one exports as a normal Hugging Face checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace g4::model {

std::vector<std::string> named_config_names();
// The config JSON of a built-in shape with `overrides` merged over it (keys as in config.json).
nlohmann::json named_config(const std::string& name, const nlohmann::json& overrides = nlohmann::json::object());

// The depth (num_hidden_layers) of the released model a built-in shape has the widths of, or 0 for
// the tiny shapes (made for tests, at any depth). Benchmarks refuse more layers than the model has.
int64_t named_config_depth(const std::string& name);

// A released model's whole Gemma4ForConditionalGeneration config with random-weight towers: the text
// config of named_config(name, overrides) beside the vision tower of its size (all of them) and the
// audio tower (E4B only; 26B-A4B and 31B have none), with the released multimodal token ids
// (as in the published google/gemma-4-* config.json files). For benchmarks of multimodal training.
nlohmann::json named_multimodal_config(const std::string& name, const nlohmann::json& overrides = nlohmann::json::object());

}  // namespace g4::model

// Built-in model shapes a recipe can name instead of a checkpoint directory, for training from
// scratch. Each is a Gemma 4 text config (the same JSON transformers reads), so a model trained
// from one exports as a normal Hugging Face checkpoint.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace g4::model {

std::vector<std::string> named_config_names();
// The config JSON of a built-in shape with `overrides` merged over it (keys as in config.json).
nlohmann::json named_config(const std::string& name, const nlohmann::json& overrides = nlohmann::json::object());

}  // namespace g4::model

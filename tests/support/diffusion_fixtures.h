// The DiffusionGemma fixtures (tests/data/hf-diffusion-gemma): where they are and the generation
// settings of their recorded runs as generate() overrides.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "support/test_paths.h"

namespace g4::test {

inline std::string diffusion_fixture_dir(const std::string& name) {
  return data_dir() + "/hf-diffusion-gemma/" + name;
}

// reference.json's generate.<run>.settings as resolve_generation_config overrides.
inline nlohmann::json diffusion_run_overrides(const nlohmann::json& settings) {
  nlohmann::json o = nlohmann::json::object();
  for (const char* key : {"max_new_tokens", "max_denoising_steps", "t_min", "t_max", "stability_threshold",
                          "confidence_threshold", "eos_token_id", "pad_token_id"})
    o[key] = settings.at(key);
  // JSON integers where transformers got Python floats (t_min 0.0 is written as 0).
  for (const char* key : {"t_min", "t_max", "confidence_threshold"})
    if (o[key].is_number()) o[key] = o[key].get<double>();
  o["sampler_config"] = {{"_cls_name", "EntropyBoundSamplerConfig"},
                         {"entropy_bound", settings.at("entropy_bound").get<double>()}};
  return o;
}

}  // namespace g4::test

// The DiffusionGemma fixtures (tests/data/hf-diffusion-gemma): where they are, the generation
// settings of their recorded runs as generate() overrides, and their recorded training step.
#pragma once
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffusion/objective.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
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

// The fixture's training step: its settings, its examples (rebuilt from the collated rows), its model.
struct Replay {
  explicit Replay(const std::string& name)
      : dir(diffusion_fixture_dir(name)), ref(io::SafetensorsReader::open(dir + "/reference.safetensors")) {
    std::ifstream f(dir + "/reference.json");
    am = nlohmann::json::parse(f)["automodel"];
    const Tensor ids = ref.get("train.input_ids");
    const int64_t S = ids.size(1);
    for (size_t b = 0; b < am["examples"].size(); ++b) {
      const int64_t prompt = am["examples"][b]["prompt"], response = am["examples"][b]["response"];
      diffusion::DllmExample e;
      e.prompt = prompt;
      for (int64_t k = 0; k < prompt + response; ++k) e.ids.push_back(element_as_int(ids, int64_t(b) * S + k));
      examples.push_back(e);
    }
    block = am["block_size"];
    place = {am["step"],           am["dp_rank"],       am["dp_size"], am["local_batch_size"],
             am["grad_acc_steps"], am["microbatch_idx"]};
    // The fixture's rows are padded to a multiple of 8 with blocks of `block`.
    copt.pad_block_size = block;
    copt.pad_seq_len_divisible = 8;
    m = model::load_hf_model(dir);
  }
  diffusion::DllmStep step() const {
    return diffusion::prepare_step(diffusion::collate(examples, copt), am["base_seed"], place, m->config().vocab_size,
                                   block, am["eps"], am["self_conditioning_p"]);
  }
  std::string dir;
  io::SafetensorsReader ref;
  nlohmann::json am;
  std::vector<diffusion::DllmExample> examples;
  int64_t block = 0;
  diffusion::SamplePlace place;
  diffusion::CollateOptions copt;
  std::unique_ptr<model::Gemma4> m;
};

}  // namespace g4::test

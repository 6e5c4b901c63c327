// transformers 5.17's DiffusionGemmaGenerationConfig (DIFFUSION.md §A.4): the settings of the block
// diffusion sampler as generation_config.json and generate()'s keyword arguments give them, with
// transformers' priority rules and validation (docs/diffusion.md, "Sampling").
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace g4::diffusion {

// One config; an empty optional is transformers' None (unset, or disabled where None disables).
struct GenerationConfig {
  std::optional<int64_t> max_new_tokens;  // blocks = ceil(max_new_tokens / C); output not truncated
  std::optional<int64_t> max_length;      // adds MaxLengthCriteria (and sets max_new_tokens, see below)
  std::optional<int64_t> max_denoising_steps;
  std::optional<double> entropy_bound;         // sampler_config {"_cls_name": "EntropyBoundSamplerConfig", ...}
  std::optional<double> t_min, t_max;          // temperature schedule; none: no temperature at all
  std::optional<int64_t> stability_threshold;  // adaptive stopping needs both of these
  std::optional<double> confidence_threshold;
  std::optional<std::vector<int64_t>> eos_token_id;  // int or list in JSON
  std::optional<int64_t> pad_token_id, bos_token_id;
  // Accepted and validated as transformers does; g4 always samples with DynamicCache semantics.
  std::optional<std::string> cache_implementation;

  bool adaptive_stopping() const { return stability_threshold.has_value() && confidence_threshold.has_value(); }
  bool operator==(const GenerationConfig&) const = default;
};

// Parses one source (a generation_config.json document, or keyword-style overrides) named `where`
// in errors. Keys are DiffusionGemmaGenerationConfig's own; like its constructor, any other key is
// an error, except the metadata transformers writes itself (transformers_version,
// _from_model_config, _commit_hash) and the settings g4 does not use (return_dict_in_generate,
// cache_config, disable_compile), which are accepted and ignored. Types and ranges are checked as
// transformers' validate() does, including its isinstance checks (entropy_bound and
// confidence_threshold must be JSON floats: 1 is refused, 1.0 accepted). null is "unset".
GenerationConfig parse_generation_config(const nlohmann::json& j, const std::string& where);

// The global defaults transformers applies to every field still unset after the model's file.
GenerationConfig default_generation_config();

// transformers' priority: explicit `overrides` (generate()'s kwargs; a key present with null sets
// None, e.g. stability_threshold null turns adaptive stopping off) > the model's generation_config.json
// (`model_file`, null when the checkpoint has none) > the global defaults for fields it leaves
// null. Then, as _prepare_generated_length does, a max_length with max_new_tokens still at 256 sets
// max_new_tokens = max_length - prompt_length. Errors name the source of the offending value;
// max_new_tokens, max_denoising_steps and the entropy bound must end up set.
GenerationConfig resolve_generation_config(const nlohmann::json& model_file, const std::string& model_where,
                                           const nlohmann::json& overrides, const std::string& overrides_where,
                                           int64_t prompt_length);

// The override value of `key` (a field name, or "entropy_bound" for sampler_config) from command-line
// text: "none" is null; integers for the integer fields, floats for the float fields, and a
// comma-separated list for eos_token_id. Returns {key as stored, value}; errors name `flag`.
std::pair<std::string, nlohmann::json> generation_option(const std::string& key, const std::string& text,
                                                         const std::string& flag);

}  // namespace g4::diffusion

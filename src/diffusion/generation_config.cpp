#include "diffusion/generation_config.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace g4::diffusion {

namespace {

using nlohmann::json;

constexpr const char* kSamplerClass = "EntropyBoundSamplerConfig";

// transformers' ALL_CACHE_IMPLEMENTATIONS (generation/configuration_utils.py, 5.17).
constexpr std::array<const char*, 11> kCacheImplementations = {
    "static",           "offloaded_static",         "sliding_window", "hybrid",       "hybrid_chunked",
    "offloaded_hybrid", "offloaded_hybrid_chunked", "dynamic",        "dynamic_full", "offloaded",
    "quantized"};

// Keys the class stores but the sampler does not read: transformers' metadata and output/compile
// switches. Accepted with any value, as transformers does not validate them either.
constexpr std::array<const char*, 6> kIgnoredKeys = {"transformers_version", "_from_model_config",
                                                     "_commit_hash",         "return_dict_in_generate",
                                                     "cache_config",         "disable_compile"};

constexpr std::array<const char*, 13> kFieldKeys = {
    "max_new_tokens", "max_length",           "max_denoising_steps",  "sampler_config", "t_min",
    "t_max",          "stability_threshold",  "confidence_threshold", "eos_token_id",   "pad_token_id",
    "bos_token_id",   "cache_implementation", "entropy_bound"};

template <size_t N>
bool one_of(const std::string& key, const std::array<const char*, N>& keys) {
  return std::any_of(keys.begin(), keys.end(), [&](const char* k) { return key == k; });
}

std::string known_keys() {
  std::string s;
  for (size_t i = 0; i + 1 < kFieldKeys.size(); ++i) s += (i ? ", " : "") + std::string(kFieldKeys[i]);
  for (const char* k : kIgnoredKeys) s += ", " + std::string(k);
  return s;
}

std::optional<int64_t> get_int(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  const json& v = j.at(key);
  G4_CHECK(v.is_number_integer(), where, ": '", key, "' must be an integer, got ", v.dump());
  return v.get<int64_t>();
}

std::optional<double> get_number(const json& j, const char* key, const std::string& where, bool float_only) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  const json& v = j.at(key);
  // transformers checks isinstance(value, float) for these: an integer such as 1 is refused.
  G4_CHECK(float_only ? v.is_number_float() : v.is_number(), where, ": '", key, "' must be a ",
           float_only ? "float (write 1.0, not 1)" : "number", ", got ", v.dump());
  return v.get<double>();
}

std::vector<int64_t> eos_list(const json& v, const std::string& where) {
  std::vector<int64_t> ids;
  auto add = [&](const json& x) {
    G4_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0, where,
             ": 'eos_token_id' must be a token id (an integer >= 0) or a list of them, got ", v.dump());
    ids.push_back(x.get<int64_t>());
  };
  if (v.is_array()) {
    for (const json& x : v) add(x);
  } else {
    add(v);
  }
  return ids;
}

// transformers' DiffusionGemmaGenerationConfig.validate(): None passes every check.
void validate(const GenerationConfig& c, const std::string& where) {
  auto positive = [&](const std::optional<int64_t>& v, const char* key) {
    G4_CHECK(!v || *v > 0, where, ": '", key, "' must be a positive integer, got ", *v);
  };
  positive(c.max_new_tokens, "max_new_tokens");
  positive(c.max_length, "max_length");
  positive(c.max_denoising_steps, "max_denoising_steps");
  G4_CHECK(!c.entropy_bound || *c.entropy_bound > 0, where, ": 'sampler_config.entropy_bound' must be > 0, got ",
           *c.entropy_bound);
  G4_CHECK(!c.t_min || *c.t_min >= 0, where, ": 't_min' must be >= 0, got ", *c.t_min);
  G4_CHECK(!c.t_max || *c.t_max >= 0, where, ": 't_max' must be >= 0, got ", *c.t_max);
  G4_CHECK(!c.t_min || !c.t_max || *c.t_max > *c.t_min, where, ": 't_max' (", *c.t_max, ") must be above 't_min' (",
           *c.t_min, ")");
  G4_CHECK(!c.stability_threshold || *c.stability_threshold >= 0, where,
           ": 'stability_threshold' must be an integer >= 0, got ", *c.stability_threshold);
  G4_CHECK(!c.confidence_threshold || *c.confidence_threshold > 0, where, ": 'confidence_threshold' must be > 0, got ",
           *c.confidence_threshold);
  G4_CHECK(!c.pad_token_id || *c.pad_token_id >= 0, where, ": 'pad_token_id' must be >= 0, got ", *c.pad_token_id);
  G4_CHECK(!c.cache_implementation || one_of(*c.cache_implementation, kCacheImplementations), where,
           ": 'cache_implementation' '", *c.cache_implementation,
           "' is not one of transformers' cache implementations");
}

}  // namespace

GenerationConfig parse_generation_config(const json& j, const std::string& where) {
  GenerationConfig c;
  if (j.is_null()) return c;
  G4_CHECK(j.is_object(), where, ": a generation config must be a JSON object, got ", j.type_name());
  for (const auto& [key, value] : j.items())
    G4_CHECK((one_of(key, kFieldKeys) && key != "entropy_bound") || one_of(key, kIgnoredKeys), where, ": unknown key '",
             key, "' (transformers' DiffusionGemmaGenerationConfig refuses unexpected keys; known: ", known_keys(),
             ")");
  c.max_new_tokens = get_int(j, "max_new_tokens", where);
  c.max_length = get_int(j, "max_length", where);
  c.max_denoising_steps = get_int(j, "max_denoising_steps", where);
  if (j.contains("sampler_config") && !j.at("sampler_config").is_null()) {
    const json& s = j.at("sampler_config");
    const std::string sw = where + ": 'sampler_config'";
    G4_CHECK(s.is_object(), sw, " must be an object {\"_cls_name\": \"", kSamplerClass,
             "\", \"entropy_bound\": ...}, got ", s.dump());
    G4_CHECK(s.contains("_cls_name") && s.at("_cls_name") == kSamplerClass, sw, ": '_cls_name' must be \"",
             kSamplerClass, "\" (the only sampler), got ", s.contains("_cls_name") ? s.at("_cls_name").dump() : "none");
    for (const auto& [key, value] : s.items())
      G4_CHECK(key == "_cls_name" || key == "entropy_bound", sw, ": unknown key '", key, "'");
    c.entropy_bound = get_number(s, "entropy_bound", sw, true);
    G4_CHECK(c.entropy_bound.has_value(), sw, ": 'entropy_bound' is required");
  }
  c.t_min = get_number(j, "t_min", where, false);
  c.t_max = get_number(j, "t_max", where, false);
  c.stability_threshold = get_int(j, "stability_threshold", where);
  c.confidence_threshold = get_number(j, "confidence_threshold", where, true);
  if (j.contains("eos_token_id") && !j.at("eos_token_id").is_null())
    c.eos_token_id = eos_list(j.at("eos_token_id"), where);
  c.pad_token_id = get_int(j, "pad_token_id", where);
  c.bos_token_id = get_int(j, "bos_token_id", where);
  if (j.contains("cache_implementation") && !j.at("cache_implementation").is_null()) {
    G4_CHECK(j.at("cache_implementation").is_string(), where, ": 'cache_implementation' must be a string");
    c.cache_implementation = j.at("cache_implementation").get<std::string>();
  }
  validate(c, where);
  return c;
}

// _get_default_generation_params(), in generation_config.json's form.
json default_generation_json() {
  return {{"max_new_tokens", 256},
          {"max_denoising_steps", 48},
          {"sampler_config", {{"_cls_name", kSamplerClass}, {"entropy_bound", 0.1}}},
          {"t_min", 0.4},
          {"t_max", 0.8},
          {"stability_threshold", 1},
          {"confidence_threshold", 0.005}};
}

GenerationConfig default_generation_config() {
  return parse_generation_config(default_generation_json(), "the global defaults");
}

GenerationConfig resolve_generation_config(const json& model_file, const std::string& model_where,
                                           const json& overrides, const std::string& overrides_where,
                                           int64_t prompt_length) {
  // Each source is checked on its own first, so that an error names the file or the option.
  parse_generation_config(model_file, model_where);
  parse_generation_config(overrides, overrides_where);
  // The defaults fill what the file leaves unset (null included); then the overrides replace
  // whatever they name, a null with None.
  json merged = model_file.is_null() ? json::object() : model_file;
  const json defaults = default_generation_json();
  for (const auto& [key, value] : defaults.items())
    if (!merged.contains(key) || merged.at(key).is_null()) merged[key] = value;
  if (!overrides.is_null())
    for (const auto& [key, value] : overrides.items()) merged[key] = value;
  const std::string both = model_where + " with " + overrides_where;
  GenerationConfig c = parse_generation_config(merged, both);
  // None here would crash transformers' loop (range(None), math.ceil(None / C), None.entropy_bound).
  G4_CHECK(c.max_new_tokens.has_value(), both, ": 'max_new_tokens' cannot be none");
  G4_CHECK(c.max_denoising_steps.has_value(), both, ": 'max_denoising_steps' cannot be none");
  G4_CHECK(c.entropy_bound.has_value(), both, ": the sampler's entropy_bound cannot be none");
  if (c.max_length && *c.max_new_tokens == 256) {
    c.max_new_tokens = *c.max_length - prompt_length;
    G4_CHECK(*c.max_new_tokens > 0, both, ": max_length ", *c.max_length, " leaves no room after the ", prompt_length,
             "-token prompt");
  }
  return c;
}

std::pair<std::string, json> generation_option(const std::string& key, const std::string& text,
                                               const std::string& flag) {
  G4_CHECK(one_of(key, kFieldKeys) && key != "sampler_config" && key != "cache_implementation",
           "generation_option: no command-line option for '", key, "'");
  const std::string stored = key == "entropy_bound" ? "sampler_config" : key;
  if (text == "none") return {stored, nullptr};
  auto integer = [&](const std::string& s) -> int64_t {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    G4_CHECK(!s.empty() && end && *end == '\0' && errno == 0, flag, ": '", s, "' is not an integer (or none)");
    return v;
  };
  if (key == "eos_token_id") {
    json ids = json::array();
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) ids.push_back(integer(item));
    G4_CHECK(!ids.empty(), flag, " is empty (give token ids, or none)");
    return {stored, ids.size() == 1 ? ids[0] : ids};
  }
  if (key == "t_min" || key == "t_max" || key == "confidence_threshold" || key == "entropy_bound") {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    G4_CHECK(!text.empty() && end && *end == '\0' && std::isfinite(v), flag, ": '", text,
             "' is not a finite number (or none)");
    if (key == "entropy_bound") return {stored, json{{"_cls_name", kSamplerClass}, {"entropy_bound", v}}};
    return {stored, v};
  }
  return {stored, integer(text)};
}

}  // namespace g4::diffusion

#include "model/lora.h"

#include <cmath>
#include <filesystem>
#include <regex>
#include <set>

#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/gemma4.h"
#include "model/state_dict_adapter.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace g4::model {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// FNV-1a: a module's dropout stream, the same on every platform (std::hash is not).
uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  return h;
}

// The Hugging Face name of a native module ("model.layers.0.mlp.up_proj" -> "model.language_model.layers.0...").
std::string hf_module_name(const io::ModelConfig& cfg, const std::string& module) {
  const std::string w = hf_name(cfg, module + ".weight");
  return w.substr(0, w.size() - 7);
}

const std::vector<std::string>& list_targets(const LoraConfig& lora) {
  return lora.targets.empty() ? kDefaultLoraTargets : lora.targets;
}

// PEFT's check: a string target is a full regex match, a list entry the name or a dotted suffix.
bool targeted(const LoraConfig& lora, const std::string& hf_module) {
  if (!lora.target_regex.empty()) return std::regex_match(hf_module, std::regex(lora.target_regex));
  for (const std::string& t : list_targets(lora))
    if (hf_module == t ||
        (hf_module.size() > t.size() && hf_module.compare(hf_module.size() - t.size(), t.size(), t) == 0 &&
         hf_module[hf_module.size() - t.size() - 1] == '.'))
      return true;
  return false;
}

// adapter_config.json's target_modules. A list matches by suffix anywhere in the model, which in a
// Gemma4ForConditionalGeneration includes the vision tower's projections; so outside
// Gemma4ForCausalLM the list becomes a regex held to the text decoder's layers.
json peft_target_modules(const io::ModelConfig& cfg, const LoraConfig& lora) {
  if (!lora.target_regex.empty()) return lora.target_regex;
  const std::string prefix = hf_text_prefix(cfg);
  if (prefix == "model.") return list_targets(lora);
  const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  std::string names;
  for (const std::string& t : list_targets(lora))
    names += (names.empty() ? "" : "|") + std::regex_replace(t, special, R"(\$&)");
  return std::regex_replace(prefix, special, R"(\$&)") + R"(layers\.(?:.*\.)?(?:)" + names + ")";
}

// The PEFT key of a native adapter parameter: PeftModel wraps the transformers model as base_model.model.
std::string peft_key(const io::ModelConfig& cfg, const std::string& native) {
  return "base_model.model." + hf_name(cfg, native);
}

}  // namespace

std::string lora_a_name(const std::string& module) {
  return module + ".lora_A.weight";
}
std::string lora_b_name(const std::string& module) {
  return module + ".lora_B.weight";
}

std::vector<LoraModule> lora_modules(const io::ModelConfig& cfg, const LoraConfig& lora) {
  std::vector<LoraModule> out;
  for (const ParamSpec& s : native_param_specs(cfg)) {
    if (s.kind != ParamKind::kAttention && s.kind != ParamKind::kMlp) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);  // without ".weight"
    if (targeted(lora, hf_module_name(cfg, module))) out.push_back({module, s.shape[0], s.shape[1]});
  }
  std::string what = lora.target_regex;
  if (what.empty())
    for (const std::string& t : list_targets(lora)) what += (what.empty() ? "" : ", ") + t;
  G4_CHECK(!out.empty(), "LoRA targets [", what,
           "] select none of the model's attention (q/k/v/o_proj) or dense MLP "
           "(gate/up/down_proj) projections");
  return out;
}

Tensor lora_dropout_mask(const Shape& shape, double p, uint64_t seed, uint64_t call, const std::string& module,
                         DType dtype, Device device) {
  const uint64_t key = splitmix64(splitmix64(splitmix64(seed) ^ call) ^ name_hash(module));
  Tensor m = rand_uniform(shape, key, 0.0, 1.0, DType::F32);  // (0, 1]
  const float keep = static_cast<float>(1.0 / (1.0 - p));
  float* d = m.data<float>();
  for (int64_t i = 0; i < m.numel(); ++i) d[i] = d[i] > p ? keep : 0.0f;
  return m.to(dtype).to(device);
}

void save_peft_adapter(const Gemma4& model, const std::string& dir) {
  G4_CHECK(model.lora(), "save_peft_adapter: the model has no LoRA adapters");
  const LoraConfig& lora = *model.lora();
  const io::ModelConfig& cfg = model.config();
  fs::create_directories(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const LoraModule& m : lora_modules(cfg, lora))
    for (const std::string& n : {lora_a_name(m.name), lora_b_name(m.name)})
      tensors.emplace_back(peft_key(cfg, n), model.params().at(n).value().to(Device::CPU).to(DType::F32));
  io::save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors);
  // LoraConfig's fields as PEFT writes them; those g4 never changes keep PEFT's defaults.
  json c = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", lora.base_model},
            {"revision", nullptr},
            {"inference_mode", true},
            {"r", lora.rank},
            {"lora_alpha", lora.alpha},
            {"lora_dropout", lora.dropout},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"use_rslora", false},
            {"use_dora", false},
            {"init_lora_weights", true},
            {"modules_to_save", nullptr},
            {"layers_to_transform", nullptr},
            {"layers_pattern", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()}};
  c["target_modules"] = peft_target_modules(cfg, lora);
  io::write_file_atomic((fs::path(dir) / "adapter_config.json").string(), c.dump(2) + "\n");
}

LoraConfig read_peft_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  const json c = io::read_json_file(path, "PEFT adapter config", 1 << 20);
  G4_CHECK(c.is_object(), path, " is not a JSON object");
  G4_CHECK(c.value("peft_type", std::string()) == "LORA", path, ": peft_type must be \"LORA\"");
  auto is = [&](const char* key, const json& expected) {
    const bool same = !c.contains(key) || c[key].is_null() || c[key] == expected;
    G4_CHECK(same, path, ": '", key, "' ", c.contains(key) ? c[key].dump() : "", " is not supported (g4 computes ",
             expected.dump(), ")");
  };
  is("bias", "none");
  is("fan_in_fan_out", false);
  is("use_rslora", false);
  is("use_dora", false);
  is("rank_pattern", json::object());
  is("alpha_pattern", json::object());
  is("layers_to_transform", nullptr);
  is("modules_to_save", nullptr);
  is("exclude_modules", nullptr);
  is("layer_replication", nullptr);
  is("target_parameters", nullptr);  // LoRA on raw parameters (PEFT's way to the experts)
  is("lora_bias", false);
  LoraConfig lora;
  lora.rank = io::json_int(c, "r", path);
  lora.alpha = io::json_number(c, "lora_alpha", path, 8.0);
  lora.dropout = io::json_number(c, "lora_dropout", path, 0.0);
  const json& t = c.contains("target_modules") ? c["target_modules"] : json();
  if (t.is_string()) {
    lora.target_regex = t.get<std::string>();
  } else {
    G4_CHECK(t.is_array() && !t.empty(), path, ": 'target_modules' must be a string or a non-empty list");
    for (const json& e : t) {
      G4_CHECK(e.is_string(), path, ": 'target_modules' entries must be strings, got ", e.dump());
      lora.targets.push_back(e.get<std::string>());
    }
  }
  if (c.contains("base_model_name_or_path") && c["base_model_name_or_path"].is_string())
    lora.base_model = c["base_model_name_or_path"].get<std::string>();
  validate_lora(lora, path);
  return lora;
}

void load_peft_adapter(Gemma4& model, const std::string& dir) {
  G4_CHECK(model.lora(), "load_peft_adapter: enable LoRA on the model first");
  const LoraConfig file = read_peft_config(dir);
  const LoraConfig& lora = *model.lora();
  const io::ModelConfig& cfg = model.config();
  // The same projections, however the targets are spelled (a list, or the regex a conditional model's is written as).
  auto names = [&](const LoraConfig& c) {
    std::vector<std::string> out;
    for (const LoraModule& m : lora_modules(cfg, c)) out.push_back(m.name);
    return out;
  };
  G4_CHECK(file.rank == lora.rank && file.alpha == lora.alpha && names(file) == names(lora), "PEFT adapter ", dir,
           " has r ", file.rank, ", lora_alpha ", file.alpha, " or target_modules other than the model's adapters (r ",
           lora.rank, ", alpha ", lora.alpha, ")");
  const io::SafetensorsReader reader =
      io::SafetensorsReader::open((fs::path(dir) / "adapter_model.safetensors").string());
  std::set<std::string> consumed;
  for (const LoraModule& m : lora_modules(cfg, lora)) {
    for (const std::string& n : {lora_a_name(m.name), lora_b_name(m.name)}) {
      const std::string key = peft_key(cfg, n);
      G4_CHECK(reader.has(key), "PEFT adapter ", reader.path(), " has no tensor '", key, "'");
      Tensor& dst = model.params().at(n).mutable_value();
      dst.copy_from(reader.get_f32(key, dst.shape()).to(dst.dtype()));
      consumed.insert(key);
    }
  }
  for (const std::string& key : reader.names())
    G4_CHECK(consumed.count(key), "PEFT adapter ", reader.path(), " has a tensor '", key,
             "' that is not an adapter of the model's targeted projections");
}

void apply_peft_adapter(Gemma4& model, const std::string& dir) {
  model.enable_lora(read_peft_config(dir));
  load_peft_adapter(model, dir);
}

std::unique_ptr<Gemma4> merge_lora(const Gemma4& model) {
  G4_CHECK(model.lora(), "merge_lora: the model has no LoRA adapters");
  auto merged = std::make_unique<Gemma4>(model.config(), model.experts(), model.dtype(), model.device());
  for (const std::string& n : merged->params().order)
    merged->params().at(n).mutable_value().copy_from(model.params().at(n).value());
  merged->params().buffers = model.params().buffers;
  const double s = model.lora()->scaling();
  for (const LoraModule& m : lora_modules(model.config(), *model.lora())) {
    Tensor& w = merged->params().at(m.name + ".weight").mutable_value();
    const Tensor ba = ops::matmul(model.params().at(lora_b_name(m.name)).value(),
                                  model.params().at(lora_a_name(m.name)).value());  // [out, in]
    w.copy_from(ops::add(w, ops::scale(ba, s)));
  }
  return merged;
}

}  // namespace g4::model

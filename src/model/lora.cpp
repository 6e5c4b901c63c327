#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>
#include <set>

#include "autograd/functions.h"
#include "core/hash.h"
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
  Fnv1a f;
  f.mix(s.data(), s.size());
  return f.h;
}

// The Hugging Face name of a native module ("model.layers.0.mlp.up_proj" -> "model.language_model.layers.0...").
std::string hf_module_name(const io::ModelConfig& cfg, const std::string& module) {
  const std::string w = hf_name(cfg, module + ".weight");
  return w.substr(0, w.size() - 7);
}

const std::vector<std::string>& list_targets(const LoraConfig& lora) {
  return lora.targets.empty() ? kDefaultLoraTargets : lora.targets;
}

// The target regex of an adapter whose target_modules is an empty list: it matches no module name.
const std::string kNoModules = "$^";

// The expert weights' native names within a layer.
const std::string kGateUp = "moe.experts.gate_and_up_projs", kDown = "moe.experts.down_projs";

// PEFT's check: a string target is a full regex match, a list entry the name or a dotted suffix.
bool targeted(const LoraConfig& lora, const std::string& hf_module) {
  if (!lora.target_regex.empty()) return std::regex_match(hf_module, std::regex(lora.target_regex));
  for (const std::string& t : list_targets(lora))
    if (peft_suffix_match(hf_module, t)) return true;
  return false;
}

// PEFT's target_parameters check, on an expert weight's Hugging Face name.
bool targeted_expert(const LoraConfig& lora, const std::string& hf_param) {
  for (const std::vector<std::string>& list : {lora.expert_targets(), lora.target_parameters})
    for (const std::string& t : list)
      if (peft_suffix_match(hf_param, t)) return true;
  return false;
}

// adapter_config.json's target_modules. A list matches by suffix anywhere in the model, which in a
// Gemma4ForConditionalGeneration includes the vision tower's projections; so outside
// Gemma4ForCausalLM the list becomes a regex held to the text decoder's layers.
// The entries naming expert weights go to target_parameters instead (an empty list: none but them).
json peft_target_modules(const io::ModelConfig& cfg, const LoraConfig& lora) {
  if (lora.target_regex == kNoModules) return json::array();
  if (!lora.target_regex.empty()) return lora.target_regex;
  const std::vector<std::string> experts = lora.expert_targets();
  std::vector<std::string> modules;
  for (const std::string& t : list_targets(lora))
    if (std::find(experts.begin(), experts.end(), t) == experts.end()) modules.push_back(t);
  const std::string prefix = hf_text_prefix(cfg);
  if (prefix == "model." || modules.empty()) return modules;
  const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  std::string names;
  for (const std::string& t : modules)
    names += (names.empty() ? "" : "|") + std::regex_replace(t, special, R"(\$&)");
  return std::regex_replace(prefix, special, R"(\$&)") + R"(layers\.(?:.*\.)?(?:)" + names + ")";
}

// One adapter tensor as PEFT stores it.
struct PeftTensor {
  std::string native, key;
  const LoraModule* module;
  bool is_a;
};

// PeftModel wraps the transformers model as base_model.model. An expert weight's adapter lives on
// the ParamWrapper that replaces the experts module; PEFT wraps the module's parameters in their
// registration order (gate_up_proj, then down_proj) each around the last, so where both are adapted
// gate_up_proj's wrapper is the inner one, the outer's base_layer.
std::vector<PeftTensor> peft_tensors(const io::ModelConfig& cfg, const std::vector<LoraModule>& modules) {
  std::set<std::string> adapted;
  for (const LoraModule& m : modules) adapted.insert(m.name);
  std::vector<PeftTensor> out;
  for (const LoraModule& m : modules) {
    std::string module = "base_model.model." + hf_module_name(cfg, m.name);
    if (m.experts > 0) {
      const std::string hf = hf_name(cfg, m.name);  // ".../experts.gate_up_proj"
      module = "base_model.model." + hf.substr(0, hf.rfind('.'));
      if (m.name.ends_with(kGateUp) && adapted.count(m.name.substr(0, m.name.size() - kGateUp.size()) + kDown))
        module += ".base_layer";
    }
    out.push_back({lora_a_name(m.name), module + ".lora_A.weight", &m, true});
    out.push_back({lora_b_name(m.name), module + ".lora_B.weight", &m, false});
  }
  return out;
}

// An expert adapter between g4's layout (A [E, in, r], B [E, r, out]) and PEFT's (lora_A [E·r, in]
// with expert e's rows e·r .. e·r + r - 1; lora_B [out, r·E] with expert e's rank k in column k·E + e,
// as ParamWrapper.get_delta_weight reshapes them), in f32.
Tensor expert_to_peft(const Tensor& native, bool is_a) {
  const Tensor t = native.to(Device::CPU).to(DType::F32);
  const int64_t E = t.size(0), n1 = t.size(1), n2 = t.size(2);
  Tensor out = Tensor::empty(is_a ? Shape{E * n2, n1} : Shape{n2, n1 * E}, DType::F32);
  const float* src = t.data<float>();
  float* dst = out.data<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < n1; ++i)
      for (int64_t j = 0; j < n2; ++j)
        dst[is_a ? (e * n2 + j) * n1 + i : j * n1 * E + i * E + e] = src[(e * n1 + i) * n2 + j];
  return out;
}
Tensor expert_from_peft(const Tensor& peft, const Shape& native, bool is_a) {
  const int64_t E = native[0], n1 = native[1], n2 = native[2];
  Tensor out = Tensor::empty(native, DType::F32);
  const float* src = peft.data<float>();
  float* dst = out.data<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < n1; ++i)
      for (int64_t j = 0; j < n2; ++j)
        dst[(e * n1 + i) * n2 + j] = src[is_a ? (e * n2 + j) * n1 + i : j * n1 * E + i * E + e];
  return out;
}

// The PEFT shape of a native adapter tensor.
Shape peft_shape(const Shape& native, const LoraModule& m, bool is_a) {
  if (m.experts == 0) return native;
  return is_a ? Shape{native[0] * native[2], native[1]} : Shape{native[2], native[1] * native[0]};
}

// A layer's per_expert_scale [E] as f32 on the host (undefined when the base had none).
Tensor expert_scale(const Gemma4& model, const std::string& down_name) {
  const std::string name = down_name.substr(0, down_name.size() - kDown.size()) + "router.per_expert_scale";
  const auto it = model.params().buffers.find(name);
  return it == model.params().buffers.end() ? Tensor() : it->second.value.to(Device::CPU).to(DType::F32);
}

bool is_expert_down(const LoraModule& m) { return m.experts > 0 && m.name.ends_with(kDown); }

// A tensor of b's shape [E, ...] (dtype, device) holding scale[e] throughout expert e's slice.
Tensor per_expert(const Tensor& b, const Tensor& scale) {
  Tensor s = Tensor::empty(b.shape(), DType::F32);
  const int64_t per = b.numel() / b.size(0);
  for (int64_t e = 0; e < b.size(0); ++e)
    for (int64_t i = 0; i < per; ++i) s.data<float>()[e * per + i] = scale.data<float>()[e];
  return s.to(b.dtype()).to(b.device());
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
    if (s.kind == ParamKind::kExpertGateUp || s.kind == ParamKind::kExpertDown) {
      if (targeted_expert(lora, hf_name(cfg, s.name))) out.push_back({s.name, s.shape[2], s.shape[1], s.shape[0]});
      continue;
    }
    if (s.kind != ParamKind::kAttention && s.kind != ParamKind::kMlp) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);  // without ".weight"
    if (targeted(lora, hf_module_name(cfg, module))) out.push_back({module, s.shape[0], s.shape[1]});
  }
  std::string what = lora.target_regex;
  for (const std::vector<std::string>& list :
       {lora.target_regex.empty() ? list_targets(lora) : lora.expert_targets(), lora.target_parameters})
    for (const std::string& t : list) what += (what.empty() ? "" : ", ") + t;
  G4_CHECK(!out.empty(), "LoRA targets [", what,
           "] select none of the model's attention (q/k/v/o_proj), dense MLP (gate/up/down_proj) "
           "projections or routed-expert weights (experts.gate_up_proj, experts.down_proj)");
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

void save_peft_adapter(const Gemma4& model, const std::string& dir, bool folded_expert_scale) {
  G4_CHECK(model.lora(), "save_peft_adapter: the model has no LoRA adapters");
  const LoraConfig& lora = *model.lora();
  const io::ModelConfig& cfg = model.config();
  io::make_directories(dir, "save_peft_adapter:");
  const std::vector<LoraModule> modules = lora_modules(cfg, lora);
  std::vector<std::pair<std::string, Tensor>> tensors;
  bool experts = false;
  for (const PeftTensor& t : peft_tensors(cfg, modules)) {
    Tensor v = model.params().at(t.native).value().to(Device::CPU).to(DType::F32);
    if (t.module->experts > 0) {
      G4_CHECK(v.size(0) == t.module->experts, "save_peft_adapter: ", t.native, " holds ", v.size(0), " of the ",
               t.module->experts, " experts; gather the expert-parallel slices first");
      experts = true;
      const Tensor scale =
          folded_expert_scale && !t.is_a && is_expert_down(*t.module) ? expert_scale(model, t.module->name) : Tensor();
      if (scale.defined()) v = ops::mul(v, per_expert(v, scale));
      v = expert_to_peft(v, t.is_a);
    }
    tensors.emplace_back(t.key, v);
  }
  io::save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors);
  // LoraConfig's fields as PEFT writes them; those g4 never changes keep PEFT's defaults.
  json c = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", lora.base_model},
            {"revision", nullptr},
            {"inference_mode", true},
            {"r", lora.rank},
            {"lora_alpha", lora.alpha},
            // PEFT's ParamWrapper refuses any dropout (it adapts the weight, not the input); dropout
            // acts in training only, so an adapter with expert weights is written without it.
            {"lora_dropout", experts ? 0.0 : lora.dropout},
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
  std::vector<std::string> params = lora.expert_targets();
  params.insert(params.end(), lora.target_parameters.begin(), lora.target_parameters.end());
  c["target_parameters"] = params.empty() ? json() : json(params);
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
  is("lora_bias", false);
  LoraConfig lora;
  lora.rank = io::json_int(c, "r", path);
  lora.alpha = io::json_number(c, "lora_alpha", path, 8.0);
  lora.dropout = io::json_number(c, "lora_dropout", path, 0.0);
  auto strings = [&](const json& list, const char* key, std::vector<std::string>& out) {
    for (const json& e : list) {
      G4_CHECK(e.is_string(), path, ": '", key, "' entries must be strings, got ", e.dump());
      out.push_back(e.get<std::string>());
    }
  };
  const json& p = c.contains("target_parameters") ? c["target_parameters"] : json();
  G4_CHECK(p.is_null() || p.is_array(), path, ": 'target_parameters' must be a list or null");
  if (p.is_array()) strings(p, "target_parameters", lora.target_parameters);
  const json& t = c.contains("target_modules") ? c["target_modules"] : json();
  if (t.is_string()) {
    lora.target_regex = t.get<std::string>();
  } else {
    G4_CHECK(t.is_array() && (!t.empty() || !lora.target_parameters.empty()), path,
             ": 'target_modules' must be a string or a list, non-empty without 'target_parameters'");
    strings(t, "target_modules", lora.targets);
    // An empty target_modules adapts no module; g4's empty list means the default projections.
    if (t.empty()) lora.target_regex = kNoModules;
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
  const std::vector<LoraModule> modules = lora_modules(cfg, lora);
  for (const PeftTensor& t : peft_tensors(cfg, modules)) {
    G4_CHECK(reader.has(t.key), "PEFT adapter ", reader.path(), " has no tensor '", t.key, "'");
    Tensor& dst = model.params().at(t.native).mutable_value();
    // An expert adapter is stored for every expert; a model holding an expert range keeps its rows.
    Shape whole = dst.shape();
    if (t.module->experts > 0) whole[0] = t.module->experts;
    Tensor v = reader.get_f32(t.key, peft_shape(whole, *t.module, t.is_a));
    if (t.module->experts > 0) {
      v = expert_from_peft(v, whole, t.is_a);
      if (dst.size(0) != whole[0]) v = v.slice0(model.experts().begin, dst.size(0)).clone();
    }
    dst.copy_from(v.to(dst.dtype()));
    consumed.insert(t.key);
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
    const Tensor& a = model.params().at(lora_a_name(m.name)).value();
    Tensor b = model.params().at(lora_b_name(m.name)).value();
    if (m.experts == 0) {
      Tensor& w = merged->params().at(m.name + ".weight").mutable_value();
      w.copy_from(ops::add(w, ops::scale(ops::matmul(b, a), s)));  // [out, in]
      continue;
    }
    const Tensor scale = is_expert_down(m) ? expert_scale(model, m.name) : Tensor();
    if (scale.defined()) b = ops::mul(b, per_expert(b, scale));
    Tensor& w = merged->params().at(m.name).mutable_value();  // [E, in, out]
    for (int64_t e = 0; e < w.size(0); ++e) {  // the experts this model holds
      Tensor we = w.slice0(e, 1).reshape({m.in, m.out});
      const Tensor ab =
          ops::matmul(a.slice0(e, 1).reshape({m.in, a.size(2)}), b.slice0(e, 1).reshape({b.size(1), m.out}));
      we.copy_from(ops::add(we, ops::scale(ab, s)));
    }
  }
  return merged;
}

ExpertLora expert_lora(const Gemma4& model, int64_t layer, std::optional<uint64_t> dropout_call) {
  ExpertLora out;
  if (!model.lora_active()) return out;
  const LoraConfig& lora = *model.lora();
  const std::string pre = layer_prefix(layer);
  for (const bool down : {false, true}) {
    const std::string w = pre + (down ? kDown : kGateUp);
    if (!model.params().has(lora_a_name(w))) continue;
    ExpertLora::Pair& pair = down ? out.down : out.gate_up;
    pair.a = model.params().at(lora_a_name(w));
    pair.b = model.params().at(lora_b_name(w));
    const Tensor scale = down ? expert_scale(model, w) : Tensor();
    if (scale.defined()) pair.b = ag::mul(pair.b, ag::Var(per_expert(pair.b.value(), scale)));
  }
  out.scaling = lora.scaling();
  if (dropout_call && out.active())
    out.dropout = [&lora, pre, call = *dropout_call, device = model.device()](const ag::Var& x, bool down) {
      const std::string module = pre + (down ? kDown : kGateUp);
      return ag::mul(
          x, ag::Var(lora_dropout_mask(x.shape(), lora.dropout, lora.seed, call, module, x.value().dtype(), device)));
    };
  return out;
}

}  // namespace g4::model

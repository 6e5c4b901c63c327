#include "train/recipe.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "core/device_memory.h"
#include "core/error.h"

namespace g4::train {

namespace {

using json = nlohmann::json;

// Every key a recipe may set, with its default. `model.config` is free-form (config.json keys).
json defaults() {
  return {
      {"model", {{"name", ""}, {"path", ""}, {"config", json::object()}, {"init_seed", 0}}},
      {"tokenizer", ""},
      {"data",
       {{"train", json::array()},
        {"format", "auto"},
        {"text_split", "paragraph"},
        {"seq_len", 256},
        {"add_bos", true},
        {"add_eos", true},
        {"overlong", "split"},
        {"validation_fraction", 0.05},
        {"seed", 0}}},
      {"optimizer",
       {{"lr", 1e-3}, {"betas", {0.9, 0.999}}, {"eps", 1e-8}, {"weight_decay", 0.0}, {"grad_clip", 1.0}}},
      {"schedule", {{"kind", "cosine"}, {"warmup_steps", 0}, {"min_lr_ratio", 0.0}}},
      {"train",
       {{"steps", 100},
        {"batch_size", 8},
        {"grad_accumulation", 1},
        {"recompute", false},
        {"freeze", json::array()},
        {"router_aux_loss", 0.0},
        {"device", "cpu"}}},
      {"parallel", {{"data_parallel", 0}, {"expert_parallel", 1}, {"context_parallel", 1}, {"fsdp", false}}},
      {"checkpoint", {{"dir", "runs/default"}, {"every", 0}, {"keep", 2}}},
      {"log",
       {{"every", 1},
        {"validation_every", 50},
        {"validation_batches", 8},
        {"samples", 3},
        {"sample_tokens", 48},
        {"sample_prompt", ""}}},
  };
}

// YAML node -> JSON, keeping scalars typed (int, float, bool, string) as YAML reads them.
json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nullptr;
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& e : n) a.push_back(yaml_to_json(e));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (s == "null" || s == "~") return nullptr;
      try {
        size_t used = 0;
        const long long i = std::stoll(s, &used);
        if (used == s.size()) return i;
      } catch (...) {
      }
      try {
        size_t used = 0;
        const double d = std::stod(s, &used);
        if (used == s.size()) return d;
      } catch (...) {
      }
      return s;
    }
  }
  return nullptr;
}

// Merges `user` into `base`, rejecting keys `base` does not have (except inside model.config).
void merge(json& base, const json& user, const std::string& path, const std::string& source) {
  G4_CHECK(user.is_object(), source, ": '", path.empty() ? "(top level)" : path, "' must be a mapping");
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string key = path.empty() ? it.key() : path + "." + it.key();
    G4_CHECK(base.contains(it.key()), source, ": unknown recipe key '", key, "'");
    json& slot = base[it.key()];
    if (key == "model.config") {
      G4_CHECK(it.value().is_object(), source, ": 'model.config' must be a mapping of config.json keys");
      for (auto c = it.value().begin(); c != it.value().end(); ++c) slot[c.key()] = c.value();
    } else if (slot.is_object()) {
      merge(slot, it.value(), key, source);
    } else {
      slot = it.value();
    }
  }
}

template <class T>
T get(const json& j, const std::string& path, const std::string& source) {
  const json* node = &j;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    node = &(*node)[path.substr(start, dot - start)];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  try {
    if constexpr (std::is_same_v<T, double>) {
      G4_CHECK(node->is_number(), "");
    } else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, uint64_t>) {
      G4_CHECK(node->is_number_integer(), "");
    } else if constexpr (std::is_same_v<T, bool>) {
      G4_CHECK(node->is_boolean(), "");
    } else if constexpr (std::is_same_v<T, std::string>) {
      G4_CHECK(node->is_string(), "");
    }
    return node->get<T>();
  } catch (...) {
    G4_FAIL(source, ": recipe key '", path, "' has the wrong type (value ", node->dump(), ")");
  }
}

void check_positive(int64_t v, const char* key, const std::string& source) {
  G4_CHECK(v > 0, source, ": recipe key '", key, "' must be positive, got ", v);
}

// train.device, after the parallel keys (which the GPU trainer does not support yet).
void parse_device(const json& j, const std::string& source, Recipe& r) {
  const std::string device = get<std::string>(j, "train.device", source);
  G4_CHECK(device == "cpu" || device == "cuda", source, ": recipe key 'train.device' must be cpu or cuda, got '", device,
           "'");
  if (device == "cpu") {
    r.device = Device::CPU;
    return;
  }
  r.device = Device::CUDA;
  // One process on one GPU for now: the parallel trainer's collectives (gradient reduction, FSDP
  // shards, expert and context exchanges) run over MPI on host tensors.
  const char* multi = r.fsdp                    ? "parallel.fsdp"
                      : r.data_parallel > 1     ? "parallel.data_parallel"
                      : r.expert_parallel > 1   ? "parallel.expert_parallel"
                      : r.context_parallel > 1  ? "parallel.context_parallel"
                                                : nullptr;
  G4_CHECK(!multi, source, ": recipe key '", multi, "' is for multi-rank training, but 'train.device' is cuda, "
           "which trains on one GPU only: multi-GPU training is not supported yet (use train.device: cpu for "
           "multi-rank runs)");
#ifdef G4_WITH_CUDA
  const char* why = "no CUDA GPU is visible on this machine";
#else
  const char* why = "this g4 was built without the CUDA backend (no nvcc at build time)";
#endif
  G4_CHECK(cuda_available(), source, ": recipe key 'train.device' is cuda, but ", why);
}

}  // namespace

bool wildcard_match(const std::string& p, const std::string& t) {
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

Recipe recipe_from_json(const json& user, const std::string& source) {
  json j = defaults();
  merge(j, user, "", source);
  Recipe r;
  r.source = source;
  r.resolved = j;
  r.model_name = get<std::string>(j, "model.name", source);
  r.model_path = get<std::string>(j, "model.path", source);
  G4_CHECK(r.model_name.empty() != r.model_path.empty(), source,
           ": set exactly one of 'model.name' (a built-in shape) and 'model.path' (a Hugging Face checkpoint)");
  r.model_overrides = j["model"]["config"];
  r.init_seed = get<uint64_t>(j, "model.init_seed", source);
  r.tokenizer = get<std::string>(j, "tokenizer", source);
  if (r.tokenizer.empty()) r.tokenizer = r.model_path;
  G4_CHECK(!r.tokenizer.empty(), source, ": 'tokenizer' is required when training a built-in model");

  G4_CHECK(j["data"]["train"].is_array() || j["data"]["train"].is_string(), source,
           ": 'data.train' must be a file or a list of files");
  if (j["data"]["train"].is_string()) j["data"]["train"] = json::array({j["data"]["train"]});
  for (const auto& f : j["data"]["train"]) {
    G4_CHECK(f.is_string(), source, ": 'data.train' entries must be file paths");
    r.data.files.push_back(f.get<std::string>());
  }
  G4_CHECK(!r.data.files.empty(), source, ": 'data.train' names no file");
  r.data.format = get<std::string>(j, "data.format", source);
  r.data.text_split = get<std::string>(j, "data.text_split", source);
  r.data.seq_len = get<int64_t>(j, "data.seq_len", source);
  r.data.add_bos = get<bool>(j, "data.add_bos", source);
  r.data.add_eos = get<bool>(j, "data.add_eos", source);
  r.data.overlong = get<std::string>(j, "data.overlong", source);
  r.data.validation_fraction = get<double>(j, "data.validation_fraction", source);
  r.data.seed = get<uint64_t>(j, "data.seed", source);
  check_positive(r.data.seq_len, "data.seq_len", source);
  G4_CHECK(r.data.validation_fraction >= 0 && r.data.validation_fraction < 1, source,
           ": 'data.validation_fraction' must be in [0, 1)");

  r.lr = get<double>(j, "optimizer.lr", source);
  const json& betas = j["optimizer"]["betas"];
  G4_CHECK(betas.is_array() && betas.size() == 2 && betas[0].is_number() && betas[1].is_number(), source,
           ": 'optimizer.betas' must be two numbers");
  r.beta1 = betas[0].get<double>();
  r.beta2 = betas[1].get<double>();
  r.eps = get<double>(j, "optimizer.eps", source);
  r.weight_decay = get<double>(j, "optimizer.weight_decay", source);
  r.grad_clip = get<double>(j, "optimizer.grad_clip", source);
  G4_CHECK(r.lr > 0, source, ": 'optimizer.lr' must be positive");
  G4_CHECK(r.beta1 >= 0 && r.beta1 < 1 && r.beta2 >= 0 && r.beta2 < 1, source, ": 'optimizer.betas' must be in [0, 1)");

  r.schedule = get<std::string>(j, "schedule.kind", source);
  G4_CHECK(r.schedule == "cosine" || r.schedule == "linear" || r.schedule == "constant", source,
           ": 'schedule.kind' must be cosine, linear or constant, got '", r.schedule, "'");
  r.warmup_steps = get<int64_t>(j, "schedule.warmup_steps", source);
  r.min_lr_ratio = get<double>(j, "schedule.min_lr_ratio", source);

  r.steps = get<int64_t>(j, "train.steps", source);
  r.batch_size = get<int64_t>(j, "train.batch_size", source);
  r.grad_accumulation = get<int64_t>(j, "train.grad_accumulation", source);
  check_positive(r.steps, "train.steps", source);
  check_positive(r.batch_size, "train.batch_size", source);
  check_positive(r.grad_accumulation, "train.grad_accumulation", source);
  r.recompute = get<bool>(j, "train.recompute", source);
  for (const auto& f : j["train"]["freeze"]) {
    G4_CHECK(f.is_string(), source, ": 'train.freeze' entries must be name patterns");
    r.freeze.push_back(f.get<std::string>());
  }
  r.router_aux_loss = get<double>(j, "train.router_aux_loss", source);

  r.data_parallel = get<int64_t>(j, "parallel.data_parallel", source);
  G4_CHECK(r.data_parallel >= 0, source, ": 'parallel.data_parallel' must be >= 0 (0 = every launched rank)");
  r.expert_parallel = get<int64_t>(j, "parallel.expert_parallel", source);
  G4_CHECK(r.expert_parallel >= 1, source, ": 'parallel.expert_parallel' must be >= 1 (1 = off)");
  r.context_parallel = get<int64_t>(j, "parallel.context_parallel", source);
  G4_CHECK(r.context_parallel >= 1, source, ": 'parallel.context_parallel' must be >= 1 (1 = off)");
  r.fsdp = get<bool>(j, "parallel.fsdp", source);
  G4_CHECK(!(r.fsdp && r.data_parallel == 1), source,
           ": 'parallel.fsdp' shards over the data-parallel ranks, but 'parallel.data_parallel' is 1, so there is "
           "nothing to shard over; drop one of the two keys");
  parse_device(j, source, r);
  r.output_dir = get<std::string>(j, "checkpoint.dir", source);
  r.checkpoint_every = get<int64_t>(j, "checkpoint.every", source);
  r.keep_checkpoints = get<int64_t>(j, "checkpoint.keep", source);
  r.log_every = get<int64_t>(j, "log.every", source);
  r.validation_every = get<int64_t>(j, "log.validation_every", source);
  r.validation_batches = get<int64_t>(j, "log.validation_batches", source);
  r.samples = get<int64_t>(j, "log.samples", source);
  r.sample_tokens = get<int64_t>(j, "log.sample_tokens", source);
  r.sample_prompt = get<std::string>(j, "log.sample_prompt", source);
  check_positive(r.log_every, "log.every", source);
  return r;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  G4_CHECK(std::filesystem::exists(path), "recipe file ", path, " does not exist");
  json user;
  try {
    user = yaml_to_json(YAML::LoadFile(path));
  } catch (const YAML::Exception& e) {
    G4_FAIL("recipe ", path, " is not valid YAML: ", e.what());
  }
  if (user.is_null()) user = json::object();
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    G4_CHECK(eq != std::string::npos && eq > 0, "override '", o, "' must look like key.path=value");
    const std::string key = o.substr(0, eq);
    json value = yaml_to_json(YAML::Load(o.substr(eq + 1)));
    json* node = &user;
    size_t start = 0;
    while (true) {
      const size_t dot = key.find('.', start);
      const std::string part = key.substr(start, dot - start);
      if (dot == std::string::npos) {
        (*node)[part] = value;
        break;
      }
      if (!(*node)[part].is_object()) (*node)[part] = json::object();
      node = &(*node)[part];
      start = dot + 1;
    }
  }
  // Paths inside a recipe are relative to the working directory, like every path on the command line.
  return recipe_from_json(user, path);
}

}  // namespace g4::train

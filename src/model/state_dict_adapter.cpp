#include "model/state_dict_adapter.h"

#include <filesystem>
#include <set>

#include "core/log.h"
#include "io/json_input.h"
#include "model/vision_tower.h"
#include "ops/elementwise.h"

namespace g4::model {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Native MoE names and their Hugging Face counterparts (relative to the layer prefix).
const std::pair<const char*, const char*> kMoeRenames[] = {
    {"moe.gate.proj.weight", "router.proj.weight"},
    {"moe.gate.scale", "router.scale"},
    {"moe.experts.gate_and_up_projs", "experts.gate_up_proj"},
    {"moe.experts.down_projs", "experts.down_proj"},
};

}  // namespace

std::string hf_name(const io::ModelConfig& cfg, const std::string& native) {
  // Tower tensors keep their Hugging Face names natively.
  if (native == "lm_head.weight") return native;
  for (const std::string* tower : {&kVisionPrefix, &kVisionEmbedPrefix, &kAudioPrefix, &kAudioEmbedPrefix})
    if (starts_with(native, *tower)) return native;
  G4_CHECK(starts_with(native, "model."), "not a native parameter name: ", native);
  std::string rest = native.substr(6);
  for (const auto& [from, to] : kMoeRenames) {
    if (ends_with(rest, from)) {
      rest = rest.substr(0, rest.size() - std::string(from).size()) + to;
      break;
    }
  }
  return hf_text_prefix(cfg) + rest;
}

namespace {

// [E, A, B] -> [E, B, A] (as f32)
Tensor transpose_last2(const Tensor& in) {
  const Tensor t = in.dtype() == DType::F32 ? in : in.to(DType::F32);
  const int64_t E = t.size(0), A = t.size(1), B = t.size(2);
  Tensor out = Tensor::empty({E, B, A}, DType::F32);
  const float* s = t.data<float>();
  float* d = out.data<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) d[(e * B + b) * A + a] = s[(e * A + a) * B + b];
  return out;
}

// Reads `key` as f32 with the expected shape; for experts only rows [begin, begin+count).
Tensor read_experts(const io::SafetensorsReader& r, const std::string& key, const Shape& full_shape,
                    const ExpertRange& range) {
  Tensor all = r.get_f32(key, full_shape);
  if (range.begin == 0 && range.count == full_shape[0]) return all;
  return all.slice0(range.begin, range.count).clone();
}

// The per-expert scale that belongs with a layer's down projection: native name from the
// native down_projs name, Hugging Face key from the experts.down_proj key.
std::string native_scale_name(const std::string& down_name) {
  const std::string down = "moe.experts.down_projs";
  G4_CHECK(ends_with(down_name, down), "not a native expert down projection: ", down_name);
  return down_name.substr(0, down_name.size() - down.size()) + "router.per_expert_scale";
}
std::string hf_scale_key(const std::string& down_key) {
  const std::string down = "experts.down_proj";
  G4_CHECK(ends_with(down_key, down), "not a Hugging Face expert down projection: ", down_key);
  return down_key.substr(0, down_key.size() - down.size()) + "router.per_expert_scale";
}

}  // namespace

std::string hf_text_prefix(const io::ModelConfig& cfg) {
  if (cfg.diffusion) return "model.decoder.";
  return cfg.conditional ? "model.language_model." : "model.";
}

namespace {
// DiffusionGemma stores the encoder's layer scalars apart from the decoder's (the one text state
// that is not tied); every other encoder weight is the decoder's.
std::string hf_encoder_scalar_key(int64_t l) {
  return "model.encoder.language_model.layers." + std::to_string(l) + ".layer_scalar";
}
bool is_tower_key(const io::ModelConfig& cfg, const std::string& key) {
  const std::string base = cfg.diffusion ? "model.encoder." : "model.";
  for (const char* t : {"vision_tower.", "audio_tower.", "embed_vision.", "embed_audio."})
    if (starts_with(key, base + t)) return true;
  return false;
}
}  // namespace

void load_hf_weights(Gemma4& model, const io::SafetensorsReader& reader, const LoadVisitor& visit) {
  const io::ModelConfig& cfg = model.config();
  const ExpertRange range = model.experts();
  const std::string prefix = hf_text_prefix(cfg);
  std::set<std::string> consumed;
  auto take = [&](const std::string& key) {
    G4_CHECK(reader.has(key), "checkpoint ", reader.path(), " has no tensor '", key, "'");
    consumed.insert(key);
    return key;
  };
  // The native value goes into the model where it holds the parameter, and to the visitor.
  auto store = [&](const ParamSpec& spec, const Tensor& value) {
    Tensor& dst = model.params().at(spec.name).mutable_value();
    G4_CHECK(dst.defined() || visit, "load_hf_weights: parameter '", spec.name,
             "' has no storage in the model and no visitor takes it");
    if (dst.defined()) dst.copy_from(value.to(dst.dtype()));
    if (visit) visit(spec.name, value);
  };

  for (const ParamSpec& spec : native_param_specs(cfg, range)) {
    const std::string key = take(hf_name(cfg, spec.name));
    if (spec.kind == ParamKind::kExpertGateUp) {
      const Shape hf_shape = {cfg.num_experts, 2 * cfg.moe_intermediate_size, cfg.hidden_size};
      store(spec, transpose_last2(read_experts(reader, key, hf_shape, range)));
    } else if (spec.kind == ParamKind::kExpertDown) {
      const Shape hf_shape = {cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size};
      Tensor down = transpose_last2(read_experts(reader, key, hf_shape, range));  // [E, I, H]
      const std::string scale_key = take(hf_scale_key(key));
      Tensor scale = read_experts(reader, scale_key, {cfg.num_experts}, range);
      // Fold the per-expert scale into down (the router then returns plain top-k weights).
      const int64_t per = down.numel() / down.size(0);
      for (int64_t e = 0; e < down.size(0); ++e) {
        const float s = scale.data<float>()[e];
        float* d = down.data<float>() + e * per;
        for (int64_t i = 0; i < per; ++i) d[i] *= s;
      }
      store(spec, down);
      model.params().set_buffer(native_scale_name(spec.name), ParamKind::kPerExpertScale, scale);
    } else {
      store(spec, reader.get_f32(key, spec.shape));
    }
  }
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string key = prefix + "layers." + std::to_string(l) + ".layer_scalar";
    // transformers registers it as a persistent buffer, so every checkpoint it (or g4) writes
    // holds it; released weights scale layers by 0.005 to 0.99, so assuming 1 would compute
    // another model.
    G4_CHECK(reader.has(key), "checkpoint ", reader.path(), " has no tensor '", key,
             "' (the layer's output scale, saved with the weights by transformers)");
    model.params().set_buffer(layer_prefix(l) + "layer_scalar", ParamKind::kLayerScalar,
                              reader.get_f32(take(key), {1}));
    if (!cfg.diffusion) continue;
    const std::string enc = hf_encoder_scalar_key(l);
    if (reader.has(enc)) {
      model.params().set_buffer(encoder_layer_scalar_name(l), ParamKind::kLayerScalar, reader.get_f32(take(enc), {1}));
    } else {
      // NeMo Automodel's exporter drops these keys (transformers then runs its encoder with
      // uninitialised scalars); the two copies are equal in every model trained as one stack.
      if (l == 0)
        G4_LOG("checkpoint ", reader.path(), " has no ", hf_encoder_scalar_key(0),
               " (nor the other encoder layer scalars): the encoder uses the decoder's, as Automodel trained them");
      model.params().set_buffer(encoder_layer_scalar_name(l), ParamKind::kLayerScalar,
                                model.params().buffer(layer_prefix(l) + "layer_scalar").clone());
    }
  }

  using Infinities = io::SafetensorsReader::Infinities;
  for (auto& [name, b] : model.params().buffers) {
    if (b.kind == ParamKind::kVisionStandardize) b.value = reader.get_f32(take(name), b.value.shape());
    // A clip bound of ±inf does not clip: transformers' initial value.
    if (b.kind == ParamKind::kVisionClip) b.value = reader.get_f32(take(name), b.value.shape(), Infinities::kAllowed);
    // An audio checkpoint without bounds keeps the unbounded ones (transformers' initial buffers).
    if (b.kind == ParamKind::kAudioClip && reader.has(name))
      b.value = reader.get_f32(take(name), b.value.shape(), Infinities::kAllowed);
  }

  int64_t skipped_towers = 0;
  for (const std::string& key : reader.names()) {
    if (consumed.count(key)) continue;
    if (key == "lm_head.weight" && cfg.tie_word_embeddings) continue;  // tied: the embedding is the head
    if (starts_with(key, prefix + "layers.")) {
      // K/V weights of KV-shared layers are unused (transformers ignores them too).
      const std::string rest = key.substr((prefix + "layers.").size());
      const int64_t l = std::stoll(rest.substr(0, rest.find('.')));
      const bool kv_key = rest.find(".self_attn.k_") != std::string::npos ||
                          rest.find(".self_attn.v_") != std::string::npos;
      if (l >= 0 && l < cfg.num_layers && cfg.layers[static_cast<size_t>(l)].kv_shared && kv_key) continue;
    }
    if (is_tower_key(cfg, key)) {
      // A diffusion checkpoint's vision tower is written back as read (g4 does not run it, but a
      // checkpoint g4 saves must load in transformers, which cannot build the model without it).
      // A gemma4 model's towers were read above when its config describes them.
      if (cfg.diffusion) model.params().set_buffer(key, ParamKind::kPassThrough, reader.get(key).clone());
      else ++skipped_towers;
      continue;
    }
    G4_FAIL("checkpoint ", reader.path(), " has an unexpected tensor '", key,
            "' (not part of the Gemma 4 text decoder this config describes)");
  }
  if (skipped_towers > 0)
    G4_LOG("skipped ", skipped_towers, " vision/audio tower tensors in ", reader.path(),
           " (its config.json describes no tower for them)");
}

io::ModelConfig load_hf_config(const std::string& dir) {
  const fs::path config_path = fs::path(dir) / "config.json";
  G4_CHECK(fs::exists(config_path), "model directory ", dir, " has no config.json");
  io::ModelConfig cfg = io::load_model_config(config_path.string());
  const fs::path generation = fs::path(dir) / "generation_config.json";
  if (cfg.diffusion && fs::exists(generation))
    cfg.generation_config = io::read_json_file(generation.string(), "generation config", 1 << 20);
  return cfg;
}

std::unique_ptr<Gemma4> load_hf_model(const std::string& dir, ExpertRange experts, DType dtype) {
  auto model = std::make_unique<Gemma4>(load_hf_config(dir), experts, dtype);
  load_hf_weights(*model, io::SafetensorsReader::open(dir));
  return model;
}

NamedTensors export_hf_tensor(const io::ModelConfig& cfg, const std::string& native_name, ParamKind kind,
                              const Tensor& in) {
  // Checkpoints hold f32 (an f64 reference model is written as f32 too).
  const Tensor value = in.dtype() == DType::F32 ? in : in.to(DType::F32);
  const std::string key = hf_name(cfg, native_name);
  if (kind == ParamKind::kExpertGateUp) return {{key, transpose_last2(value)}};
  if (kind == ParamKind::kExpertDown)
    return {{key, transpose_last2(value)}, {hf_scale_key(key), Tensor::full({value.size(0)}, 1.0)}};
  return {{key, value}};
}

NamedTensors export_hf_state_dict(const Gemma4& model) {
  const io::ModelConfig& cfg = model.config();
  G4_CHECK(model.experts().count == cfg.num_experts || !cfg.enable_moe_block,
           "export needs every expert; gather the expert-parallel shards first");
  NamedTensors out;
  for (const std::string& name : model.params().order) {
    if (is_lora(model.params().kind(name))) continue;  // the adapter is PEFT's files (save_peft_adapter)
    for (auto& kv : export_hf_tensor(cfg, name, model.params().kind(name), model.params().at(name).value()))
      out.push_back(std::move(kv));
  }
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    out.emplace_back(hf_text_prefix(cfg) + "layers." + std::to_string(l) + ".layer_scalar",
                     model.params().buffer(layer_prefix(l) + "layer_scalar"));
    // Written even where the source lacked them: transformers leaves absent ones uninitialised.
    if (cfg.diffusion) out.emplace_back(hf_encoder_scalar_key(l), model.params().buffer(encoder_layer_scalar_name(l)));
  }
  for (const auto& [name, b] : model.params().buffers)
    if (b.kind == ParamKind::kPassThrough || is_tower_buffer(b.kind))
      out.emplace_back(name, b.value);
  return out;
}

void save_hf_checkpoint(const Gemma4& model, const std::string& dir, size_t max_shard_bytes) {
  // A config built from fields gets a stub vision_config that describes no real tower's weights.
  if (model.config().raw.empty())
    for (const auto& [name, b] : model.params().buffers)
      G4_CHECK(b.kind != ParamKind::kPassThrough, "save_hf_checkpoint: the model keeps the vision tower tensor '", name,
               "' but its config was not read from a file, so the vision_config describing it is unknown");
  io::make_directories(dir, "save_hf_checkpoint:");
  io::SafetensorsWriter writer(dir, max_shard_bytes);
  writer.set_metadata("format", "pt");
  for (auto& [name, t] : export_hf_state_dict(model)) writer.add(name, t);
  writer.finish();
  io::write_file_atomic((fs::path(dir) / "config.json").string(), io::model_config_to_json(model.config()).dump(2) + "\n");
  if (!model.config().generation_config.is_null())
    io::write_file_atomic((fs::path(dir) / "generation_config.json").string(),
                          model.config().generation_config.dump(2) + "\n");
  // Beside this base, whose per_expert_scale is written as ones.
  if (model.lora()) save_peft_adapter(model, (fs::path(dir) / kLoraAdapterDir).string(), /*folded_expert_scale=*/true);
}

void load_checkpoint_weights(Gemma4& model, const std::string& dir, const LoadVisitor& visit) {
  if (!model.lora() || !fs::exists(fs::path(dir) / kLoraBaseFile))
    load_hf_weights(model, io::SafetensorsReader::open(dir), visit);
  if (model.lora()) load_peft_adapter(model, (fs::path(dir) / kLoraAdapterDir).string());
}

NamedTensors hf_gradients(const Gemma4& model) {
  const io::ModelConfig& cfg = model.config();
  NamedTensors out;
  for (const std::string& name : model.params().order) {
    const ag::Var& v = model.params().at(name);
    const Tensor g = v.grad().defined() ? v.grad().to(DType::F32) : Tensor::zeros(v.value().shape(), DType::F32);
    const ParamKind kind = model.params().kind(name);
    if (kind != ParamKind::kExpertDown) {
      for (auto& kv : export_hf_tensor(cfg, name, kind, g)) out.push_back(std::move(kv));
      continue;
    }
    // Native D[e] = s_e * down_e^T. So dL/d down_e = s_e * dD[e]^T and dL/ds_e = sum(D[e] * dD[e]) / s_e.
    const Tensor& s = model.params().buffer(native_scale_name(name));
    const Tensor D = v.value().to(DType::F32);
    const int64_t E = D.size(0), per = D.numel() / E;
    Tensor scaled = g.clone();
    Tensor ds = Tensor::zeros({E}, DType::F32);
    for (int64_t e = 0; e < E; ++e) {
      const float se = s.data<float>()[e];
      double acc = 0;
      for (int64_t i = 0; i < per; ++i) {
        acc += static_cast<double>(D.data<float>()[e * per + i]) * g.data<float>()[e * per + i];
        scaled.data<float>()[e * per + i] *= se;
      }
      ds.data<float>()[e] = static_cast<float>(acc / se);
    }
    const std::string key = hf_name(cfg, name);
    out.emplace_back(key, transpose_last2(scaled));
    out.emplace_back(hf_scale_key(key), ds);
  }
  return out;
}

}  // namespace g4::model

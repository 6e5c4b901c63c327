#include "train/weights_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/hash.h"
#include "io/json_input.h"
#include "io/tokenizer.h"
#include "model/lora.h"
#include "model/state_dict_adapter.h"

namespace g4::train {

namespace fs = std::filesystem;

std::unique_ptr<model::Gemma4> gather_experts_for_rank0(const model::Gemma4& m, parallel::DeviceMesh& mesh,
                                                        bool adapters_only) {
  if (mesh.shape().ep == 1 || mesh.coord().dp != 0 || mesh.coord().cp != 0) return nullptr;
  return gather_experts(m, mesh.ep_group(), adapters_only);
}

namespace {
// Collective over `ep`: the whole [E, ...] tensor from each rank's expert slice.
Tensor gather_expert_slices(const Tensor& v, parallel::Communicator& ep) {
  // Host values: a GPU group gathers the exported experts through its GPUs.
  Shape whole = v.shape();
  whole[0] *= ep.size();
  Tensor gathered = Tensor::empty(whole, v.dtype(), v.device());
  parallel::all_gather_values(ep, v, gathered);
  return gathered;
}
}  // namespace

std::unique_ptr<model::Gemma4> gather_experts(const model::Gemma4& m, parallel::Communicator& ep, bool adapters_only) {
  const auto base = [adapters_only](const std::string&) { return !adapters_only; };
  auto full = std::make_unique<model::Gemma4>(m.config(), model::ExpertRange{}, DType::F32, Device::CPU, base);
  if (m.lora()) full->enable_lora(*m.lora());
  for (const std::string& n : m.params().order) {
    const model::ParamKind kind = m.params().kind(n);
    if (adapters_only && !model::is_lora(kind)) continue;
    const Tensor& v = m.params().at(n).value();
    full->params().at(n).mutable_value().copy_from(model::split_by_expert(kind) ? gather_expert_slices(v, ep) : v);
  }
  // The per-expert scales too: a LoRA export beside a folded base multiplies down's B by them.
  for (const auto& [n, b] : m.params().buffers)
    full->params().set_buffer(n, b.kind, model::split_by_expert(b.kind) ? gather_expert_slices(b.value, ep)
                                                                          : b.value.clone());
  return full;
}

std::string lora_base_fingerprint_of(const std::string& dir) {
  model::Gemma4 skeleton(model::load_hf_config(dir), model::ExpertRange{}, DType::F32, Device::CPU,
                         [](const std::string&) { return false; });
  std::map<std::string, FingerprintSample> samples;
  model::load_hf_weights(skeleton, io::SafetensorsReader::open(dir),
                         [&](const std::string& n, const Tensor& v) { samples.emplace(n, fingerprint_sample(v)); });
  return lora_base_fingerprint(skeleton, samples);
}

namespace {

// The first parameter of `m` holding a NaN or an infinity ("" when all are finite).
std::string first_nonfinite(const model::Gemma4& m) {
  for (const std::string& n : m.params().order) {
    const Tensor& t = m.params().at(n).value();
    if (!t.defined()) continue;
    const Tensor v = t.dtype() == DType::F64 ? t : t.to(DType::F32);
    for (int64_t i = 0; i < v.numel(); ++i) {
      const double x = v.dtype() == DType::F64 ? v.data<double>()[i] : v.data<float>()[i];
      if (!std::isfinite(x)) return n;
    }
  }
  return "";
}

// Each file whole, as convert copies its side files: a tokenizer file that is not a regular file (a
// FIFO) or vanished is an error in g4's words, and a full disk never leaves half a file.
void copy_tokenizer(const std::string& tokenizer_path, const fs::path& dir) {
  if (tokenizer_path.empty()) return;
  const fs::path t(tokenizer_path);
  const auto copy = [&dir](const fs::path& src) {
    io::copy_file_atomic(src.string(), (dir / src.filename()).string(), "tokenizer file");
  };
  if (fs::is_directory(t)) {
    for (const std::string& f : io::kTokenizerFiles)
      if (fs::exists(t / f)) copy(t / f);
  } else if (fs::exists(t)) {
    copy(t);
  }
}

}  // namespace

FingerprintSample fingerprint_sample(const Tensor& value) {
  // The optimizer's f32 host weights are read in place: a copy would cost the whole model.
  const Tensor t =
      value.device() == Device::CPU && value.dtype() == DType::F32 ? value : value.to(Device::CPU).to(DType::F32);
  FingerprintSample s{t.shape(), {}};
  const int64_t count = std::min<int64_t>(256, t.numel());
  for (int64_t k = 0; k < count; ++k) s.values.push_back(t.data<float>()[k * t.numel() / count]);
  return s;
}

std::string lora_base_fingerprint(const model::Gemma4& m, const std::map<std::string, FingerprintSample>& samples) {
  Fnv1a f;
  const auto mix = [&f](const void* p, size_t n) { f.mix(p, n); };
  auto add = [&](const std::string& n, const FingerprintSample& s) {
    mix(n.data(), n.size());
    for (const int64_t d : s.shape) mix(&d, sizeof d);
    for (const float v : s.values) mix(&v, sizeof v);
  };
  for (const std::string& n : m.params().order) {
    if (model::is_lora(m.params().kind(n))) continue;
    const Tensor& value = m.params().at(n).value();
    if (value.defined()) {
      add(n, fingerprint_sample(value));
      continue;
    }
    const auto it = samples.find(n);
    G4_CHECK(it != samples.end(), "lora_base_fingerprint: the model holds no value of '", n,
             "' and its loading recorded no sample of it");
    add(n, it->second);
  }
  // The buffers too: a base written by g4 has the same folded expert weights as the checkpoint it
  // came from, but per_expert_scale ones, which scale the down adapters differently.
  for (const auto& [n, b] : m.params().buffers) add(n, fingerprint_sample(b.value));
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
  return hex;
}

std::string WeightsCheckpoint::base_fingerprint() {
  if (base_fingerprint_.empty()) base_fingerprint_ = lora_base_fingerprint(optimizer_.export_weights());
  return base_fingerprint_;
}

void WeightsCheckpoint::save(const fs::path& dir, nlohmann::json& state) {
  optimizer_.gather_parameters();
  // An adapter-only checkpoint reads no frozen weight (its base's fingerprint was taken at load).
  const bool adapter_only = adapter_only_ && optimizer_.export_trained().lora();
  if (adapter_only) base_fingerprint();
  model::Gemma4& weights = adapter_only ? optimizer_.export_trained() : optimizer_.export_weights();
  save_weights(weights, dir, state, adapter_only);
  optimizer_.release_exported();
}

void WeightsCheckpoint::save_weights(model::Gemma4& weights, const fs::path& dir, const nlohmann::json& state,
                                     bool adapter_only) {
  // A checkpoint never holds NaN or infinite weights (it would rotate good ones away): every rank
  // checks what it holds and all of them stop together.
  const std::string bad = first_nonfinite(weights);
  Tensor any = Tensor::from_vector<double>({bad.empty() ? 0.0 : 1.0}, {1});
  if (mesh_.world().size() > 1) parallel::all_reduce_values(mesh_.world(), any);
  G4_CHECK(any.data<double>()[0] == 0, "refusing to write checkpoint step ", state.value("step", int64_t{-1}), ": ",
           bad.empty() ? std::string("another rank's weights are") : "parameter " + bad + " is",
           " not finite (NaN or infinite); the earlier checkpoints are kept");
  if (adapter_only) {
    // Under expert parallelism the first EP group gathers the expert adapters for rank 0.
    const std::unique_ptr<model::Gemma4> full = gather_experts_for_rank0(weights, mesh_, /*adapters_only=*/true);
    if (mesh_.world().rank() != 0) return;
    model::save_peft_adapter(full ? *full : weights, (dir / model::kLoraAdapterDir).string());
    const nlohmann::json base = {{"base_model", lora_base_}, {"fingerprint", base_fingerprint_}};
    io::write_file_atomic((dir / model::kLoraBaseFile).string(), base.dump(2) + "\n");
    copy_tokenizer(tokenizer_path_, dir);
    return;
  }
  const std::unique_ptr<model::Gemma4> full = gather_experts_for_rank0(weights, mesh_);
  if (mesh_.world().rank() != 0) return;
  model::save_hf_checkpoint(full ? *full : weights, dir.string());
  copy_tokenizer(tokenizer_path_, dir);
}

void WeightsCheckpoint::load(const fs::path& dir, const nlohmann::json&) {
  const fs::path record = dir / model::kLoraBaseFile;
  if (fs::exists(record)) {
    // Only the adapter was saved: the base this run loaded must be the one it was trained on.
    const nlohmann::json base = io::read_json_file(record.string(), "LoRA base record", 1 << 20);
    const std::string was = base.value("base_model", std::string()), print = base.value("fingerprint", std::string());
    G4_CHECK(!lora_base_.empty(), "checkpoint ", dir.string(), " holds only a LoRA adapter (for the base ", was,
             "); resume it with LoRA on and model.path set to that base");
    const std::string now = base_fingerprint();
    optimizer_.release_exported();
    G4_CHECK(now == print, "checkpoint ", dir.string(), " holds only a LoRA adapter, trained on the base ", was,
             " (fingerprint ", print, "), but this run's base ", lora_base_, " has fingerprint ", now,
             ": resume with model.path set to the base the adapter was trained on");
  }
  optimizer_.load_weights(dir.string());
}

}  // namespace g4::train

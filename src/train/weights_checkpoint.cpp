#include "train/weights_checkpoint.h"

#include <cmath>

#include "model/state_dict_adapter.h"

namespace g4::train {

namespace fs = std::filesystem;

std::unique_ptr<model::Gemma4> gather_experts_for_rank0(const model::Gemma4& m, parallel::DeviceMesh& mesh) {
  if (mesh.shape().ep == 1 || mesh.coord().dp != 0 || mesh.coord().cp != 0) return nullptr;
  return gather_experts(m, mesh.ep_group());
}

std::unique_ptr<model::Gemma4> gather_experts(const model::Gemma4& m, parallel::Communicator& ep) {
  auto full = std::make_unique<model::Gemma4>(m.config());
  for (const std::string& n : m.params().order) {
    const Tensor& v = m.params().at(n).value();
    full->params().at(n).mutable_value().copy_from(model::split_by_expert(m.params().kind(n)) ? ep.all_gather(v) : v);
  }
  for (const auto& [n, b] : m.params().buffers)
    if (!model::split_by_expert(b.kind)) full->params().set_buffer(n, b.kind, b.value.clone());
  return full;
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

}  // namespace

void WeightsCheckpoint::save(const fs::path& dir, nlohmann::json& state) {
  optimizer_.gather_parameters();
  model::Gemma4& weights = optimizer_.export_weights();
  // A checkpoint never holds NaN or infinite weights (it would rotate good ones away): every rank
  // checks what it holds and all of them stop together.
  const std::string bad = first_nonfinite(weights);
  Tensor any = Tensor::from_vector<double>({bad.empty() ? 0.0 : 1.0}, {1});
  if (mesh_.world().size() > 1) mesh_.world().all_reduce(any);
  G4_CHECK(any.data<double>()[0] == 0, "refusing to write checkpoint step ", state.value("step", int64_t{-1}), ": ",
           bad.empty() ? std::string("another rank's weights are") : "parameter " + bad + " is",
           " not finite (NaN or infinite); the earlier checkpoints are kept");
  const std::unique_ptr<model::Gemma4> full = gather_experts_for_rank0(weights, mesh_);
  if (mesh_.world().rank() != 0) return;
  model::save_hf_checkpoint(full ? *full : weights, dir.string());
  if (tokenizer_path_.empty()) return;
  const fs::path t(tokenizer_path_);
  if (fs::is_directory(t)) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"})
      if (fs::exists(t / f)) fs::copy_file(t / f, dir / f);
  } else if (fs::exists(t)) {
    fs::copy_file(t, dir / t.filename());
  }
}

void WeightsCheckpoint::load(const fs::path& dir, const nlohmann::json&) { optimizer_.load_weights(dir.string()); }

}  // namespace g4::train

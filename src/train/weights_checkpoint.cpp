#include "train/weights_checkpoint.h"

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

void WeightsCheckpoint::save(const fs::path& dir, nlohmann::json&) {
  optimizer_.gather_parameters();
  model::Gemma4& weights = optimizer_.export_weights();
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

// The checkpoint part of the trained weights: a Hugging Face checkpoint (config.json +
// safetensors that transformers loads) and the tokenizer's files, written by rank 0 from the
// optimizer's f32 weights (the fp32 masters, never bf16 copies). Under expert parallelism the
// first EP group gathers its expert slices first, so rank 0 writes every expert.
#pragma once
#include <memory>
#include <string>

#include "parallel/device_mesh.h"
#include "train/optimizer.h"

namespace g4::train {

class WeightsCheckpoint final : public CheckpointPart {
 public:
  // The optimizer and mesh must outlive the part. tokenizer_path: a tokenizer file or directory
  // whose files are copied into every checkpoint ("" = none).
  WeightsCheckpoint(Optimizer& optimizer, parallel::DeviceMesh& mesh, std::string tokenizer_path)
      : optimizer_(optimizer), mesh_(mesh), tokenizer_path_(std::move(tokenizer_path)) {}

  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

 private:
  Optimizer& optimizer_;
  parallel::DeviceMesh& mesh_;
  std::string tokenizer_path_;
};

// Collective over `mesh`: the whole model (every expert) on rank 0 of the world, which is also
// rank 0 of the first EP group: the model itself without expert parallelism, or a model gathered
// from that group's expert slices (nullptr on the ranks that receive no model).
std::unique_ptr<model::Gemma4> gather_experts(model::Gemma4& model, parallel::DeviceMesh& mesh);

}  // namespace g4::train

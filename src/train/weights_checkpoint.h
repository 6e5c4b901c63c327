// The checkpoint part of the trained weights: a Hugging Face checkpoint (config.json +
// safetensors that transformers loads) and the tokenizer's files, written by rank 0 from the
// optimizer's f32 weights (the fp32 masters, never bf16 copies). Under expert parallelism the
// first EP group gathers its expert slices first, so rank 0 writes every expert. A LoRA run may
// write its adapter alone (adapter/ and lora_base.json naming the frozen base and its fingerprint).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/device_mesh.h"
#include "train/optimizer.h"

namespace g4::train {

class WeightsCheckpoint final : public CheckpointPart {
 public:
  // The optimizer and mesh must outlive the part. tokenizer_path: a tokenizer file or directory
  // whose files are copied into every checkpoint ("" = none). lora_base: a LoRA run's base
  // directory (model.path), which resuming an adapter-only checkpoint checks; adapter_only: the
  // checkpoints of a LoRA model hold its adapter alone. base_fingerprint: lora_base_fingerprint of
  // the base as loaded ("" = computed from the exported weights when needed), for a run whose
  // frozen base is not kept in f32.
  WeightsCheckpoint(Optimizer& optimizer, parallel::DeviceMesh& mesh, std::string tokenizer_path,
                    std::string lora_base = "", bool adapter_only = false, std::string base_fingerprint = "")
      : optimizer_(optimizer),
        mesh_(mesh),
        tokenizer_path_(std::move(tokenizer_path)),
        lora_base_(std::move(lora_base)),
        adapter_only_(adapter_only),
        base_fingerprint_(std::move(base_fingerprint)) {}

  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

 private:
  Optimizer& optimizer_;
  parallel::DeviceMesh& mesh_;
  std::string tokenizer_path_;
  std::string lora_base_;
  bool adapter_only_;
  std::string base_fingerprint_;
  // The base's fingerprint: given, or taken once from the exported weights (the base is frozen).
  std::string base_fingerprint();
  void save_weights(model::Gemma4& weights, const std::filesystem::path& dir, const nlohmann::json& state,
                    bool adapter_only);
};

// A fingerprint of a model's frozen base (every parameter but the LoRA adapters, and the buffers):
// names, shapes and 256 evenly spaced values of each, hashed. A base fine-tuned, merged or initialised otherwise
// differs in it with near certainty; it reads a few values per tensor, so every checkpoint can.
// A parameter the model holds undefined (a GPU run's frozen weight, kept in bf16 on the device)
// is read from `samples`, which its loading recorded (fingerprint_sample of the f32 value).
struct FingerprintSample {
  Shape shape;
  std::vector<float> values;
};
FingerprintSample fingerprint_sample(const Tensor& value);
std::string lora_base_fingerprint(const model::Gemma4& model,
                                  const std::map<std::string, FingerprintSample>& samples = {});

// The fingerprint of the base in a Hugging Face checkpoint directory, streamed tensor by tensor (no
// model in memory): what lora_base_fingerprint gives for the whole model loaded from it. Expert
// parallelism needs it, since each rank holds only its experts' slices.
std::string lora_base_fingerprint_of(const std::string& dir);

// Collective over `ep`: the whole model (every expert, with its LoRA adapters and per-expert
// buffers) from the expert slices the group's ranks hold; `adapters_only`: the adapters and
// buffers alone (the base weights left undefined), for an adapter-only checkpoint.
std::unique_ptr<model::Gemma4> gather_experts(const model::Gemma4& model, parallel::Communicator& ep,
                                              bool adapters_only = false);

// Collective over `mesh`: what rank 0 of the world exports or samples from. Under expert
// parallelism the first EP group (which holds rank 0) gathers the whole model and this returns it
// there; otherwise (and on the other ranks) nullptr: `model` itself is whole.
std::unique_ptr<model::Gemma4> gather_experts_for_rank0(const model::Gemma4& model, parallel::DeviceMesh& mesh,
                                                        bool adapters_only = false);

}  // namespace g4::train

// The optimizer of a training run, one interface over AdamW replicated on every rank and AdamW
// sharded over the data-parallel group (parallel.fsdp), with the fp32-master policy inside it:
//
// - An f32 (or f64) CPU model is its own master: the optimizer updates it in place.
// - A bf16 model (the GPU) computes with bf16 copies; the optimizer keeps their fp32 masters and
//   rewrites the copies after each update. It also keeps an f32 CPU model (`host`) beside it: the
//   weights as built or loaded, which the masters start from (not from their bf16 rounding), and
//   which exports the trained weights (the masters copied in, frozen weights as they were). A run
//   with frozen weights (LoRA, train.freeze) gives the replicated optimizer a host that holds the
//   trainable parameters alone (the others undefined): the frozen weights then live only as their
//   bf16 copies, and an export that needs them converts those to f32 for the time of the export.
//
// A step: forward and backward of every micro-batch; reduce_gradients(); clip_grad_norm(); step().
// The optimizer is also the checkpoint part of the weights' optimizer state (moments, step count).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/gemma4.h"
#include "parallel/device_mesh.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/sharded_adamw.h"

namespace g4::train {

class Optimizer : public CheckpointPart {
 public:
  // After the backward of every micro-batch: sums the gradients over the mesh (collective).
  virtual void reduce_gradients() = 0;
  // The global L2 norm of the trainable gradients (collective); the next step() uses them clipped
  // to max_norm when max_norm > 0.
  virtual double clip_grad_norm(double max_norm) = 0;
  // One update at learning rate lr; the gradients are zero afterwards.
  virtual void step(double lr) = 0;
  // No update: the gradients (e.g. non-finite ones) are dropped and the step count stays.
  virtual void skip_step() = 0;
  virtual int64_t steps_taken() const = 0;

  // The whole parameters, for code that reads them between steps (checkpoints, validation on one
  // rank); release_parameters() frees them again. No-ops unless the optimizer is sharded, whose
  // model otherwise gathers block by block as it runs. Collective over the dp group.
  virtual void gather_parameters() {}
  virtual void release_parameters() {}

  // The trained weights as an f32 (or f64) CPU model: the model itself, or `host` with the
  // masters copied in. Sharded: call gather_parameters() first. Frozen weights a host does not
  // keep are converted from their bf16 copies and held until release_exported().
  virtual model::Gemma4& export_weights() = 0;
  // The same, but frozen weights the host does not keep stay undefined: enough for what reads the
  // trained parameters only (an adapter-only checkpoint).
  virtual model::Gemma4& export_trained() { return export_weights(); }
  // Frees the f32 frozen weights export_weights() converted (a no-op where none were).
  virtual void release_exported() {}
  // Every parameter and buffer from the Hugging Face checkpoint in `dir`, the masters exactly
  // (collective over the dp group when sharded).
  virtual void load_weights(const std::string& dir) = 0;
};

struct OptimizerSetup {
  // The model that trains: f32/f64 on the CPU, or bf16 (any device) with fp32 masters.
  model::Gemma4* model = nullptr;
  // A bf16 model's f32 CPU original (see above), whole or (replicated optimizer only) holding the
  // trainable parameters alone. nullptr: the masters start from the bf16 values and the weights
  // cannot be exported (benchmarks).
  std::unique_ptr<model::Gemma4> host;
  // Parallel layout; nullptr = one rank.
  parallel::DeviceMesh* mesh = nullptr;
  std::vector<std::string> trainable;  // the parameters to update, in order
  AdamWOptions adamw;
  bool sharded = false;  // shard the state over the mesh's dp group (ZeRO-3 / FSDP)
};

std::unique_ptr<Optimizer> make_optimizer(OptimizerSetup setup);

// AdamW with the whole state on every rank (gradients all-reduced over the mesh first), over a
// parameter store of `config`'s shapes holding `experts`: `model`'s, or (tests; model nullptr)
// bf16 compute copies driven with given gradients. `host` and the rest as in OptimizerSetup.
class ReplicatedAdamW final : public Optimizer {
 public:
  ReplicatedAdamW(model::ParamStore& params, io::ModelConfig config, model::ExpertRange experts,
                  std::unique_ptr<model::Gemma4> host, parallel::DeviceMesh* mesh, std::vector<std::string> trainable,
                  AdamWOptions options, model::Gemma4* model = nullptr);

  void reduce_gradients() override;
  double clip_grad_norm(double max_norm) override;
  void step(double lr) override;
  void skip_step() override;
  int64_t steps_taken() const override { return adamw_.steps_taken(); }
  model::Gemma4& export_weights() override;
  model::Gemma4& export_trained() override;
  void release_exported() override;
  void load_weights(const std::string& dir) override;
  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

  const AdamW& adamw() const { return adamw_; }
  // Bytes of f32/f64 values the host model holds (parameters and buffers): the whole model, or
  // the trainable parameters alone when the frozen ones live on the device only.
  int64_t host_bytes() const;

 private:
  // bf16 parameters (any device) or GPU ones train through fp32 masters.
  bool trains_through_masters() const;
  bool on_device() const;
  int64_t rank() const { return mesh_ ? mesh_->world().rank() : 0; }
  int64_t ranks() const { return mesh_ ? mesh_->world().size() : 1; }

  model::ParamStore& params_;
  io::ModelConfig config_;
  model::ExpertRange experts_;
  std::unique_ptr<model::Gemma4> host_;
  // Frozen parameters export_weights() converted into host_ from their copies (release_exported()).
  std::vector<std::string> exported_frozen_;
  // The model whose parameters params_ are, when it is one (export without masters).
  model::Gemma4* model_ = nullptr;
  parallel::DeviceMesh* mesh_;
  AdamW adamw_;
  double grad_scale_ = 1.0;
};

// AdamW with each dp rank holding the masters, gradients and moments of its 1/dp slice of the
// model, gathered block by block as the model runs (train/sharded_adamw.h): an f32 CPU model (its
// own master), or a bf16 model on the mesh's device (the GPU), whose bf16 compute copies are
// gathered from bf16 shards while the f32 masters, gradients and moments stay sharded there.
class ShardedOptimizer final : public Optimizer {
 public:
  // Collective over the mesh, which (like the model) must outlive the optimizer. `host`: a bf16
  // model's f32 CPU original, as in OptimizerSetup (the masters start from it, and the weights
  // export into it); nullptr for an f32 CPU model.
  ShardedOptimizer(model::Gemma4& model, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
                   AdamWOptions options, std::unique_ptr<model::Gemma4> host = nullptr);

  void reduce_gradients() override { adamw_.reduce_gradients(); }
  double clip_grad_norm(double max_norm) override { return adamw_.clip_grad_norm(max_norm); }
  void step(double lr) override;
  void skip_step() override;
  int64_t steps_taken() const override { return adamw_.steps_taken(); }
  void gather_parameters() override { adamw_.gather_parameters(); }
  void release_parameters() override { adamw_.release_parameters(); }
  // With a host model: collective over dp (the masters are all-gathered into it).
  model::Gemma4& export_weights() override;
  void load_weights(const std::string& dir) override;
  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

  ShardedAdamW& adamw() { return adamw_; }

 private:
  model::Gemma4& model_;
  std::unique_ptr<model::Gemma4> host_;
  parallel::DeviceMesh& mesh_;
  ShardedAdamW adamw_;
};

}  // namespace g4::train

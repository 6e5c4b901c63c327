#include "train/optimizer.h"

#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "parallel/data_parallel.h"
#include "train/optimizer_state.h"

namespace g4::train {

namespace fs = std::filesystem;

namespace {

// A GPU optimizer's moments copied to the host (the safetensors writer reads host memory).
std::vector<std::pair<std::string, Tensor>> on_host(std::vector<std::pair<std::string, Tensor>> named) {
  for (auto& [name, t] : named)
    if (t.device() != Device::CPU) t = t.to(Device::CPU);
  return named;
}

}  // namespace

ReplicatedAdamW::ReplicatedAdamW(model::ParamStore& params, io::ModelConfig config, model::ExpertRange experts,
                                 std::unique_ptr<model::Gemma4> host, parallel::DeviceMesh* mesh,
                                 std::vector<std::string> trainable, AdamWOptions options, model::Gemma4* model)
    : params_(params),
      config_(std::move(config)),
      experts_(experts),
      host_(std::move(host)),
      model_(model),
      mesh_(mesh),
      adamw_(params_, std::move(trainable), no_weight_decay(params_, config_), options) {
  // The masters take the f32 values, not their rounding.
  if (host_) adamw_.load_parameters(host_->params());
}

bool ReplicatedAdamW::on_device() const {
  return !params_.order.empty() && params_.at(params_.order.front()).value().device() != Device::CPU;
}

bool ReplicatedAdamW::trains_through_masters() const {
  return on_device() || (!params_.order.empty() && params_.at(params_.order.front()).value().dtype() == DType::BF16);
}

void ReplicatedAdamW::reduce_gradients() {
  if (mesh_ && mesh_->world().size() > 1) parallel::reduce_gradients(params_, *mesh_);
}

double ReplicatedAdamW::clip_grad_norm(double max_norm) {
  parallel::Communicator* ep = mesh_ && mesh_->shape().ep > 1 ? &mesh_->ep_group() : nullptr;
  if (!on_device()) return train::clip_grad_norm(params_, adamw_.trainable(), max_norm, ep);
  // On the GPU the coefficient is applied inside the AdamW update, not by a pass of its own.
  const GradNorm gn = grad_norm_and_scale(params_, adamw_.trainable(), max_norm, ep);
  grad_scale_ = gn.scale;
  return gn.norm;
}

void ReplicatedAdamW::step(double lr) {
  adamw_.step(lr, grad_scale_);
  grad_scale_ = 1.0;
  params_.zero_grad();
}

void ReplicatedAdamW::skip_step() {
  grad_scale_ = 1.0;
  params_.zero_grad();
}

model::Gemma4& ReplicatedAdamW::export_trained() {
  if (!host_) return export_weights();
  adamw_.copy_masters_to(host_->params());
  return *host_;
}

model::Gemma4& ReplicatedAdamW::export_weights() {
  if (host_) {
    adamw_.copy_masters_to(host_->params());
    // Frozen weights kept as bf16 copies only: their f32 values are those copies (exact for a
    // bf16 checkpoint, and what the run computed with in any case), until release_exported().
    for (const std::string& n : host_->params().order) {
      Tensor& v = host_->params().at(n).mutable_value();
      if (v.defined()) continue;
      v = params_.at(n).value().to(Device::CPU).to(host_->dtype());
      exported_frozen_.push_back(n);
    }
    return *host_;
  }
  G4_CHECK(model_ && !trains_through_masters(), "these weights cannot be exported: a model trained through fp32 ",
           "masters needs its f32 host model (OptimizerSetup::host)");
  return *model_;
}

void ReplicatedAdamW::release_exported() {
  for (const std::string& n : exported_frozen_) host_->params().at(n).mutable_value() = Tensor();
  exported_frozen_.clear();
}

int64_t ReplicatedAdamW::host_bytes() const {
  if (!host_) return 0;
  int64_t bytes = 0;
  for (const auto& [n, v] : host_->params().params)
    if (v.value().defined()) bytes += static_cast<int64_t>(v.value().nbytes());
  for (const auto& [n, b] : host_->params().buffers) bytes += static_cast<int64_t>(b.value.nbytes());
  return bytes;
}

void ReplicatedAdamW::load_weights(const std::string& dir) {
  if (!trains_through_masters()) {
    G4_CHECK(model_, "ReplicatedAdamW::load_weights: no model to load into");
    model::load_checkpoint_weights(*model_, dir);
    return;
  }
  // The checkpoint's exact f32 values go into the host model, the masters and (rounded) the copies.
  if (!host_) {
    host_ = std::make_unique<model::Gemma4>(config_, experts_);
    if (model_ && model_->lora()) host_->enable_lora(*model_->lora());
  }
  release_exported();
  // Frozen weights the host does not keep go tensor by tensor straight into their copies.
  model::load_checkpoint_weights(*host_, dir, [this](const std::string& n, const Tensor& value) {
    if (host_->params().at(n).value().defined()) return;
    Tensor& copy = params_.at(n).mutable_value();
    copy.copy_from(value.to(copy.dtype()));
  });
  adamw_.load_parameters(host_->params());
}

void ReplicatedAdamW::save(const fs::path& dir, nlohmann::json& state) {
  state["optimizer_steps"] = adamw_.steps_taken();
  // Under expert parallelism every rank holds the moments of other experts: one file per rank.
  if (mesh_ && mesh_->shape().ep > 1)
    io::save_safetensors((dir / optimizer_shard_name(rank(), ranks())).string(), on_host(adamw_.state()));
  else if (rank() == 0)
    io::save_safetensors((dir / "optimizer.safetensors").string(), on_host(adamw_.state()));
}

void ReplicatedAdamW::load(const fs::path& dir, const nlohmann::json& state) {
  // The moments, whole for replicated parameters and this rank's slices of the experts, from
  // whichever layout was saved (any optimizer's checkpoint).
  const std::string where = trainer_state_path(dir);
  const OptimizerStateReader reader(dir.string(), io::json_int(state, "ranks", where, 1), rank(), ranks());
  std::vector<std::pair<std::string, Tensor>> named;
  for (const std::string& n : adamw_.trainable()) {
    const Shape& shape = params_.at(n).value().shape();
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      Tensor t = model::split_by_expert(params_.kind(n)) ? reader.experts(kind, n, experts_.begin, shape[0])
                                               : reader.replicated(kind, n, 0, shape_numel(shape)).reshape(shape);
      named.emplace_back(std::string(kind) + "." + n, std::move(t));
    }
  }
  adamw_.load_state(named, io::json_int(state, "optimizer_steps", where));
}

namespace {
// The model a sharded optimizer trains: f32/f64 on the CPU (its own masters), or bf16 compute
// copies (the GPU) with their f32 original on the host.
model::Gemma4& check_sharded_model(model::Gemma4& model, const model::Gemma4* host) {
  const bool copies = model.dtype() == DType::BF16;
  G4_CHECK(copies || model.device() == Device::CPU, "the sharded optimizer (parallel.fsdp) trains f32 CPU models ",
           "or bf16 compute copies, not a ", dtype_name(model.dtype()), " GPU model");
  G4_CHECK(!host || copies, "the sharded optimizer takes a host model only for a bf16 model (an f32 CPU model is ",
           "its own master)");
  G4_CHECK(!host || (host->device() == Device::CPU && host->dtype() != DType::BF16),
           "the sharded optimizer's host model must be the f32 CPU original, got a ", dtype_name(host->dtype()),
           host->device() == Device::CPU ? " CPU model" : " GPU model");
  if (host)
    for (const std::string& n : host->params().order)
      G4_CHECK(host->params().at(n).value().defined(), "the sharded optimizer's host model must hold every ",
               "parameter; it has no value for '", n, "'");
  return model;
}
}  // namespace

ShardedOptimizer::ShardedOptimizer(model::Gemma4& model, parallel::DeviceMesh& mesh,
                                   const std::vector<std::string>& trainable, AdamWOptions options,
                                   std::unique_ptr<model::Gemma4> host)
    : model_(check_sharded_model(model, host.get())),
      host_(std::move(host)),
      mesh_(mesh),
      adamw_(model, mesh, trainable, no_weight_decay(model.params(), model.config()), options,
             host_ ? &host_->params() : nullptr) {}

model::Gemma4& ShardedOptimizer::export_weights() {
  if (!host_) {
    G4_CHECK(model_.dtype() != DType::BF16, "these weights cannot be exported: a bf16 model trained through fp32 ",
             "masters needs its f32 host model (OptimizerSetup::host)");
    return model_;
  }
  adamw_.copy_masters_to(host_->params());
  return *host_;
}

void ShardedOptimizer::step(double lr) {
  adamw_.step(lr);
  model_.params().zero_grad();
}

void ShardedOptimizer::skip_step() {
  adamw_.discard_gradients();
  model_.params().zero_grad();
}

void ShardedOptimizer::load_weights(const std::string& dir) {
  adamw_.gather_parameters();  // the weights load into the whole parameters; load() takes the slices
  if (model_.dtype() != DType::BF16) {
    model::load_checkpoint_weights(model_, dir);
    return;
  }
  // bf16 compute copies: the checkpoint's exact f32 values go into the host model, which the
  // masters take their slices from (here and in load()), and rounded into the copies.
  if (!host_) {
    host_ = std::make_unique<model::Gemma4>(model_.config(), model_.experts());
    if (model_.lora()) host_->enable_lora(*model_.lora());
  }
  model::load_checkpoint_weights(*host_, dir);
  load_parameter_values(host_->params(), model_.params());
  adamw_.shards().load_master(host_->params());
  if (adamw_.expert_shards()) adamw_.expert_shards()->load_master(host_->params());
}

void ShardedOptimizer::save(const fs::path& dir, nlohmann::json& state) {
  state["optimizer_steps"] = adamw_.steps_taken();
  const auto tensors = adamw_.checkpoint_tensors();
  if (tensors.empty()) return;  // another rank writes the same slices
  io::save_safetensors((dir / optimizer_shard_name(mesh_.world().rank(), mesh_.world().size())).string(),
                       on_host(tensors), {{kOptimizerMetadataKey, adamw_.checkpoint_metadata()}});
}

void ShardedOptimizer::load(const fs::path& dir, const nlohmann::json& state) {
  const std::string where = trainer_state_path(dir);
  const OptimizerStateReader reader(dir.string(), io::json_int(state, "ranks", where, 1), mesh_.world().rank(),
                                    mesh_.world().size());
  adamw_.load_state(reader, io::json_int(state, "optimizer_steps", where), host_ ? &host_->params() : nullptr);
}

std::unique_ptr<Optimizer> make_optimizer(OptimizerSetup setup) {
  G4_CHECK(setup.model, "make_optimizer: no model");
  G4_CHECK(!setup.sharded || setup.mesh, "make_optimizer: a sharded optimizer needs a device mesh");
  if (setup.sharded)
    return std::make_unique<ShardedOptimizer>(*setup.model, *setup.mesh, setup.trainable, setup.adamw,
                                              std::move(setup.host));
  model::Gemma4& m = *setup.model;
  return std::make_unique<ReplicatedAdamW>(m.params(), m.config(), m.experts(), std::move(setup.host), setup.mesh,
                                           std::move(setup.trainable), setup.adamw, &m);
}

}  // namespace g4::train

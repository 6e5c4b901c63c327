#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>

#include "core/device_memory.h"
#include "io/json_input.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/world.h"
#include "train/checkpoint.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/report.h"
#include "train/sft.h"
#include "train/train_step.h"
#include "train/weights_checkpoint.h"

namespace g4::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A model holding experts `range` of `full` (the other parameters and buffers copied).
std::unique_ptr<model::Gemma4> keep_experts(const model::Gemma4& full, model::ExpertRange range) {
  auto m = std::make_unique<model::Gemma4>(full.config(), range);
  for (const std::string& n : m->params().order) {
    const Tensor& v = full.params().at(n).value();
    m->params().at(n).mutable_value().copy_from(
        model::split_by_expert(m->params().kind(n)) ? v.slice0(range.begin, range.count) : v);
  }
  for (const auto& [n, b] : full.params().buffers)
    if (!model::split_by_expert(b.kind)) m->params().set_buffer(n, b.kind, b.value.clone());
  return m;
}

}  // namespace

io::ModelConfig model_config(const Recipe& r) {
  if (!r.model_path.empty()) return model::load_hf_config(r.model_path);
  io::ModelConfig cfg = io::parse_model_config(model::named_config(r.model_name, r.model_overrides),
                                               "built-in model '" + r.model_name + "'");
  cfg.raw = nlohmann::json();  // exported from the fields, so overrides show up in config.json
  return cfg;
}

std::unique_ptr<model::Gemma4> build_model(const Recipe& r, model::ExpertRange experts) {
  if (!r.model_path.empty()) {
    G4_CHECK(r.model_overrides.empty(), r.source, ": 'model.config' overrides apply to built-in models only");
    return model::load_hf_model(r.model_path, experts);
  }
  auto m = std::make_unique<model::Gemma4>(model_config(r));
  // The whole model is initialised, then sliced, so every EP size starts from the same weights.
  const nlohmann::json cfg_json = model::named_config(r.model_name, r.model_overrides);
  m->init_weights(r.init_seed, io::json_number(cfg_json, "initializer_range", r.source + ": model.config", 0.02));
  if (experts.count == 0 || experts.count == m->config().num_experts) return m;
  return keep_experts(*m, experts);
}

namespace {

// The device mesh of the launched ranks, checked against the recipe's parallel degrees.
std::unique_ptr<parallel::DeviceMesh> make_mesh(const Recipe& r, parallel::Communicator& world) {
  const int64_t ep = r.expert_parallel, cp = r.context_parallel;
  // Each cp rank holds one contiguous slice of every row; rows are padded to a multiple of cp.
  G4_CHECK(r.data.seq_len >= cp, r.source, ": data.seq_len ", r.data.seq_len, " is shorter than ",
           "parallel.context_parallel ", cp, ": every rank of a cp group needs at least one token of each row");
  G4_CHECK(world.size() % (ep * cp) == 0, r.source, ": parallel.expert_parallel is ", ep,
           " and parallel.context_parallel ", cp, " but ", world.size(),
           " ranks were launched (the ranks must split into groups of ", ep, " x ", cp, " = ", ep * cp, ")");
  const int64_t replicas = r.data_parallel > 0 ? r.data_parallel : world.size() / (ep * cp);
  G4_CHECK(replicas * ep * cp == world.size(), r.source, ": parallel.data_parallel is ", replicas,
           ", parallel.expert_parallel ", ep, " and parallel.context_parallel ", cp, ", which needs ",
           replicas * ep * cp, " ranks, but ", world.size(), " were launched");
  return std::make_unique<parallel::DeviceMesh>(
      world, parallel::MeshShape{static_cast<int>(replicas), static_cast<int>(ep), static_cast<int>(cp)});
}

// The parameters the recipe trains: all but those matching a train.freeze pattern.
std::vector<std::string> trainable_names(const model::Gemma4& m, const std::vector<std::string>& freeze) {
  std::vector<std::string> names;
  for (const std::string& n : m.params().order) {
    bool frozen = false;
    // Patterns may name the native or the Hugging Face parameter, or be its kind ("norm", "router", ...).
    const model::ParamKind kind = m.params().kind(n);
    const std::string hf = model::hf_name(m.config(), n);
    for (const std::string& p : freeze)
      frozen = frozen || wildcard_match(p, n) || wildcard_match(p, hf) || p == model::param_kind_name(kind);
    if (!frozen) names.push_back(n);
  }
  return names;
}

// The run's progress as a checkpoint part: steps done, training time, the recipe.
struct Progress final : CheckpointPart {
  int64_t step = 0;
  int64_t skipped_steps = 0;  // steps without an update (non-finite loss or gradient norm)
  double elapsed_s = 0;
  nlohmann::json recipe;
  void save(const fs::path&, nlohmann::json& state) override {
    state["elapsed_s"] = elapsed_s;
    state["skipped_steps"] = skipped_steps;
    state["recipe"] = recipe;
  }
  void load(const fs::path& dir, const nlohmann::json& state) override {
    step = io::json_int(state, "step", trainer_state_path(dir));
    skipped_steps = io::json_int(state, "skipped_steps", trainer_state_path(dir), 0);
    elapsed_s = io::json_number(state, "elapsed_s", trainer_state_path(dir), 0.0);
  }
};

class Trainer {
 public:
  Trainer(const Recipe& r, bool resume);
  TrainResult run();

 private:
  void set_up_model();
  void check_same_data_on_every_rank();
  void set_up_objective_and_optimizer();
  void resume_if_asked(bool resume);
  void after_step(const StepResult& s, double lr, double step_s);
  void check_finite(const StepResult& s);
  TrainResult finish();
  bool main_rank() const { return world_->rank() == 0; }

  const Recipe& r_;
  const Clock::time_point t_start_ = Clock::now();
  std::unique_ptr<parallel::Communicator> world_;
  std::unique_ptr<DirectoryLock> lock_;  // rank 0: this run alone writes r_.output_dir
  std::unique_ptr<parallel::DeviceMesh> mesh_;
  std::unique_ptr<model::Gemma4> model_;
  std::unique_ptr<model::Gemma4> host_;  // a GPU model's f32 original, until the optimizer takes it
  std::unique_ptr<io::Tokenizer> tok_;
  std::unique_ptr<data::PackedDataset> data_;
  std::unique_ptr<SftObjective> objective_;
  std::unique_ptr<Optimizer> opt_;
  std::unique_ptr<WeightsCheckpoint> weights_;
  Progress progress_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  std::optional<MetricsLog> log_;
  std::optional<ProgressBar> bar_;
  TrainResult result_;
  size_t trainable_tensors_ = 0;
  int64_t tokens_per_step_ = 0, first_step_ = 0;
  double train_s_ = 0;  // seconds in steps (validation and checkpoints excluded)
  Clock::time_point t_loop_;
  bool validated_ = false;
};

Trainer::Trainer(const Recipe& r, bool resume) : r_(r) {
  const bool gpu = r.device == Device::CUDA;
  // The recipe refuses the parallel keys with cuda; this catches a plain `mpirun -np N` (or
  // g4 launch -n N) of a cuda recipe, before MPI is started for it.
  const int launched = parallel::detect_launch().size;
  G4_CHECK(!gpu || launched == 1, r.source, ": 'train.device' is cuda but ", launched, " ranks were launched: "
           "multi-GPU training is not supported yet (g4 train runs on one GPU, in one process)");
  // One process per replica (mpirun / srun); a plain launch is one rank.
  world_ = parallel::make_world_communicator();
  if (main_rank()) lock_ = std::make_unique<DirectoryLock>(r.output_dir);
  mesh_ = make_mesh(r, *world_);
  set_up_model();
  tok_ = io::load_tokenizer(r.tokenizer);
  G4_CHECK(tok_->vocab_size() <= model_->config().vocab_size, "tokenizer ", r.tokenizer, " has ", tok_->vocab_size(),
           " tokens but the model's vocabulary is ", model_->config().vocab_size);
  data_ = std::make_unique<data::PackedDataset>(r.data, *tok_);
  G4_CHECK(data_->train_rows() > 0, "the training data (", r.data.files[0], "...) yields no training rows");
  check_same_data_on_every_rank();
  const int64_t parameters = model_->params().numel();  // before a sharded optimizer takes slices
  set_up_objective_and_optimizer();
  resume_if_asked(resume);
  if (main_rank()) log_.emplace((fs::path(r.output_dir) / "metrics.jsonl").string(), progress_.step);
  tokens_per_step_ = r.batch_size * r.grad_accumulation * r.data.seq_len * (world_->size() / mesh_->shape().cp);
  if (main_rank())
    print_plan(r, *model_, parameters, trainable_tensors_, *data_, mesh_->shape(), tokens_per_step_,
               parallel::padded_length(r.data.seq_len, mesh_->shape().cp));
}


// Every rank reads the data files itself and takes its rows of each step by rank; ranks that read
// different bytes (another copy of a file on another node) would train on an inconsistent batch
// without anyone noticing. The ranks compare a fingerprint of the packed rows.
void Trainer::check_same_data_on_every_rank() {
  if (world_->size() == 1) return;
  Tensor mine = Tensor::empty({1}, DType::I64);
  mine.data<int64_t>()[0] = static_cast<int64_t>(data_->fingerprint());
  Tensor all = Tensor::empty({world_->size()}, DType::I64);
  world_->all_gather(mine, all);
  for (int rank = 1; rank < world_->size(); ++rank)
    G4_CHECK(all.data<int64_t>()[rank] == all.data<int64_t>()[0], r_.source, ": rank ", rank,
             " read different training data than rank 0 from data.train (", r_.data.files[0],
             "...): every rank must see the same files (fingerprints ", all.data<int64_t>()[0], " and ",
             all.data<int64_t>()[rank], ")");
}

void Trainer::set_up_model() {
  // Checked before a large model is loaded: positions past the context length were never trained.
  const io::ModelConfig config = model_config(r_);
  const int64_t context = config.max_position_embeddings;  // 0 = not given
  G4_CHECK(context <= 0 || r_.data.seq_len <= context, r_.source, ": data.seq_len ", r_.data.seq_len,
           " exceeds the model's context length (max_position_embeddings ", context, ")");
  model_ = build_model(r_, mesh_->local_experts(config));
  // On the GPU, `host_` keeps the model as built or loaded (CPU, f32) for the optimizer's masters
  // and `model_` becomes its bf16 GPU copy.
  if (r_.device == Device::CUDA) {
    host_ = std::move(model_);
    model_ = host_->copy_to(Device::CUDA, DType::BF16);
  }
  const int64_t padded_len = parallel::padded_length(r_.data.seq_len, mesh_->shape().cp);
  mesh_->validate_for_model(model_->config().enable_moe_block ? model_->config().num_experts : 0, padded_len);
  if (mesh_->shape().ep > 1) parallel::enable_expert_parallel(*model_, mesh_->ep_group());
  if (mesh_->shape().cp > 1) parallel::enable_context_parallel(*model_, mesh_->cp_group());
  model_->set_recompute(r_.recompute);
}

void Trainer::set_up_objective_and_optimizer() {
  SftOptions so;
  so.batch_size = r_.batch_size;
  so.grad_accumulation = r_.grad_accumulation;
  so.router_aux_loss = r_.router_aux_loss;
  so.pad_id = tok_->pad_id;
  if (data_->validation_rows() > 0) so.validation = data_->validation_batches(r_.batch_size, r_.validation_batches);
  objective_ = std::make_unique<SftObjective>(std::make_unique<PackedDataSource>(*data_), std::move(so), *mesh_);
  objective_->configure(*model_);

  OptimizerSetup os;
  os.trainable = trainable_names(host_ ? *host_ : *model_, r_.freeze);
  trainable_tensors_ = os.trainable.size();
  // Frozen weights take no gradient at all: no gradient buffer (4 bytes per parameter on the GPU)
  // and no weight-gradient products; the activations' gradients still flow through them.
  const std::set<std::string> trainable(os.trainable.begin(), os.trainable.end());
  for (const std::string& n : model_->params().order) model_->params().at(n).set_requires_grad(trainable.count(n) > 0);
  os.model = model_.get();
  os.host = std::move(host_);
  os.mesh = mesh_.get();
  os.adamw = {r_.beta1, r_.beta2, r_.eps, r_.weight_decay};
  os.sharded = r_.fsdp;
  opt_ = make_optimizer(std::move(os));

  weights_ = std::make_unique<WeightsCheckpoint>(*opt_, *mesh_, r_.tokenizer);
  progress_.recipe = r_.resolved;
  checkpoints_ = std::make_unique<CheckpointManager>((fs::path(r_.output_dir) / "checkpoints").string(),
                                                     r_.keep_checkpoints, *world_);
  // Weights before the optimizer: its state (a sharded optimizer's master slices) reads them.
  for (CheckpointPart* part : std::initializer_list<CheckpointPart*>{weights_.get(), opt_.get(), objective_.get(),
                                                                     &progress_})
    checkpoints_->add(*part);
}

void Trainer::resume_if_asked(bool resume) {
  if (!resume) return;
  if (const auto from = checkpoints_->resume()) {
    if (main_rank()) std::cerr << "resuming from " << *from << " (step " << progress_.step << ")\n";
  } else if (main_rank()) {
    std::cerr << "no checkpoint in " << checkpoints_->dir() << "; starting from scratch\n";
  }
}

TrainResult Trainer::run() {
  result_.unigram_entropy = data_->unigram_entropy();
  if (main_rank()) bar_.emplace(r_.steps);
  if (r_.device == Device::CUDA) {
    device_synchronize();
    reset_device_memory_peak();  // the training loop's peak, not the loading's
  }
  t_loop_ = Clock::now();
  first_step_ = progress_.step;
  const double elapsed_before = progress_.elapsed_s;
  while (progress_.step < r_.steps) {
    // On the GPU a step's time ends at the host's last wait on it (its metrics and gradient
    // norm); its AdamW update finishes under the next step's clock.
    const auto t0 = Clock::now();
    const std::unique_ptr<StepBatch> batch = objective_->next_batch();
    const double lr = learning_rate(r_.schedule, r_.lr, progress_.step, r_.steps, r_.warmup_steps, r_.min_lr_ratio);
    const StepResult s = train_step(*model_, *objective_, *opt_, *batch, lr, r_.grad_clip, *world_);
    ++progress_.step;
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    train_s_ += step_s;
    progress_.elapsed_s = elapsed_before + std::chrono::duration<double>(Clock::now() - t_loop_).count();
    after_step(s, lr, step_s);
  }
  return finish();
}

// Logging, validation and checkpoints after each step, as the recipe asks.
void Trainer::after_step(const StepResult& s, double lr, double step_s) {
  check_finite(s);
  const int64_t step = progress_.step;
  const double loss = s.metrics.at("loss");
  result_.last_train_loss = loss;
  if (step % r_.log_every == 0 || step == r_.steps) {
    const double tps = static_cast<double>(tokens_per_step_) / step_s;
    const double loop_s = std::chrono::duration<double>(Clock::now() - t_loop_).count();
    const double eta = loop_s / static_cast<double>(step - first_step_) * static_cast<double>(r_.steps - step);
    nlohmann::json rec = {{"step", step},         {"lr", lr},         {"grad_norm", s.grad_norm},
                          {"tokens", step * tokens_per_step_}, {"tokens_per_s", tps}, {"step_s", step_s}};
    for (const auto& [name, value] : s.metrics) rec[name] = value;
    if (progress_.skipped_steps > 0) rec["skipped_steps"] = progress_.skipped_steps;
    if (r_.device == Device::CUDA) rec["device_peak_mib"] = static_cast<double>(device_memory_stats().peak) / (1 << 20);
    if (!s.expert_tokens.empty()) add_expert_load(rec, s.expert_tokens, *model_, *world_);
    if (main_rank()) {
      log_->write(rec);
      bar_->update(step, loss, lr, s.grad_norm, tps, eta);
    }
  }
  if (r_.validation_every > 0 && (step % r_.validation_every == 0 || step == r_.steps)) {
    opt_->release_parameters();
    const Metrics v = objective_->validate(*model_);
    if (!v.empty()) {
      validated_ = true;
      result_.last_validation_loss = v.at("validation_loss");
      nlohmann::json rec = {{"step", step}};
      for (const auto& [name, value] : v) rec[name] = value;
      if (main_rank()) log_->write(rec);
    }
  }
  maybe_fault("step", step);
  if (step == r_.steps || (r_.checkpoint_every > 0 && step % r_.checkpoint_every == 0)) {
    result_.checkpoint = checkpoints_->save(step);
  }
}

// A step whose loss or gradient norm is NaN or infinite updated nothing (train_step); the run
// stops there, or counts it and goes on when the recipe says so. Either way no checkpoint holds
// weights such a step produced.
void Trainer::check_finite(const StepResult& s) {
  if (s.finite) return;
  if (r_.skip_nonfinite_steps) {
    ++progress_.skipped_steps;
    if (main_rank()) std::cerr << "step " << progress_.step << ": skipped (non-finite loss or gradient norm)\n";
    return;
  }
  std::string what;
  for (const auto& [name, value] : s.metrics)
    if (!std::isfinite(value)) what += name + " " + std::to_string(value) + ", ";
  if (!std::isfinite(s.grad_norm)) what += "gradient norm " + std::to_string(s.grad_norm) + ", ";
  const auto last = checkpoints_->latest();
  G4_FAIL(r_.source, ": step ", progress_.step, " has a non-finite ", what.substr(0, what.size() - 2),
          "; stopped before its update. The newest checkpoint (", last ? *last : std::string("none"),
          ") is intact. Lower optimizer.lr or raise schedule.warmup_steps, or set train.skip_nonfinite_steps: true "
          "to skip such steps");
}

TrainResult Trainer::finish() {
  result_.steps = progress_.step;
  const int64_t steps_this_run = progress_.step - first_step_;
  result_.tokens_per_s = train_s_ > 0 ? static_cast<double>(steps_this_run * tokens_per_step_) / train_s_ : 0.0;
  if (r_.device == Device::CUDA) result_.device_peak_bytes = device_memory_stats().peak;
  // Validation for the summary when the loop logged none (every rank takes part).
  if (!validated_) {
    opt_->release_parameters();
    const Metrics v = objective_->validate(*model_);
    if (!v.empty()) result_.last_validation_loss = v.at("validation_loss");
  }
  // Samples come from the exported f32 weights (the generator reads f32 logits on the host), on
  // rank 0, which under EP its EP group first gathers the whole model for. Every rank knows
  // r_.samples, so all take part in the gathers or none.
  model::Gemma4* sampler = nullptr;
  std::unique_ptr<model::Gemma4> whole;
  if (r_.samples > 0) {
    opt_->gather_parameters();
    sampler = &opt_->export_weights();
    whole = gather_experts_for_rank0(*sampler, *mesh_);
    if (whole) sampler = whole.get();
  }
  if (!main_rank()) return result_;
  bar_->finish();
  SummaryFacts facts;
  facts.svg_path = write_loss_picture(r_.output_dir, log_->read_all());
  facts.total_s = std::chrono::duration<double>(Clock::now() - t_start_).count();
  facts.steps_this_run = steps_this_run;
  facts.tokens_per_step = tokens_per_step_;
  facts.has_validation = data_->validation_rows() > 0;
  facts.metrics_path = log_->path();
  print_summary(r_, result_, facts);
  if (sampler) {
    sampler->set_context_attention(nullptr);  // whole sequences on this rank
    std::printf("samples:\n%s", render_samples(*sampler, *tok_, r_).c_str());
  }
  std::fflush(stdout);
  return result_;
}

}  // namespace

TrainResult run_training(const Recipe& r, bool resume) { return Trainer(r, resume).run(); }

}  // namespace g4::train

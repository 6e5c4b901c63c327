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
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/report.h"
#include "train/run_setup.h"
#include "train/sft.h"
#include "train/train_step.h"

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
  std::set<std::string> read;
  io::ModelConfig cfg = io::parse_model_config(model::named_config(r.model_name, r.model_overrides),
                                               "built-in model '" + r.model_name + "'", &read);
  read.insert("initializer_range");  // read by build_model
  // A key g4 does not read would change nothing (a misspelling, or a setting of another model).
  for (const auto& [key, value] : r.model_overrides.items())
    G4_CHECK(read.count(key), r.source, ": 'model.config' key '", key, "' is not a Gemma 4 text config key g4 reads");
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

class Trainer {
 public:
  Trainer(const Recipe& r, bool resume, const ObjectiveFactory& custom);
  TrainResult run();

 private:
  void check_same_data_on_every_rank();
  void set_up_objective();
  void after_step(const StepResult& s, double lr, double step_s);
  TrainResult finish();
  bool main_rank() const { return p_.main_rank(); }

  const Recipe& r_;
  const Clock::time_point t_start_ = Clock::now();
  RunParts p_;
  std::unique_ptr<data::PackedDataset> data_;
  std::unique_ptr<Objective> objective_;
  std::optional<MetricsLog> log_;
  std::optional<ProgressBar> bar_;
  TrainResult result_;
  int64_t tokens_per_step_ = 0, first_step_ = 0;
  bool has_validation_ = false;
  double train_s_ = 0;  // seconds in steps (validation and checkpoints excluded)
  Clock::time_point t_loop_;
  bool validated_ = false;
};

Trainer::Trainer(const Recipe& r, bool resume, const ObjectiveFactory& custom) : r_(r), p_(r, r.data.seq_len, resume) {
  std::string data_lines;
  if (custom) {
    CustomObjective c = custom(r, *p_.tok, *p_.mesh);
    objective_ = std::move(c.objective);
    data_lines = std::move(c.data_lines);
    tokens_per_step_ = c.tokens_per_step;
    result_.unigram_entropy = c.unigram_entropy;
    has_validation_ = c.has_validation;
  } else {
    data::DataOptions d = r.data;
    d.image_processor = data_image_processor(r.model_path, p_.model->config());
    d.video_processor = data_video_processor(r.model_path, p_.model->config());
    data_ = std::make_unique<data::PackedDataset>(d, *p_.tok);
    check_multimodal_data(r, p_.model->config(), *p_.tok, data_->images() > 0,
                          data_->audio_clips() > 0, data_->videos() > 0);
    G4_CHECK(data_->train_rows() > 0, "the training data (", r.data.files[0], "...) yields no training rows");
    check_same_data_on_every_rank();
    set_up_objective();
    data_lines = describe_data(*data_, r.data.seq_len, r.data.validation_fraction);
    tokens_per_step_ = r.batch_size * r.grad_accumulation * r.data.seq_len * (p_.world->size() / p_.mesh->shape().cp);
    result_.unigram_entropy = data_->unigram_entropy();
    has_validation_ = data_->validation_rows() > 0;
  }
  objective_->configure(*p_.model);
  p_.set_up_training(*objective_);
  // The resumed checkpoint stands as the run's last until this run writes one (a finished run
  // resumed trains nothing and writes none).
  if (const auto from = p_.resume_if_asked(resume)) result_.checkpoint = *from;
  if (main_rank()) log_.emplace((fs::path(r.output_dir) / "metrics.jsonl").string(), p_.progress.step);
  if (main_rank())
    print_plan(r, *p_.model, p_.parameters, p_.trainable_tensors, data_lines, p_.mesh->shape(), tokens_per_step_,
               parallel::padded_length(r.data.seq_len, p_.mesh->shape().cp));
}

// Every rank reads the data files itself and takes its rows of each step by rank; ranks that read
// different bytes (another copy of a file on another node) would train on an inconsistent batch
// without anyone noticing. The ranks compare a fingerprint of the packed rows.
void Trainer::check_same_data_on_every_rank() {
  parallel::Communicator& world = *p_.world;
  if (world.size() == 1) return;
  Tensor mine = Tensor::empty({1}, DType::I64);
  mine.data<int64_t>()[0] = static_cast<int64_t>(data_->fingerprint());
  Tensor all = Tensor::empty({world.size()}, DType::I64);
  parallel::all_gather_values(world, mine, all);
  for (int rank = 1; rank < world.size(); ++rank)
    G4_CHECK(all.data<int64_t>()[rank] == all.data<int64_t>()[0], r_.source, ": rank ", rank,
             " read different training data than rank 0 from data.train (", r_.data.files[0],
             "...): every rank must see the same files (fingerprints ", all.data<int64_t>()[0], " and ",
             all.data<int64_t>()[rank], ")");
}

void Trainer::set_up_objective() {
  SftOptions so;
  so.batch_size = r_.batch_size;
  so.grad_accumulation = r_.grad_accumulation;
  so.router_aux_loss = r_.router_aux_loss;
  so.pad_id = p_.tok->pad_id;
  if (data_->validation_rows() > 0) so.validation = data_->validation_batches(r_.batch_size, r_.validation_batches);
  objective_ = std::make_unique<SftObjective>(std::make_unique<PackedDataSource>(*data_), std::move(so), *p_.mesh);
}

TrainResult Trainer::run() {
  if (main_rank()) bar_.emplace(r_.steps);
  if (r_.device == Device::CUDA) {
    device_synchronize();
    reset_device_memory_peak();  // the training loop's peak, not the loading's
  }
  t_loop_ = Clock::now();
  first_step_ = p_.progress.step;
  const double elapsed_before = p_.progress.elapsed_s;
  while (p_.progress.step < r_.steps) {
    // On the GPU a step's time ends at the host's last wait on it (its metrics and gradient
    // norm); its AdamW update finishes under the next step's clock.
    const auto t0 = Clock::now();
    const std::unique_ptr<StepBatch> batch = objective_->next_batch();
    const double lr = learning_rate(r_.schedule, r_.lr, p_.progress.step, r_.steps, r_.warmup_steps, r_.min_lr_ratio);
    const StepResult s = train_step(*p_.model, *objective_, *p_.opt, *batch, lr, r_.grad_clip, *p_.world);
    ++p_.progress.step;
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    train_s_ += step_s;
    p_.progress.elapsed_s = elapsed_before + std::chrono::duration<double>(Clock::now() - t_loop_).count();
    after_step(s, lr, step_s);
  }
  return finish();
}

// Logging, validation and checkpoints after each step, as the recipe asks.
void Trainer::after_step(const StepResult& s, double lr, double step_s) {
  p_.check_finite(s);
  const int64_t step = p_.progress.step;
  const double loss = s.metrics.at("loss");
  result_.last_train_loss = loss;
  if (step % r_.log_every == 0 || step == r_.steps) {
    const double tps = static_cast<double>(tokens_per_step_) / step_s;
    const double loop_s = std::chrono::duration<double>(Clock::now() - t_loop_).count();
    const double eta = loop_s / static_cast<double>(step - first_step_) * static_cast<double>(r_.steps - step);
    nlohmann::json rec = {{"step", step},         {"lr", lr},         {"grad_norm", s.grad_norm},
                          {"tokens", step * tokens_per_step_}, {"tokens_per_s", tps}, {"step_s", step_s}};
    for (const auto& [name, value] : s.metrics) rec[name] = value;
    if (p_.progress.skipped_steps > 0) rec["skipped_steps"] = p_.progress.skipped_steps;
    if (r_.device == Device::CUDA) rec["device_peak_mib"] = static_cast<double>(device_memory_stats().peak) / (1 << 20);
    if (!s.expert_tokens.empty()) add_expert_load(rec, s.expert_tokens, *p_.model, *p_.world);
    if (main_rank()) {
      log_->write(rec);
      bar_->update(step, loss, lr, s.grad_norm, tps, eta);
    }
  }
  if (r_.validation_every > 0 && (step % r_.validation_every == 0 || step == r_.steps)) {
    parameters_for(*objective_, *p_.opt);
    const Metrics v = objective_->validate(*p_.model);
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
    result_.checkpoint = p_.checkpoints->save(step);
  }
}

TrainResult Trainer::finish() {
  result_.steps = p_.progress.step;
  const int64_t steps_this_run = p_.progress.step - first_step_;
  result_.tokens_per_s = train_s_ > 0 ? static_cast<double>(steps_this_run * tokens_per_step_) / train_s_ : 0.0;
  if (r_.device == Device::CUDA) result_.device_peak_bytes = device_memory_stats().peak;
  // Validation for the summary when the loop logged none (every rank takes part).
  if (!validated_) {
    parameters_for(*objective_, *p_.opt);
    const Metrics v = objective_->validate(*p_.model);
    if (!v.empty()) result_.last_validation_loss = v.at("validation_loss");
  }
  // Samples are written by rank 0. A GPU model that is whole on every rank (no parallel.fsdp, no
  // expert parallelism) samples itself: its bf16 copy is the trained model, and the engine runs on
  // the GPU; exporting it would build the whole model in f32 on the host, and with a frozen base
  // (LoRA, train.freeze) convert that base too (about 104 GB for 26B-A4B). Otherwise samples come
  // from the exported f32 weights, which under EP the EP group first gathers on rank 0. Every rank
  // knows r_.samples, so all take part in the gathers or none.
  model::Gemma4* sampler = nullptr;
  std::unique_ptr<model::Gemma4> whole;
  // Text samples are the autoregressive generator's: SFT runs only.
  if (r_.samples > 0 && data_) {
    if (r_.device == Device::CUDA && !r_.fsdp && r_.expert_parallel == 1) {
      sampler = p_.model.get();
    } else {
      p_.opt->gather_parameters();
      sampler = &p_.opt->export_weights();
      whole = gather_experts_for_rank0(*sampler, *p_.mesh);
      if (whole) sampler = whole.get();
    }
  }
  if (!main_rank()) return result_;
  bar_->finish();
  SummaryFacts facts;
  const std::vector<nlohmann::json> records = log_->read_all();
  // A resumed run that trained no step reports the last train loss its log holds, not 0.
  if (steps_this_run == 0)
    for (const nlohmann::json& rec : records)
      if (rec.contains("loss") && rec["loss"].is_number()) result_.last_train_loss = rec["loss"].get<double>();
  facts.svg_path = write_loss_picture(r_.output_dir, records);
  facts.total_s = std::chrono::duration<double>(Clock::now() - t_start_).count();
  facts.steps_this_run = steps_this_run;
  facts.tokens_per_step = tokens_per_step_;
  facts.has_validation = has_validation_;
  facts.metrics_path = log_->path();
  print_summary(r_, result_, facts);
  if (sampler) {
    sampler->set_context_attention(nullptr);  // whole sequences on this rank
    std::printf("samples:\n%s", render_samples(*sampler, *p_.tok, r_).c_str());
  }
  std::fflush(stdout);
  return result_;
}

}  // namespace

TrainResult run_training(const Recipe& r, bool resume, const ObjectiveFactory& custom) {
  // Before the weights load. SFT would train a diffusion checkpoint's encoder alone as a causal LM
  // and save it as a diffusion model whose denoiser never saw the step.
  if (!custom)
    G4_CHECK(!model_config(r).diffusion, r.source, ": ", r.model_path.empty() ? r.model_name : r.model_path,
             " is a diffusion_gemma checkpoint: train it with a block-diffusion recipe (a dllm section, ",
             "docs/diffusion.md); this recipe has none");
  return Trainer(r, resume, custom).run();
}

}  // namespace g4::train

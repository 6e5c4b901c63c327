#include "rl/rl_trainer.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include "core/clock.h"
#include "core/device_memory.h"
#include "rl/grpo.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/run_setup.h"
#include "train/train_step.h"

namespace g4::rl {

namespace {

namespace fs = std::filesystem;

// reward.svg: the training reward per step and the validation accuracy, from every record of the
// metrics log (a resumed run's earlier records included).
void write_reward_picture(const std::string& dir, const std::vector<nlohmann::json>& log) {
  std::vector<train::CurvePoint> reward, validation;
  // A value JSON cannot hold (NaN, inf) was written as null: it has no point on the curve.
  const auto number = [](const nlohmann::json& rec, const char* key) {
    return rec.contains(key) && rec[key].is_number() && rec.contains("step") && rec["step"].is_number();
  };
  for (const nlohmann::json& rec : log) {
    if (number(rec, "reward")) reward.push_back({rec["step"].get<double>(), rec["reward"].get<double>()});
    if (number(rec, "validation_accuracy"))
      validation.push_back({rec["step"].get<double>(), rec["validation_accuracy"].get<double>()});
  }
  train::write_loss_svg((fs::path(dir) / "reward.svg").string(), reward, validation,
                        "g4 rl: training reward and validation accuracy");
}

class RlTrainer {
 public:
  RlTrainer(const train::Recipe& r, const RlRunOptions& options);
  RlResult run();

 private:
  void print_plan() const;
  void validate();
  bool main_rank() const { return p_.main_rank(); }

  const train::Recipe& r_;
  const RlRunOptions options_;
  train::RunParts p_;
  std::unique_ptr<GrpoObjective> objective_;
  std::optional<train::MetricsLog> log_;
  RlResult result_;
};

RlTrainer::RlTrainer(const train::Recipe& r, const RlRunOptions& options) : r_(r), options_(options), p_(r, 0, options.resume) {
  G4_CHECK(r.command == train::Command::kRl, r.source, ": the recipe was read for g4 ", train::command_name(r.command));
  // The frozen reference of the KL term: the initial policy, in the policy's dtype and device. With
  // LoRA that is the frozen base, which the policy computes with its adapters bypassed: no copy.
  std::unique_ptr<model::Gemma4> reference;
  if (r.rl.kl_penalty > 0 && r.lora.rank == 0) reference = p_.model->copy_to(p_.model->device(), p_.model->dtype());
  objective_ = std::make_unique<GrpoObjective>(r, *p_.tok, p_.model->config(), *p_.mesh, std::move(reference));
  p_.set_up_training(*objective_);
  objective_->set_parameter_hooks([this] { p_.opt->gather_parameters(); }, [this] { p_.opt->release_parameters(); });
  p_.resume_if_asked(options.resume);
  if (main_rank()) log_.emplace((fs::path(r.output_dir) / "metrics.jsonl").string(), p_.progress.step);
  if (main_rank()) print_plan();
}

void RlTrainer::print_plan() const {
  const train::RlSettings& rl = r_.rl;
  const model::Gemma4& m = *p_.model;
  std::printf("model      %s: %lld parameters, %zu trainable tensors, %s %s\n",
              r_.model_path.empty() ? r_.model_name.c_str() : r_.model_path.c_str(),
              static_cast<long long>(p_.parameters), p_.trainable_tensors,
              m.device() == Device::CUDA ? "cuda" : "cpu", dtype_name(m.dtype()));
  const std::string source = rl.task.empty() ? rl.prompts_train + " (" + std::to_string(objective_->prompts().size()) +
                                                   " prompts)"
                                             : "built-in task " + rl.task + " (difficulty " +
                                                   std::to_string(rl.task_difficulty) + ")";
  std::printf("prompts    %s; %zu validation prompts x %lld samples; %lld skipped as longer than %lld tokens\n",
              source.c_str(), objective_->prompts().validation().size(),
              static_cast<long long>(rl.val_samples_per_prompt),
              static_cast<long long>(objective_->prompts().skipped_too_long()),
              static_cast<long long>(rl.max_input_seq_length));
  std::printf("step       %lld prompts x %lld samples%s, up to %lld new tokens at temperature %g; reward %s\n",
              static_cast<long long>(rl.prompts_per_step), static_cast<long long>(rl.generations_per_prompt),
              rl.dynamic_sampling ? " (dynamic sampling)" : "", static_cast<long long>(rl.max_new_tokens),
              rl.temperature, rl.reward.c_str());
  char dual[48] = "";
  if (rl.ratio_clip_c > 0) std::snprintf(dual, sizeof dual, ", dual clip %g", rl.ratio_clip_c);
  std::printf("loss       clip [%g, %g]%s, importance correction %s (%s), KL %g, %s-level; %lld steps, lr %g, "
              "%d rank(s)\n",
              1 - rl.ratio_clip_min, 1 + rl.ratio_clip_max, dual,
              rl.importance_sampling_correction ? "on" : "off", rl.truncation.c_str(), rl.kl_penalty,
              rl.token_level_loss ? "token" : "sequence", static_cast<long long>(r_.steps), r_.lr, p_.world->size());
  std::fflush(stdout);
}

void RlTrainer::validate() {
  const train::Metrics v = objective_->validate(*p_.model);
  if (v.empty()) return;
  const double acc = v.at("validation_accuracy");
  if (result_.first_validation_accuracy < 0) result_.first_validation_accuracy = acc;
  result_.last_validation_accuracy = acc;
  nlohmann::json rec = {{"step", p_.progress.step}};
  for (const auto& [name, value] : v) rec[name] = value;
  if (main_rank()) {
    log_->write(rec);
    std::fprintf(stderr, "step %lld: validation accuracy %.4f (avg@%lld over %zu prompts)\n",
                 static_cast<long long>(p_.progress.step), acc, static_cast<long long>(r_.rl.val_samples_per_prompt),
                 objective_->prompts().validation().size());
  }
}

RlResult RlTrainer::run() {
  const bool validating = r_.validation_every > 0 && !objective_->prompts().validation().empty();
  // The accuracy before any update, the baseline the run is judged against.
  if (validating && p_.progress.step == 0) validate();
  while (p_.progress.step < r_.steps) {
    const auto t0 = Clock::now();
    const StepStats prep = objective_->prepare_step(*p_.model);
    const double lr = train::learning_rate(r_.schedule, r_.lr, p_.progress.step, r_.steps, r_.warmup_steps,
                                           r_.min_lr_ratio);
    // One optimizer step per global batch; the schedule advances once per GRPO step (as NeMo-RL's).
    const auto t_train = Clock::now();
    train::Metrics loss_metrics;
    double grad_norm = 0;
    for (int64_t g = 0; g < prep.global_batches; ++g) {
      const std::unique_ptr<train::StepBatch> batch = objective_->next_batch();
      const train::StepResult s = train::train_step(*p_.model, *objective_, *p_.opt, *batch, lr, r_.grad_clip, *p_.world);
      p_.check_finite(s);
      for (const auto& [name, value] : s.metrics) loss_metrics[name] += value / static_cast<double>(prep.global_batches);
      grad_norm += s.grad_norm / static_cast<double>(prep.global_batches);
    }
    if (r_.device == Device::CUDA) device_synchronize();
    const double train_s = seconds_since(t_train);
    ++p_.progress.step;
    const double step_s = seconds_since(t0);
    p_.progress.elapsed_s += step_s;
    result_.last_reward = prep.metrics.at("reward");
    const int64_t step = p_.progress.step;
    if (step % r_.log_every == 0 || step == r_.steps) {
      nlohmann::json rec = {{"step", step}, {"lr", lr}, {"grad_norm", grad_norm}, {"step_s", step_s},
                            {"training_s", train_s}, {"optimizer_steps", prep.global_batches}};
      for (const auto& [name, value] : prep.metrics) rec[name] = value;
      for (const auto& [name, value] : loss_metrics) rec[name] = value;
      const double tokens = prep.metrics.at("training_tokens");
      rec["training_tokens_per_s"] = train_s > 0 ? tokens / train_s : 0.0;
      const double gen_s = prep.metrics.at("generation_s"), lp_s = prep.metrics.at("logprobs_s");
      rec["other_s"] = std::max(0.0, step_s - gen_s - lp_s - train_s);
      if (p_.progress.skipped_steps > 0) rec["skipped_steps"] = p_.progress.skipped_steps;
      if (r_.device == Device::CUDA) rec["device_peak_mib"] = static_cast<double>(device_memory_stats().peak) / (1 << 20);
      result_.last_step = rec;
      if (main_rank()) {
        log_->write(rec);
        const auto tmpe = prep.metrics.find("token_mult_prob_error_median");
        std::fprintf(stderr,
                     "step %lld/%lld  reward %+.3f  accuracy %.3f  trained %.0f/%.0f samples  length %.1f  "
                     "tmpe median %.5f max %.4f  gen %.1fs  logprobs %.1fs  train %.1fs\n",
                     static_cast<long long>(step), static_cast<long long>(r_.steps), prep.metrics.at("reward"),
                     prep.metrics.at("accuracy"), prep.metrics.at("samples_trained"), prep.metrics.at("samples_generated"),
                     prep.metrics.at("response_length_mean"),
                     tmpe == prep.metrics.end() ? 1.0 : tmpe->second,
                     tmpe == prep.metrics.end() ? 1.0 : prep.metrics.at("token_mult_prob_error_max"), gen_s, lp_s,
                     train_s);
        if (prep.metrics.at("groups_with_spread") == 0)
          std::fprintf(stderr,
                       "step %lld: no reward spread: every prompt's samples scored alike, so every advantage is 0 "
                       "and the policy-gradient term is 0 (only a KL penalty or weight decay moved the weights); "
                       "grpo.use_dynamic_sampling skips such groups\n",
                       static_cast<long long>(step));
      }
    }
    if (validating && (step % r_.validation_every == 0 || step == r_.steps)) validate();
    train::maybe_fault("step", step);
    if ((step == r_.steps && options_.final_checkpoint) || (r_.checkpoint_every > 0 && step % r_.checkpoint_every == 0)) {
      result_.checkpoint = p_.checkpoints->save(step);
    }
  }
  result_.steps = p_.progress.step;
  if (main_rank()) {
    write_reward_picture(r_.output_dir, log_->read_all());
    std::printf("\n== summary ==\nsteps                %lld\nlast reward          %.4f\n",
                static_cast<long long>(result_.steps), result_.last_reward);
    if (result_.last_validation_accuracy >= 0)
      std::printf("validation accuracy  %.4f (first %.4f)\n", result_.last_validation_accuracy,
                  result_.first_validation_accuracy);
    std::printf("metrics              %s, %s\ncheckpoint           %s\n", log_->path().c_str(),
                (fs::path(r_.output_dir) / "reward.svg").string().c_str(), result_.checkpoint.c_str());
    std::fflush(stdout);
  }
  return result_;
}

}  // namespace

RlResult run_rl(const train::Recipe& recipe, const RlRunOptions& options) { return RlTrainer(recipe, options).run(); }

}  // namespace g4::rl

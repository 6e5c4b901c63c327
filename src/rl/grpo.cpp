#include "rl/grpo.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "autograd/functions.h"
#include "core/clock.h"
#include "core/error.h"
#include "io/json_input.h"
#include "parallel/gpu_world.h"
#include "train/checkpoint.h"

namespace g4::rl {

namespace {

// Validation draws use their own seeds (negative draw positions), the same at every validation,
// so accuracies of different steps are comparable.
constexpr uint64_t kValidationSeedSalt = 0x5851f42d4c957f2dull;

LossConfig loss_config(const train::RlSettings& rl) {
  LossConfig c;
  c.ratio_clip_min = rl.ratio_clip_min;
  c.ratio_clip_max = rl.ratio_clip_max;
  if (rl.ratio_clip_c > 0) c.ratio_clip_c = rl.ratio_clip_c;
  c.kl_penalty = rl.kl_penalty;
  c.kl_type = rl.kl_type == "k1" ? KlType::kK1 : rl.kl_type == "k2" ? KlType::kK2 : KlType::kK3;
  c.kl_input_clamp = rl.kl_input_clamp;
  c.kl_output_clamp = rl.kl_output_clamp;
  c.on_policy_kl_approximation = rl.on_policy_kl_approximation;
  c.importance_sampling_correction = rl.importance_sampling_correction;
  c.truncation = rl.truncation == "tis"            ? Truncation::kTis
                 : rl.truncation == "icepop"       ? Truncation::kIcepop
                 : rl.truncation == "seq-mask-tis" ? Truncation::kSeqMaskTis
                                                   : Truncation::kNone;
  c.truncation_ratio = rl.truncation_ratio;
  c.truncation_ratio_min = rl.truncation_ratio_min;
  c.token_level_loss = rl.token_level_loss;
  return c;
}

RolloutOptions rollout_options(const train::RlSettings& rl) {
  RolloutOptions o;
  o.temperature = rl.temperature;
  o.top_p = rl.top_p;
  o.top_k = rl.top_k;
  o.max_new_tokens = rl.max_new_tokens;
  o.max_total_len = rl.max_total_sequence_length;
  o.stop_strings = rl.stop_strings;
  o.page_size = rl.page_size;
  o.max_running = rl.max_running;
  // Ranks sharing one GPU build their engines at the same moment, each sizing its pages from the
  // same free memory: each takes its share of the fraction.
  o.memory_fraction = rl.memory_fraction / parallel::ranks_on_this_gpu();
  o.seed = rl.seed;
  return o;
}

RewardOptions reward_options(const train::RlSettings& rl) {
  RewardOptions o;
  o.kind = rl.reward;
  o.pattern = rl.reward_pattern;
  o.command = rl.reward_command;
  o.timeout_s = rl.reward_timeout_s;
  return o;
}

// A kept rollout with what the loss needs of it.
struct Sample {
  Rollout rollout;
  double reward = 0;  // scaled and shaped
  double advantage = 0;
};

// One micro-batch: several whole sequences packed into one row (positions restart at each), and
// the loss inputs of every position of the row. Position t's target is token t + 1; it is trained
// (token_mask 1) when that token is a response token of the same sequence.
struct PackedRow {
  model::ForwardInputs inputs;
  LossTokens tokens;
};

struct GlobalBatch final : train::StepBatch {
  std::vector<PackedRow> rows;  // this rank's
  Normalizers norm;
  int64_t micro_batches() const override { return static_cast<int64_t>(rows.size()); }
};

// Packs `samples` (in order) into rows of at most `budget` tokens (a longer sequence gets a row
// of its own), whose forward returns the targets' log-probs at `temperature`.
std::vector<PackedRow> pack(const std::vector<const Sample*>& samples, int64_t budget, double temperature) {
  std::vector<std::vector<const Sample*>> groups;
  int64_t used = 0;
  for (const Sample* s : samples) {
    const int64_t len = static_cast<int64_t>(s->rollout.prompt_ids.size() + s->rollout.response_ids.size());
    if (groups.empty() || used + len > budget) {
      groups.emplace_back();
      used = 0;
    }
    groups.back().push_back(s);
    used += len;
  }
  std::vector<PackedRow> rows;
  for (const auto& g : groups) {
    std::vector<int64_t> ids, pos, labels;
    PackedRow row;
    LossTokens& t = row.tokens;
    for (size_t q = 0; q < g.size(); ++q) {
      const Rollout& r = g[q]->rollout;
      const size_t start = ids.size();
      for (int64_t id : r.prompt_ids) {
        ids.push_back(id);
        labels.push_back(-100);
      }
      for (int64_t id : r.response_ids) {
        ids.push_back(id);
        labels.push_back(id);
      }
      for (size_t j = start; j < ids.size(); ++j) pos.push_back(static_cast<int64_t>(j - start));
      // Loss positions of this sequence: position j predicts token j + 1.
      const size_t prompt_len = r.prompt_ids.size();
      for (size_t j = start; j < ids.size(); ++j) {
        const size_t next = j + 1 - start;  // index within the sequence of the predicted token
        const bool trained = next >= prompt_len && next < prompt_len + r.response_ids.size();
        t.seq.push_back(static_cast<int64_t>(q));
        t.token_mask.push_back(trained ? 1.0 : 0.0);
        t.lp_gen.push_back(trained ? r.gen_logprobs[next - prompt_len] : 0.0);
        t.advantage.push_back(g[q]->advantage);
      }
      t.sample_mask.push_back(1.0);
    }
    const int64_t L = static_cast<int64_t>(ids.size());
    row.inputs.input_ids = Tensor::from_vector(ids, {1, L});
    row.inputs.position_ids = Tensor::from_vector(pos, {1, L});
    row.inputs.labels = Tensor::from_vector(labels, {1, L});
    row.inputs.return_logits = false;
    row.inputs.return_token_logprobs = true;
    row.inputs.logprob_temperature = temperature;
    rows.push_back(std::move(row));
  }
  return rows;
}

// A row with nothing to train: a rank with fewer rows than its peers runs these so that every rank
// runs as many forwards and backwards (a sharded model gathers its blocks collectively).
PackedRow empty_row(int64_t bos) {
  PackedRow row;
  row.inputs.return_logits = false;
  row.inputs.return_token_logprobs = true;
  row.inputs.input_ids = Tensor::from_vector(std::vector<int64_t>{bos}, {1, 1});
  row.inputs.position_ids = Tensor::from_vector(std::vector<int64_t>{0}, {1, 1});
  row.inputs.labels = Tensor::from_vector(std::vector<int64_t>{-100}, {1, 1});
  row.tokens.seq = {0};
  row.tokens.token_mask = {0.0};
  row.tokens.lp_gen = {0.0};
  row.tokens.advantage = {0.0};
  row.tokens.sample_mask = {0.0};
  return row;
}

// Log-probs of every position's target under `model`, no tape (the row's length).
std::vector<double> logprobs(const model::Gemma4& model, const model::ForwardInputs& inputs) {
  ag::NoGrad no_grad;
  const Tensor lp = model.forward(inputs).token_logprobs.value().to(Device::CPU).to(DType::F64);
  return std::vector<double>(lp.data<double>(), lp.data<double>() + lp.numel());
}

// The baselines and standard deviations sum rewards and their squares (`squares`; the accuracy
// metrics only the raw rewards): rewards whose sum overflows a double would turn the advantages
// into NaN (a non-finite loss, blamed on the learning rate) or 0 (an infinite std, silently), and
// write an infinite accuracy to metrics.jsonl.
void check_reward_range(const std::vector<double>& rewards, const train::RlSettings& rl, bool squares) {
  double sum = 0, largest = 0;
  for (double r : rewards) {
    sum += squares ? r * r : std::abs(r);
    largest = std::max(largest, std::abs(r));
  }
  G4_CHECK(std::isfinite(sum), "reward.kind ", rl.reward, " returned rewards up to ", largest,
           " in magnitude, too large to average (their ", squares ? "squares overflow" : "sum overflows",
           " a double); map them onto a smaller range with grpo.reward_scaling or return smaller values");
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

// Every rank's values, concatenated in rank order (collective).
std::vector<double> gather_values(const std::vector<double>& mine, parallel::Communicator& world) {
  std::vector<double> out;
  for (const std::vector<uint8_t>& part : all_gather_bytes(nlohmann::json::to_cbor(nlohmann::json(mine)), world)) {
    const std::vector<double> v = nlohmann::json::from_cbor(part).get<std::vector<double>>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

struct GrpoObjective::Impl {
  const train::Recipe& recipe;
  const train::RlSettings& rl;
  const io::Tokenizer& tok;
  parallel::DeviceMesh& mesh;
  std::unique_ptr<model::Gemma4> reference;
  std::unique_ptr<Reward> reward;
  LossConfig loss;
  RolloutOptions rollout;
  std::function<void()> gather, release;
  std::vector<std::unique_ptr<GlobalBatch>> batches;
  size_t next_batch = 0;

  parallel::Communicator& world() { return mesh.world(); }

  // This rank's share of `prompts` (every world-size-th one), generated, scored and gathered.
  std::vector<Rollout> rollouts(const model::Gemma4& policy, const std::vector<PromptExample>& prompts,
                                const std::vector<int64_t>& draws, int64_t n, const RolloutOptions& o,
                                RolloutTimes* times = nullptr) {
    std::vector<PromptExample> mine;
    std::vector<int64_t> my_draws;
    for (size_t i = static_cast<size_t>(world().rank()); i < prompts.size(); i += static_cast<size_t>(world().size())) {
      mine.push_back(prompts[i]);
      my_draws.push_back(draws[i]);
    }
    if (gather) gather();
    std::vector<Rollout> out = generate_rollouts(policy, tok, mine, my_draws, n, o, *reward, times);
    if (release) release();
    return gather_rollouts(out, world());
  }
};

GrpoObjective::GrpoObjective(const train::Recipe& recipe, const io::Tokenizer& tok, const io::ModelConfig& config,
                             parallel::DeviceMesh& mesh, std::unique_ptr<model::Gemma4> reference)
    : impl_(new Impl{recipe, recipe.rl, tok, mesh, std::move(reference), nullptr, {}, {}, {}, {}, {}, 0}),
      prompts_(recipe, tok, data::chat_variant_for(config.hidden_size_per_layer_input), config.max_position_embeddings) {
  impl_->loss = loss_config(recipe.rl);
  check(impl_->loss);
  G4_CHECK(impl_->loss.kl_penalty == 0 || impl_->reference || recipe.lora.rank > 0,
           "GrpoObjective: the KL term needs a reference model (or LoRA, whose reference is the frozen base)");
  G4_CHECK(!(impl_->reference && recipe.lora.rank > 0),
           "GrpoObjective: a LoRA run's reference is its own frozen base; pass no reference model");
  impl_->rollout = rollout_options(recipe.rl);
  impl_->reward = make_reward(reward_options(recipe.rl));
}

GrpoObjective::~GrpoObjective() = default;

const model::Gemma4* GrpoObjective::reference_model() const { return impl_->reference.get(); }

std::vector<double> GrpoObjective::reference_logprobs(const model::Gemma4& policy,
                                                      const model::ForwardInputs& inputs) const {
  if (impl_->reference) return logprobs(*impl_->reference, inputs);
  G4_CHECK(policy.lora(), "GrpoObjective: no reference model, and the policy has no LoRA adapters to bypass");
  const model::LoraBypass base(policy);
  return logprobs(policy, inputs);
}

void GrpoObjective::set_parameter_hooks(std::function<void()> gather, std::function<void()> release) {
  impl_->gather = std::move(gather);
  impl_->release = std::move(release);
}

StepStats GrpoObjective::prepare_step(const model::Gemma4& policy) {
  Impl& m = *impl_;
  const train::RlSettings& rl = m.rl;
  const auto t_step = Clock::now();
  const int64_t G = rl.generations_per_prompt;
  const int64_t target = rl.prompts_per_step * G;
  const int64_t per_round =
      rl.dynamic_sampling ? static_cast<int64_t>(static_cast<double>(rl.prompts_per_step) * rl.batch_multiplier)
                          : rl.prompts_per_step;
  DynamicSampling ds(target, rl.dynamic_sampling_max_rounds);
  std::vector<Sample> kept;
  std::vector<double> step_shaped, env, lengths;  // every generated sample, in generation order
  int64_t truncated = 0, generated_tokens = 0, groups_generated = 0;
  double gen_s = 0;
  RolloutTimes gen_times;
  while (true) {
    std::vector<int64_t> draws(static_cast<size_t>(per_round));
    std::iota(draws.begin(), draws.end(), prompts_.position());
    const std::vector<PromptExample> prompts = prompts_.next(per_round);
    const auto t_gen = Clock::now();
    std::vector<Rollout> round = m.rollouts(policy, prompts, draws, G, m.rollout, &gen_times);
    gen_s += seconds_since(t_gen);
    const size_t n = round.size();
    std::vector<double> rewards(n);
    std::vector<int64_t> lens(n);
    std::vector<std::vector<int64_t>> prompt_rows(n);
    for (size_t i = 0; i < n; ++i) {
      rewards[i] = round[i].env_reward;
      env.push_back(round[i].env_reward);
      lens[i] = static_cast<int64_t>(round[i].response_ids.size());
      lengths.push_back(static_cast<double>(lens[i]));
      truncated += round[i].truncated;
      generated_tokens += lens[i];
      prompt_rows[i] = round[i].prompt_ids;
    }
    check_reward_range(rewards, rl, false);  // raw: the accuracy averages them
    scale_rewards(rewards, {rl.reward_scaling, rl.scaling_source_min, rl.scaling_source_max, rl.scaling_target_min,
                            rl.scaling_target_max});
    const std::vector<double> unshaped = rewards;
    shape_rewards(rewards, lens, {rl.overlong_shaping, rl.overlong_buffer_length, rl.overlong_penalty,
                                  rl.max_response_length});
    check_reward_range(rewards, rl, true);
    step_shaped.insert(step_shaped.end(), rewards.begin(), rewards.end());
    const std::vector<int64_t> groups = group_by_prompt(prompt_rows);
    groups_generated += groups.empty() ? 0 : *std::max_element(groups.begin(), groups.end()) + 1;
    std::vector<int64_t> keep;
    if (rl.dynamic_sampling) {
      // Groups whose (unshaped) rewards all agree teach nothing (their advantages are 0).
      const BaselineStd bs = baseline_and_std(rewards, groups, std::vector<double>(n, 1.0),
                                              rl.leave_one_out_baseline, unshaped);
      keep = ds.add_round(bs.std);
    } else {
      keep.resize(n);
      std::iota(keep.begin(), keep.end(), 0);
    }
    for (int64_t i : keep) kept.push_back({std::move(round[static_cast<size_t>(i)]), rewards[static_cast<size_t>(i)], 0});
    if (!rl.dynamic_sampling || ds.complete()) break;
  }
  if (static_cast<int64_t>(kept.size()) > target) kept.resize(static_cast<size_t>(target));

  // Advantages on the kept samples from their shaped rewards (NeMo-RL recomputes them there).
  int64_t groups_with_spread = 0;
  {
    std::vector<std::vector<int64_t>> prompt_rows;
    std::vector<double> rewards;
    for (const Sample& s : kept) {
      prompt_rows.push_back(s.rollout.prompt_ids);
      rewards.push_back(s.reward);
    }
    const std::vector<int64_t> groups = group_by_prompt(prompt_rows);
    const std::vector<double> adv = grpo_advantages(rewards, groups, std::vector<double>(kept.size(), 1.0),
                                                    rl.normalize_rewards, rl.leave_one_out_baseline);
    for (size_t i = 0; i < kept.size(); ++i) kept[i].advantage = adv[i];
    // Groups whose rewards differ: only they give the policy-gradient term anything to follow.
    std::map<int64_t, std::pair<double, double>> range;  // group -> (min, max) reward
    for (size_t i = 0; i < kept.size(); ++i) {
      const auto it = range.try_emplace(groups[i], rewards[i], rewards[i]).first;
      it->second = {std::min(it->second.first, rewards[i]), std::max(it->second.second, rewards[i])};
    }
    for (const auto& [group, r] : range) groups_with_spread += r.first != r.second ? 1 : 0;
  }

  // Global batches (one optimizer step each), each split over the data-parallel ranks.
  const auto t_lp = Clock::now();
  m.batches.clear();
  m.next_batch = 0;
  const int64_t total = static_cast<int64_t>(kept.size());
  const int64_t per_batch = rl.global_batch_size > 0 ? rl.global_batch_size : std::max<int64_t>(total, 1);
  const int ranks = m.world().size(), rank = m.world().rank();
  std::vector<double> tmpe_tokens;  // exp|lp_prev - lp_gen| of this rank's trained tokens
  int64_t forwarded = 0;
  for (int64_t b0 = 0; b0 < total; b0 += per_batch) {
    auto batch = std::make_unique<GlobalBatch>();
    std::vector<std::vector<const Sample*>> by_rank(static_cast<size_t>(ranks));
    for (int64_t j = b0; j < std::min(total, b0 + per_batch); ++j) {
      const Sample& s = kept[static_cast<size_t>(j)];
      by_rank[static_cast<size_t>((j - b0) % ranks)].push_back(&s);
      batch->norm.valid_tokens += static_cast<double>(s.rollout.response_ids.size());
      batch->norm.valid_seqs += 1;
    }
    size_t most_rows = 0;
    for (int r = 0; r < ranks; ++r) {
      std::vector<PackedRow> rows = pack(by_rank[static_cast<size_t>(r)], rl.micro_batch_tokens, rl.temperature);
      most_rows = std::max(most_rows, rows.size());
      if (r == rank) batch->rows = std::move(rows);
    }
    while (batch->rows.size() < most_rows) batch->rows.push_back(empty_row(m.tok.bos_id));
    for (PackedRow& row : batch->rows) {
      row.tokens.lp_prev = logprobs(policy, row.inputs);
      if (m.loss.kl_penalty > 0) row.tokens.lp_ref = reference_logprobs(policy, row.inputs);
      forwarded += row.inputs.input_ids.numel();
      for (size_t t = 0; t < row.tokens.seq.size(); ++t)
        if (row.tokens.token_mask[t] > 0)
          tmpe_tokens.push_back(std::exp(std::abs(row.tokens.lp_prev[t] - row.tokens.lp_gen[t])));
    }
    m.batches.push_back(std::move(batch));
  }
  const double lp_s = seconds_since(t_lp);

  StepStats st;
  st.global_batches = static_cast<int64_t>(m.batches.size());
  train::Metrics& mt = st.metrics;
  // NeMo-RL's train/reward: the shaped reward of the first (prompts x generations) samples the
  // step generated, before the filter; filtered_reward: of the samples trained on.
  const std::vector<double> first(step_shaped.begin(), step_shaped.begin() + std::min<int64_t>(
                                                                         target, static_cast<int64_t>(step_shaped.size())));
  mt["reward"] = mean(first);
  double var = 0;
  for (double x : first) var += (x - mt["reward"]) * (x - mt["reward"]);
  mt["reward_std"] = first.size() > 1 ? std::sqrt(var / static_cast<double>(first.size() - 1)) : 0.0;
  std::vector<double> kept_rewards, adv;
  for (const Sample& s : kept) {
    kept_rewards.push_back(s.reward);
    adv.push_back(s.advantage);
  }
  mt["filtered_reward"] = mean(kept_rewards);
  mt["accuracy"] = mean(env);
  mt["advantages_mean"] = mean(adv);
  mt["advantages_min"] = adv.empty() ? 0.0 : *std::min_element(adv.begin(), adv.end());
  mt["advantages_max"] = adv.empty() ? 0.0 : *std::max_element(adv.begin(), adv.end());
  mt["groups_generated"] = static_cast<double>(groups_generated);
  mt["groups_kept"] = static_cast<double>(kept.size()) / static_cast<double>(G);
  mt["groups_with_spread"] = static_cast<double>(groups_with_spread);
  mt["samples_trained"] = static_cast<double>(kept.size());
  mt["samples_generated"] = static_cast<double>(env.size());
  if (rl.dynamic_sampling) {
    mt["dynamic_sampling_num_gen_batches"] = static_cast<double>(ds.rounds());
    mt["dynamic_sampling_num_discarded_valid_samples"] = static_cast<double>(ds.discarded());
  }
  mt["response_length_mean"] = mean(lengths);
  mt["response_length_max"] = lengths.empty() ? 0.0 : *std::max_element(lengths.begin(), lengths.end());
  mt["truncation_rate"] = env.empty() ? 0.0 : static_cast<double>(truncated) / static_cast<double>(env.size());
  mt["natural_termination_rate"] = 1.0 - mt["truncation_rate"];
  // Per-token train/generation agreement over every rank's trained tokens.
  std::vector<double> tmpe = gather_values(tmpe_tokens, m.world());
  if (!tmpe.empty()) {
    std::sort(tmpe.begin(), tmpe.end());
    mt["token_mult_prob_error_median"] = tmpe[tmpe.size() / 2];
    mt["token_mult_prob_error_max"] = tmpe.back();
  }
  Tensor sums = Tensor::zeros({1}, DType::F64);
  sums.data<double>()[0] = static_cast<double>(forwarded);
  parallel::all_reduce_values(m.world(), sums);
  mt["generation_s"] = gen_s;
  // This rank's split of it: making the engines (their page pools), the engine's steps (the host's
  // own work, then sampling, which waits for the GPU's forward) and scoring.
  mt["generation_engine_start_s"] = gen_times.engine_start_s;
  mt["generation_steps"] = static_cast<double>(gen_times.steps.steps);
  mt["generation_host_s"] = gen_times.steps.prepare_s + gen_times.steps.forward_s + gen_times.steps.bookkeeping_s;
  mt["generation_sampling_s"] = gen_times.steps.sample_s;
  mt["generation_reward_s"] = gen_times.reward_s;
  mt["generation_tokens"] = static_cast<double>(generated_tokens);
  mt["generation_tokens_per_s"] = gen_s > 0 ? static_cast<double>(generated_tokens) / gen_s : 0.0;
  mt["logprobs_s"] = lp_s;
  mt["logprobs_tokens_per_s"] = lp_s > 0 ? sums.data<double>()[0] / lp_s : 0.0;
  mt["training_tokens"] = sums.data<double>()[0];
  mt["prepare_other_s"] = seconds_since(t_step) - gen_s - lp_s;
  return st;
}

std::unique_ptr<train::StepBatch> GrpoObjective::next_batch() {
  Impl& m = *impl_;
  G4_CHECK(m.next_batch < m.batches.size(), "GrpoObjective: next_batch without a prepared step");
  return std::move(m.batches[m.next_batch++]);
}

train::MicroLoss GrpoObjective::forward(const model::Gemma4& model, const train::StepBatch& batch, int64_t i) {
  const auto& b = static_cast<const GlobalBatch&>(batch);
  const PackedRow& row = b.rows[static_cast<size_t>(i)];
  model::ForwardOutputs out = model.forward(row.inputs);
  train::MicroLoss r;
  r.expert_tokens = std::move(out.expert_tokens);
  const ag::Var lp = ag::reshape(out.token_logprobs, {out.token_logprobs.value().numel()});
  r.loss = policy_loss(lp, row.tokens, impl_->loss, b.norm, r.metrics);
  return r;
}

train::Metrics GrpoObjective::validate(const model::Gemma4& model) {
  Impl& m = *impl_;
  const std::vector<PromptExample>& prompts = prompts_.validation();
  if (prompts.empty()) return {};
  std::vector<int64_t> draws(prompts.size());
  for (size_t i = 0; i < draws.size(); ++i) draws[i] = -1 - static_cast<int64_t>(i);
  RolloutOptions o = m.rollout;
  o.seed ^= kValidationSeedSalt;
  const std::vector<Rollout> out = m.rollouts(model, prompts, draws, m.rl.val_samples_per_prompt, o);
  double correct = 0, length = 0;
  std::vector<double> rewards;
  for (const Rollout& r : out) {
    correct += r.env_reward;
    rewards.push_back(r.env_reward);
    length += static_cast<double>(r.response_ids.size());
  }
  check_reward_range(rewards, m.rl, false);
  const double n = static_cast<double>(out.size());
  return {{"validation_accuracy", correct / n}, {"validation_response_length", length / n}};
}

void GrpoObjective::save(const std::filesystem::path&, nlohmann::json& state) {
  state["prompt_position"] = prompts_.position();
}

void GrpoObjective::load(const std::filesystem::path& dir, const nlohmann::json& state) {
  // The likely mistake: checkpoint.dir naming the SFT run the policy comes from.
  G4_CHECK(state.is_object() && state.contains("prompt_position"), train::trainer_state_path(dir),
           " has no 'prompt_position': not a checkpoint of g4 rl (a g4 train checkpoint is where an RL run starts: "
           "give it as model.path, and the RL run a checkpoint.dir of its own)");
  prompts_.set_position(io::json_int(state, "prompt_position", train::trainer_state_path(dir)));
}

}  // namespace g4::rl

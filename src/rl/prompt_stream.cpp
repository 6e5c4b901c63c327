#include "rl/prompt_stream.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "rl/rewards.h"
#include "rl/rollouts.h"

namespace g4::rl {

namespace {

// Task problems are numbered from 0 for training; the validation problems come from another seed.
constexpr uint64_t kValidationSeedSalt = 0x9e3779b97f4a7c15ull;
// A training draw whose problem is a validation one takes the problem this far further on instead.
constexpr int64_t kHeldOutStride = int64_t{1} << 40;
// Consecutive task problems longer than prompts.max_input_seq_length before a draw gives up.
constexpr int64_t kMaxOverlongDraws = 1000;

TaskOptions task_options(const train::RlSettings& rl, uint64_t seed) {
  TaskOptions t;
  t.task = rl.task;
  t.difficulty = rl.task_difficulty;
  t.seed = seed;
  return t;
}

// Whether reward.kind compares each response with the ground truth (a prompt without one could
// only ever score 0).
bool reward_reads_answer(const train::RlSettings& rl) {
  return rl.reward == "dapo_math" || rl.reward == "exact" ||
         (rl.reward == "regex" && rl.reward_pattern.find("{answer}") != std::string::npos);
}

}  // namespace

PromptStream::PromptStream(const train::Recipe& r, const io::Tokenizer& tok, data::ChatVariant variant,
                           int64_t context)
    : rl_(r.rl), tok_(tok), variant_(variant), limit_(sequence_limit(r.rl.max_total_sequence_length, context)) {
  const auto fits = [&](const PromptExample& p) {
    if (static_cast<int64_t>(p.ids.size()) <= rl_.max_input_seq_length) return true;
    ++skipped_;
    return false;
  };
  const auto keep_fitting = [&](std::vector<PromptExample> all) {
    std::vector<PromptExample> kept;
    for (PromptExample& p : all)
      if (fits(p)) kept.push_back(std::move(p));
    return kept;
  };
  if (!rl_.task.empty()) {
    const auto& names = task_names();
    G4_CHECK(std::find(names.begin(), names.end(), rl_.task) != names.end(), r.source, ": 'prompts.task' ", rl_.task,
             " is not a built-in task (g4 task lists them)");
    G4_CHECK(rl_.task_difficulty >= 0 && rl_.task_difficulty <= kMaxTaskDifficulty, r.source,
             ": 'prompts.task_difficulty' is ", rl_.task_difficulty, "; the built-in tasks have difficulties 0 to ",
             kMaxTaskDifficulty);
    if (rl_.prompts_validation.empty()) {
      validation_ = keep_fitting(make_task_prompts(task_options(rl_, rl_.seed ^ kValidationSeedSalt), 0,
                                                   rl_.task_validation_prompts, tok, rl_.system_prompt, variant));
      G4_CHECK(!validation_.empty() || rl_.task_validation_prompts == 0, r.source, ": every one of the ",
               rl_.task_validation_prompts, " validation problems of built-in task ", rl_.task, " has more than ",
               rl_.max_input_seq_length, " tokens (prompts.max_input_seq_length); shorten prompts.system_prompt or "
               "raise the limit");
    }
  } else {
    train_ = keep_fitting(load_prompts(rl_.prompts_train, tok, rl_.system_prompt, variant));
    G4_CHECK(!train_.empty(), r.source, ": 'prompts.train' (", rl_.prompts_train, ") holds no prompt of at most ",
             rl_.max_input_seq_length, " tokens (prompts.max_input_seq_length)");
  }
  if (!rl_.prompts_validation.empty()) {
    validation_ = keep_fitting(load_prompts(rl_.prompts_validation, tok, rl_.system_prompt, variant));
    G4_CHECK(!validation_.empty(), r.source, ": 'prompts.validation' (", rl_.prompts_validation,
             ") holds no prompt of at most ", rl_.max_input_seq_length, " tokens (prompts.max_input_seq_length)");
  }
  if (rl_.max_val_prompts > 0 && static_cast<int64_t>(validation_.size()) > rl_.max_val_prompts)
    validation_.resize(static_cast<size_t>(rl_.max_val_prompts));
  if (!rl_.task.empty())
    for (const PromptExample& p : validation_) held_out_.insert(p.prompt);
  // Found now rather than steps later, when (or whether) the prompt is drawn.
  for (const PromptExample& p : train_) check(p, false);
  for (const PromptExample& p : validation_) check(p, rl_.prompts_validation.empty());
}

void PromptStream::check(const PromptExample& p, bool generated) const {
  const auto len = static_cast<int64_t>(p.ids.size());
  G4_CHECK(limit_ <= 0 || len < limit_, p.where, ": the prompt has ", len,
           " tokens, which leaves no room for a response within ", limit_,
           " tokens (generation.max_total_sequence_length, within the model's context); ",
           !generated ? "shorten it, raise generation.max_total_sequence_length, or set "
                              "prompts.max_input_seq_length below " + std::to_string(limit_) + " to skip such prompts"
                            : std::string("shorten prompts.system_prompt or raise generation.max_total_sequence_length"));
  G4_CHECK(p.has_answer || !reward_reads_answer(rl_), p.where,
           ": no ground truth ('answer', 'ground_truth' or 'reward_model.ground_truth'), which reward.kind ", rl_.reward,
           rl_.reward == "regex" ? " (its {answer})" : "", " compares every response with: the prompt could only score 0");
  check_prompt_fields(rl_.reward, p.extra, p.where);
}

PromptExample PromptStream::draw(int64_t d) {
  if (!rl_.task.empty()) {
    // Held-out and overlong problems give way to one further on; a problem is a pure function of its
    // index, so draw d still is of d.
    int64_t overlong = 0;
    for (int64_t index = d;; index += kHeldOutStride) {
      PromptExample p = make_task_prompts(task_options(rl_, rl_.seed), index, 1, tok_, rl_.system_prompt, variant_).at(0);
      if (held_out_.count(p.prompt)) continue;
      if (static_cast<int64_t>(p.ids.size()) > rl_.max_input_seq_length) {
        G4_CHECK(++overlong < kMaxOverlongDraws, "built-in task ", rl_.task, ": ", kMaxOverlongDraws,
                 " problems in a row have more than ", rl_.max_input_seq_length, " tokens (", p.ids.size(),
                 " the last), prompts.max_input_seq_length; shorten prompts.system_prompt or raise the limit");
        ++skipped_;
        continue;
      }
      check(p, true);
      return p;
    }
  }
  const int64_t n = size();
  const int64_t epoch = d / n;
  if (epoch != order_epoch_) {
    order_.resize(static_cast<size_t>(n));
    std::iota(order_.begin(), order_.end(), 0);
    std::mt19937_64 rng(rl_.seed + static_cast<uint64_t>(epoch) * 0x2545f4914f6cdd1dull);
    std::shuffle(order_.begin(), order_.end(), rng);
    order_epoch_ = epoch;
  }
  return train_[static_cast<size_t>(order_[static_cast<size_t>(d % n)])];
}

std::vector<PromptExample> PromptStream::next(int64_t count) {
  std::vector<PromptExample> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out.push_back(draw(position_++));
  return out;
}

}  // namespace g4::rl

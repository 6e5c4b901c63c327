// The prompts an RL run draws step after step, and its held-out validation prompts.
//
// A JSONL prompt set is drawn in a seeded order, a new permutation each epoch; a built-in task is
// an endless stream of generated problems (problem i a pure function of the seed and i), from
// which the validation problems are held out by text. Either way draw d is a pure function of the
// seed and d, so a run resumed at position d draws what an uninterrupted one would.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "rl/prompts.h"
#include "train/recipe.h"

namespace g4::rl {

class PromptStream {
 public:
  // Reads (or generates) the prompts; prompts of more than prompts.max_input_seq_length tokens
  // (training and validation, files and built-in tasks) are skipped and counted. Errors name the
  // recipe key and file. A prompt that leaves no room for
  // a response (generation.max_total_sequence_length within the model's `context`; 0: none), or
  // lacks the ground truth the reward compares with, is an error naming its line (a generated
  // problem, when it is drawn). `variant`: the chat template of the policy's checkpoint.
  PromptStream(const train::Recipe& r, const io::Tokenizer& tok, data::ChatVariant variant, int64_t context);

  // Draws position() .. position() + count - 1.
  std::vector<PromptExample> next(int64_t count);
  int64_t position() const { return position_; }
  void set_position(int64_t p) { position_ = p; }

  // Every validation prompt (possibly none), at most grpo.max_val_prompts.
  const std::vector<PromptExample>& validation() const { return validation_; }
  int64_t skipped_too_long() const { return skipped_; }
  // Prompts of the set (0 for a built-in task: endless).
  int64_t size() const { return static_cast<int64_t>(train_.size()); }

 private:
  PromptExample draw(int64_t d);
  // `generated`: a built-in task's problem (its length comes from prompts.system_prompt).
  void check(const PromptExample& p, bool generated) const;

  const train::RlSettings& rl_;
  const io::Tokenizer& tok_;
  data::ChatVariant variant_;
  std::vector<PromptExample> train_, validation_;
  std::set<std::string> held_out_;  // task: validation prompts, never trained on
  int64_t position_ = 0, skipped_ = 0;
  int64_t limit_ = 0;               // prompt + response tokens at most (0: none)
  std::vector<int64_t> order_;      // prompt set: this epoch's permutation
  int64_t order_epoch_ = -1;
};

}  // namespace g4::rl

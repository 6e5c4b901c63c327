// The prompts RL trains on: JSONL prompt sets (the DAPO-Math layout and a plain {prompt, answer}
// layout) and a built-in generator of verifiable problems with exact answers, so the embedded
// example needs no download. Prompts are rendered with the Gemma 4 chat template
// (add_generation_prompt) and tokenised once.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/tokenizer.h"

namespace g4::rl {

struct PromptExample {
  std::string prompt;                // the user message as written
  std::string answer;                // ground truth
  nlohmann::json extra = nlohmann::json::object();  // the line's other fields (for command rewards)
  std::vector<int64_t> ids;          // the rendered chat prompt, tokenised (BOS first)
};

// One JSON object per line, either layout:
//   DAPO-Math:  {"prompt": [{"role": "user", "content": ...}, ...], "reward_model": {"ground_truth": ...}}
//   plain:      {"prompt": "...", "answer": "..."} (also "messages" instead of "prompt", "ground_truth"
//               instead of "answer")
// The last user message is `prompt`; every message goes through the chat template. Empty lines are
// skipped; a bad line is an error naming the file and line. system_prompt (may be empty) is
// prepended as a system turn where the line has none.
std::vector<PromptExample> load_prompts(const std::string& path, const io::Tokenizer& tok,
                                        const std::string& system_prompt = "");

// Built-in tasks (data.task in a g4 rl recipe), each problem a pure function of (seed, index):
//   "arithmetic": a multi-step integer expression (+, -, *) of `difficulty` + 1 operands;
//   "countdown": reach a target from `difficulty` + 2 numbers with + - * (one exact solution exists;
//                the answer is any expression that evaluates to it, so its reward is "countdown").
// The prompt asks for the result on a final line "Answer: <value>" (the DAPO verifier's format).
struct TaskOptions {
  std::string task = "arithmetic";
  int64_t difficulty = 2;
  uint64_t seed = 0;
};
std::vector<PromptExample> make_task_prompts(const TaskOptions& options, int64_t begin, int64_t count,
                                             const io::Tokenizer& tok, const std::string& system_prompt = "");
// The task names make_task_prompts knows.
const std::vector<std::string>& task_names();

// Renders one user turn (plus an optional system turn) with the chat template and tokenises it.
std::vector<int64_t> chat_prompt_ids(const std::string& user, const std::string& system_prompt,
                                     const io::Tokenizer& tok);

}  // namespace g4::rl

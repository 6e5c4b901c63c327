// The prompts RL trains on: JSONL prompt sets (the DAPO-Math layout and a plain {prompt, answer}
// layout) and a built-in generator of verifiable problems with exact answers, so the embedded
// example needs no download. Prompts are rendered with the Gemma 4 chat template
// (add_generation_prompt) and tokenised once.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "io/tokenizer.h"

namespace g4::rl {

struct PromptExample {
  std::string prompt;                // the user message as written
  std::string answer;                // ground truth
  nlohmann::json extra = nlohmann::json::object();  // the line's other fields (for command rewards)
  std::vector<int64_t> ids;          // the rendered chat prompt, tokenised (BOS first)
  std::string where{};               // for errors: "file.jsonl:7", or "task arithmetic, problem 12"
  bool has_answer = false;           // the line gave a ground truth (a task problem always has one)
};

// One JSON object per line, either layout:
//   DAPO-Math:  {"prompt": [{"role": "user", "content": ...}, ...], "reward_model": {"ground_truth": ...}}
//   plain:      {"prompt": "...", "answer": "..."} (also "messages" instead of "prompt", "ground_truth"
//               instead of "answer")
// The last user message is `prompt`; every message goes through the chat template. Empty lines are
// skipped; a bad line is an error naming the file and line. system_prompt (may be empty) is
// prepended as a system turn where the line has none. `extra` holds the line's fields other than
// prompt, messages, answer, ground_truth and reward_model. The answer may be a string or a number
// (kept as its JSON text); `has_answer` says whether the line gave one. `variant` is the model's generation prompt (the 26B-A4B and 31B
// templates add an empty thought channel; serve::ModelInfo::chat_variant says which).
std::vector<PromptExample> load_prompts(const std::string& path, const io::Tokenizer& tok,
                                        const std::string& system_prompt = "",
                                        data::ChatVariant variant = data::ChatVariant::Small);

// Built-in tasks (data.task in a g4 rl recipe), each problem a pure function of (seed, index):
//   "arithmetic": a multi-step integer expression (+, -, *) of `difficulty` + 1 operands;
//   "countdown": reach a target from `difficulty` + 2 numbers with + - * (one exact solution exists;
//                the answer is any expression that evaluates to it, so its reward is "countdown").
// The prompt asks for the result on a final line "Answer: <value>" (the DAPO verifier's format).
// Wording is fixed per task and short (a tiny model learns it); `extra` holds {"task", and
// "expression" (arithmetic) or "numbers" and "target" (countdown)}, so a prompt file written from
// these problems scores with the countdown reward. difficulty is in [0, 8].
constexpr int64_t kMaxTaskDifficulty = 8;
struct TaskOptions {
  std::string task = "arithmetic";
  int64_t difficulty = 2;
  uint64_t seed = 0;
};
// Problems begin .. begin + count - 1, without ids (for `g4 task`, which needs no tokenizer).
std::vector<PromptExample> task_problems(const TaskOptions& options, int64_t begin, int64_t count);
// task_problems with the ids of each rendered chat prompt.
std::vector<PromptExample> make_task_prompts(const TaskOptions& options, int64_t begin, int64_t count,
                                             const io::Tokenizer& tok, const std::string& system_prompt = "",
                                             data::ChatVariant variant = data::ChatVariant::Small);
// A correct response to a task problem, for SFT data: arithmetic works the expression one operation
// a line ("5 * 2 = 10", then "3 + 10 = 13") and ends "Answer: 13"; countdown answers with the
// constructed solution ("Answer: 3 * 7 + 2"). Without `answer_line` the final "Answer: " line is
// left out (arithmetic ends with its last worked line, countdown gives the bare expression): SFT
// data that teaches the work but not always the verifier's format, which RL then has to teach.
std::string task_reference_response(const PromptExample& problem, bool answer_line = true);
// Whether the SFT response of problem `index` keeps its answer line when a fraction `fraction` of
// them do: a pure function of (seed, index), independent of the problem's own draws.
bool sft_keeps_answer_line(uint64_t seed, int64_t index, double fraction);
// The task names make_task_prompts knows.
const std::vector<std::string>& task_names();

// Renders one user turn (plus an optional system turn) with the chat template and tokenises it.
std::vector<int64_t> chat_prompt_ids(const std::string& user, const std::string& system_prompt,
                                     const io::Tokenizer& tok,
                                     data::ChatVariant variant = data::ChatVariant::Small);

}  // namespace g4::rl

// Rewards of RL rollouts: DAPO's math verifier exactly as NeMo-RL runs it (dapo_math_verify;
// docs/rl.md), exact-match and regex rewards, and an external reward program for
// user tasks.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace g4::rl {

// normalize_final_answer of verl's math_dapo.py (the text after the last '=', substitutions, unit
// words and TeX noise removed, \boxed / \text / ... unwrapped, \fracab and \sqrta fixed, '$'
// dropped, commas stripped from numbers).
std::string normalize_final_answer(std::string_view answer);
// compute_score in Minerva mode: the last "Answer: ..." line within the last 300 characters of the
// response ("[INVALID]" when none), normalised, equal to the normalised ground truth: 1, else 0.
double dapo_math_score(std::string_view response, std::string_view ground_truth);

// What a reward sees of one rollout.
struct RewardInput {
  std::string prompt;    // the prompt as the user wrote it (before the chat template)
  std::string response;  // the generated text, special tokens skipped
  std::string answer;    // the ground truth ("" when the data has none)
  nlohmann::json extra = nlohmann::json::object();  // the data line's other fields
};

class Reward {
 public:
  virtual ~Reward() = default;
  // One reward per input, in order. Rewards of failing inputs are 0 (as NeMo-RL's verifier
  // workers score exceptions), except for the command reward, whose failure is an error.
  virtual std::vector<double> score(const std::vector<RewardInput>& inputs) = 0;
};

struct RewardOptions {
  // dapo_math | exact (normalised response's "Answer:" value == answer, no TeX rules) | regex |
  // countdown (the "Answer:" expression uses only extra["numbers"], each at most once, with + - * ( ),
  // and equals extra["target"]) | command
  std::string kind = "dapo_math";
  // regex: a match anywhere in the response (ECMAScript) scores 1; "{answer}" in the pattern is
  // replaced by the escaped ground truth.
  std::string pattern;
  // command: run through /bin/sh once per call; reads one JSON object per input on stdin
  // ({"prompt", "response", "answer", ...extra}) and writes one number per line on stdout. A
  // non-zero exit, a wrong line count, a non-number or more than 64 KiB of stdout per input is an
  // error naming the command, with the end of its stderr (only the last 64 KiB are kept). While it
  // runs, SIGINT, SIGTERM and SIGHUP to this process kill its process group first.
  std::string command;
  double timeout_s = 600;  // command: killed after this
};

// Throws g4::Error, naming `where` (the prompt's file and line), when a prompt lacks a field the
// reward kind reads (countdown: 'numbers' and 'target'), so that a prompt set is refused as it is
// read rather than when a step draws the prompt.
void check_prompt_fields(const std::string& kind, const nlohmann::json& extra, const std::string& where);

// Throws g4::Error naming the recipe key (reward.kind, reward.pattern, reward.command) on bad options.
std::unique_ptr<Reward> make_reward(const RewardOptions& options);

}  // namespace g4::rl

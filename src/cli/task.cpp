// g4 task NAME --out FILE: problems of a built-in RL task as a JSONL prompt file for `g4 rl`, or with
// --sft as chat lines (the problem and its reference response) for `g4 train` with data.format chat.
#include <filesystem>
#include <iostream>
#include <limits>

#include "cli/commands.h"
#include "core/error.h"
#include "io/json_input.h"
#include "rl/prompts.h"

namespace g4::cli {

namespace {
constexpr int64_t kMaxTaskCount = 1000000;
}  // namespace

void add_task(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("task", "Write problems of a built-in RL task (arithmetic, countdown) as JSONL");
  cmd->footer(
      "Each line is {\"prompt\", \"answer\", \"task\", ...} (the task's numbers), the plain layout g4 rl reads;\n"
      "with --sft, {\"messages\": [user: the prompt, assistant: a reference response]} for g4 train.\n"
      "Problem i is a pure function of (NAME, --seed, --difficulty, i): --begin picks a disjoint range.");
  struct Opts {
    std::string task, out;
    int64_t count = 1000, begin = 0, difficulty = 2;
    uint64_t seed = 0;
    double answer_line_fraction = 1.0;
    bool sft = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("name", o->task, "the task: arithmetic or countdown")->required();
  // The file is made in memory and written whole (atomically): a count is bounded by what that holds
  // (a million problems are 125-250 MB of JSONL, 0.8-1.3 GB at the peak, 3-6 s; measured);
  // --begin writes further ranges to other files.
  cmd->add_option("--count", o->count, "how many problems (0 to 1000000, default 1000)")
      ->check(integer_in(0, kMaxTaskCount));
  cmd->add_option("--begin", o->begin, "index of the first problem (default 0)")->check(non_negative_integer());
  cmd->add_option("--seed", o->seed, "seed of the problems (default 0)")->check(unsigned_integer());
  cmd->add_option("--difficulty", o->difficulty, "arithmetic: operands - 1; countdown: numbers - 2 (0..8, default 2)")
      ->check(integer_in(0, rl::kMaxTaskDifficulty));
  cmd->add_option("--out", o->out, "the JSONL file to write")->required();
  cmd->add_flag("--sft", o->sft, "write chat lines with a reference response (SFT data) instead of prompts");
  cmd->add_option("--answer-line-fraction", o->answer_line_fraction,
                  "with --sft: the fraction of reference responses that end with the 'Answer: ' line; the others "
                  "stop after the work, so RL has the verifier's format to teach (default 1)")
      ->check(real_in(0, 1));
  cmd->add_flag("--overwrite", o->overwrite, "replace FILE when it exists");
  cmd->callback([&action, o] {
    action = [o] {
      namespace fs = std::filesystem;
      if (!runs_in_this_rank("g4 task", "--out")) return;
      check_output_file_creatable(o->out, "task: --out");
      G4_CHECK(o->overwrite || !fs::exists(o->out), "task: --out ", o->out, " exists; pass --overwrite to replace it");
      G4_CHECK(o->count <= std::numeric_limits<int64_t>::max() - o->begin, "task: --begin ", o->begin, " + --count ",
               o->count, " is past the last problem index (2^63 - 1)");
      G4_CHECK(o->sft || o->answer_line_fraction == 1.0, "task: --answer-line-fraction applies to --sft data only");
      const std::vector<rl::PromptExample> problems =
          rl::task_problems({o->task, o->difficulty, o->seed}, o->begin, o->count);
      std::string text;
      for (size_t i = 0; i < problems.size(); ++i) {
        const rl::PromptExample& p = problems[i];
        nlohmann::json line;
        if (o->sft) {
          const bool answer_line =
              rl::sft_keeps_answer_line(o->seed, o->begin + static_cast<int64_t>(i), o->answer_line_fraction);
          line["messages"] = {{{"role", "user"}, {"content", p.prompt}},
                              {{"role", "assistant"}, {"content", rl::task_reference_response(p, answer_line)}}};
        } else {
          line = p.extra;
          line["prompt"] = p.prompt;
          line["answer"] = p.answer;
        }
        text += line.dump() + '\n';
      }
      io::write_file_atomic(o->out, text);
      std::cout << "wrote " << problems.size() << (o->sft ? " SFT conversations" : " prompts") << " of task " << o->task
                << " to " << o->out << "\n";
    };
  });
}

}  // namespace g4::cli

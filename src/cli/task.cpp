// g4 task NAME --out FILE: problems of a built-in RL task as a JSONL prompt file for `g4 rl`, or with
// --sft as chat lines (the problem and its reference response) for `g4 train` with data.format chat.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "io/json_input.h"
#include "rl/prompts.h"

namespace g4::cli {

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
    bool sft = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("name", o->task, "the task: arithmetic or countdown")->required();
  cmd->add_option("--count", o->count, "how many problems (default 1000)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--begin", o->begin, "index of the first problem (default 0)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->seed, "seed of the problems (default 0)");
  cmd->add_option("--difficulty", o->difficulty, "arithmetic: operands - 1; countdown: numbers - 2 (0..8, default 2)");
  cmd->add_option("--out", o->out, "the JSONL file to write")->required();
  cmd->add_flag("--sft", o->sft, "write chat lines with a reference response (SFT data) instead of prompts");
  cmd->add_flag("--overwrite", o->overwrite, "replace FILE when it exists");
  cmd->callback([&action, o] {
    action = [o] {
      namespace fs = std::filesystem;
      G4_CHECK(o->overwrite || !fs::exists(o->out), "task: --out ", o->out, " exists; pass --overwrite to replace it");
      const std::vector<rl::PromptExample> problems =
          rl::task_problems({o->task, o->difficulty, o->seed}, o->begin, o->count);
      std::string text;
      for (const rl::PromptExample& p : problems) {
        nlohmann::json line;
        if (o->sft) {
          line["messages"] = {{{"role", "user"}, {"content", p.prompt}},
                              {{"role", "assistant"}, {"content", rl::task_reference_response(p)}}};
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

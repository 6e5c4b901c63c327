// g4 rl RECIPE.yaml [key.path=value ...] [--resume]   and   g4 rl --list-keys
#include "cli/commands.h"
#include "rl/rl_trainer.h"

namespace g4::cli {

void add_rl(CLI::App& app, Action& action) {
  add_recipe_command(app, action, "rl", "GRPO / DAPO reinforcement learning from a YAML recipe (see recipes/rl/)",
                     train::Command::kRl,
                     [](const train::Recipe& r, bool resume) { rl::run_rl(r, {.resume = resume}); });
}

}  // namespace g4::cli

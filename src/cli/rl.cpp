// g4 rl RECIPE.yaml [key.path=value ...] [--resume]   and   g4 rl --list-keys
#include <iostream>

#include "cli/commands.h"
#include "rl/rl_trainer.h"
#include "train/recipe.h"

namespace g4::cli {

void add_rl(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("rl", "GRPO / DAPO reinforcement learning from a YAML recipe (see recipes/rl/)");
  struct Opts {
    std::string recipe;
    std::vector<std::string> overrides;
    bool resume = false, list_keys = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("recipe", o->recipe, "recipe YAML file");
  cmd->add_option("overrides", o->overrides, "recipe overrides, e.g. train.steps=20 grpo.num_prompts_per_step=16");
  cmd->add_flag("--resume", o->resume, "continue from the newest complete checkpoint of this run");
  cmd->add_flag("--list-keys", o->list_keys, "print every recipe key with its type, default and meaning, and exit");
  cmd->callback([&action, o] {
    if (o->list_keys) {
      action = [] { std::cout << train::recipe_key_listing(train::Command::kRl); };
      return;
    }
    if (o->recipe.empty()) throw CLI::RequiredError("recipe (or --list-keys)");
    action = [o] { rl::run_rl(train::load_recipe(o->recipe, o->overrides, train::Command::kRl), {.resume = o->resume}); };
  });
}

}  // namespace g4::cli

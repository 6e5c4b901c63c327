// The subcommands of `g4`. Each registers its options on the app and returns the action to run.
#pragma once
#include <functional>

#include <CLI/CLI.hpp>

namespace g4::cli {

using Action = std::function<void()>;

void add_inspect(CLI::App& app, Action& action);
void add_forward(CLI::App& app, Action& action);
void add_generate(CLI::App& app, Action& action);
void add_convert(CLI::App& app, Action& action);
void add_train(CLI::App& app, Action& action);
void add_eval(CLI::App& app, Action& action);
void add_launch(CLI::App& app, Action& action);
void add_bench(CLI::App& app, Action& action);

}  // namespace g4::cli

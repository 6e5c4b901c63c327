// The subcommands of `g4`. Each registers its options on the app and returns the action to run.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/kernel_profile.h"
#include "train/recipe.h"

namespace g4::cli {

using Action = std::function<void()>;

void add_inspect(CLI::App& app, Action& action);
void add_forward(CLI::App& app, Action& action);
void add_generate(CLI::App& app, Action& action);
void add_convert(CLI::App& app, Action& action);
void add_train(CLI::App& app, Action& action);
void add_rl(CLI::App& app, Action& action);
// A command that runs a recipe (`g4 train`, `g4 rl`): RECIPE.yaml [key.path=value ...] [--resume],
// or --list-keys for `command`'s keys.
void add_recipe_command(CLI::App& app, Action& action, const std::string& name, const std::string& description,
                        train::Command command, std::function<void(const train::Recipe&, bool resume)> run);
void add_eval(CLI::App& app, Action& action);
void add_launch(CLI::App& app, Action& action);
void add_bench(CLI::App& app, Action& action);
void add_bench_generate(CLI::App& bench, Action& action);  // `g4 bench generate`, under add_bench's "bench"
void add_bench_rl(CLI::App& bench, Action& action);        // `g4 bench rl`
// The kernels of a profile (core/kernel_profile.h) of `steps` steps, per step, largest first.
void print_profile(const KernelProfile& p, int steps);
// Runs `python3 SCRIPT ARGS --json OUT_JSON` (the competitor's side of a benchmark) and returns what
// it wrote, or {"error": ...} when it failed.
nlohmann::json run_python_benchmark(const std::string& script_and_args, const std::string& out_json);
void add_serve(CLI::App& app, Action& action);
void add_task(CLI::App& app, Action& action);

// Throws a g4::Error naming `option` when the file `out` exists in a model directory (one with a
// config.json) and `overwrite` is false, or when it is a file of `input_model` at all.
void check_output_file(const std::string& out, const std::string& option, bool overwrite,
                       const std::string& input_model);
// Throws a g4::Error naming `what` when the directory `out` is `input_model`, or already holds a
// model (config.json or *.safetensors) and `overwrite` is false.
void check_output_model_dir(const std::string& out, const std::string& what, bool overwrite,
                            const std::string& input_model);
// Throws a g4::Error naming both options when `out` is the file `input` (by any name: a symlink,
// a hard link, "dir/../file"): the output would replace what it is made from, even with --overwrite.
void check_output_not_input(const std::string& out, const std::string& option, const std::string& input,
                            const std::string& input_option);
// Throws a g4::Error naming `option` when the file `out` cannot be made: its folder is missing or
// not a folder, or `out` is a directory. Commands that write their output only at the end (after a
// whole batch) check this first, so that a typo costs no run.
void check_output_file_creatable(const std::string& out, const std::string& option);
// The comma-separated token ids of `flag` ("5,17,3"; blanks around an id are allowed). An empty
// list, an empty item ("5,,7", "5,", ",5") or one that is not a decimal integer is an error naming
// `flag`: a trailing comma may be a list cut short, so it is not dropped.
std::vector<int64_t> parse_token_ids(const std::string& s, const std::string& flag);
// Removes the weights, shard index and config of the model in `dir` (for --overwrite), so that no
// shard of the old model is read with the new one's index or config.
void remove_model_files(const std::string& dir);

}  // namespace g4::cli

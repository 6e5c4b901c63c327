// The subcommands of `g4`. Each registers its options on the app and returns the action to run.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
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
// The most ranks `g4 launch -n` (and `g4 bench train --ranks`) start on one machine: each is a
// process holding a model, and mpirun --oversubscribe would otherwise try to fork as many as asked
// (a typo of -n 1000000 is a fork bomb). 256 covers a 256-core host of CPU ranks and 8 GPUs many times over.
constexpr int kMaxLocalRanks = 256;
void add_bench(CLI::App& app, Action& action);
void add_bench_generate(CLI::App& bench, Action& action);  // `g4 bench generate`, under add_bench's "bench"
void add_bench_rl(CLI::App& bench, Action& action);        // `g4 bench rl`
// The kernels of a profile (core/kernel_profile.h) of `steps` steps, per step, largest first.
void print_profile(const KernelProfile& p, int steps);
// Runs `python3 SCRIPT ARGS --json OUT_JSON` (the competitor's side of a benchmark) and returns what
// it wrote, or {"error": ...} when it failed.
nlohmann::json run_python_benchmark(const std::string& script_and_args, const std::string& out_json);
// Before a benchmark's run: throws a g4::Error when --hf-script `script` is not a file or python3
// is not on PATH (`command` names the benchmark), so that --hf does not end in a line "failed" after
// g4's own run.
void check_python_benchmark(const std::string& command, const std::string& script);
// Throws a g4::Error naming --model when `model` is not one of `known` (listing them), and naming
// --layers when `layers` is more than the released model has (model::named_config_depth).
void check_bench_model(const std::string& command, const std::string& model, const std::vector<std::string>& known,
                       int64_t layers);
// The error for a command line whose leading words (before the first option) name no subcommand
// where one is required ("g4 frobnicate", "g4 bench trian"), listing the known ones; "" when they
// do. CLI11 says only "A subcommand is required" there, naming neither the word nor the choices.
std::string unknown_command(CLI::App& app, const std::vector<std::string>& words);
// The full path of `program` on PATH, or "" when it is not there.
std::string find_on_path(const std::string& program);
void add_serve(CLI::App& app, Action& action);
void add_task(CLI::App& app, Action& action);

// Throws a g4::Error naming `option` when the file `out` exists in a model directory (one with a
// config.json) and `overwrite` is false, or when it is a file of `input_model` at all.
void check_output_file(const std::string& out, const std::string& option, bool overwrite,
                       const std::string& input_model);
// Throws a g4::Error naming `what` when the directory `out` is `input_model`, or already holds a
// model (config.json, *.safetensors or any of `side_files`, e.g. its tokenizer) and `overwrite` is false.
void check_output_model_dir(const std::string& out, const std::string& what, bool overwrite,
                            const std::string& input_model, const std::vector<std::string>& side_files = {});
// Throws a g4::Error naming both options when `out` is the file `input` (by any name: a symlink,
// a hard link, "dir/../file"), or a file in `input` when that is a folder: the output would replace
// what it is made from, even with --overwrite.
void check_output_not_input(const std::string& out, const std::string& option, const std::string& input,
                            const std::string& input_option);
// Throws a g4::Error naming `option` when the file `out` cannot be made: its folder is missing, not
// a folder or takes no new files (read-only, no permission), or `out` is a directory, a FIFO or a
// device. Commands that write their output only at the end (after a whole batch) check this first,
// so that a typo costs no run.
void check_output_file_creatable(const std::string& out, const std::string& option);
// Under `g4 launch -n N` every rank runs the command it was given. A command that works in one
// process and writes an output (`task`, `generate --out`, `forward`, `convert`) does its work in
// rank 0 only: this returns false in the other ranks, after saying so. Otherwise they would race
// rank 0 for its output: refuse what rank 0 had just written as one that existed before (without
// --overwrite), write it at the same time, or replace a user's file before rank 0's check refused
// it. True outside a launch.
bool runs_in_this_rank(const std::string& command, const std::string& out_option);
// The comma-separated token ids of `flag` ("5,17,3"; blanks around an id are allowed). An empty
// list, an empty item ("5,,7", "5,", ",5") or one that is not a decimal integer is an error naming
// `flag`: a trailing comma may be a list cut short, so it is not dropped.
std::vector<int64_t> parse_token_ids(const std::string& s, const std::string& flag);
// parse_token_ids' rules for any comma-separated integers ("1,2,4": --ranks, --batch), each in
// [lo, hi]; errors name `flag` and say what an item is (`noun`: "a batch size"). CLI11's own lists
// drop the empty item of "1,,2", so a list cut short ran silently.
std::vector<int64_t> parse_integer_list(const std::string& s, const std::string& flag, const std::string& noun,
                                        int64_t lo, int64_t hi);
// A check of a real-valued option: a number (all of the text) in [lo, hi], or in (lo, hi] when
// `lo_open`, and never NaN. CLI::Range and CLI::PositiveNumber let NaN through (every comparison
// with it is false) and print infinite bounds as 300-digit numbers.
CLI::Validator real_in(double lo, double hi, bool lo_open = false);
// A check of an integer option: decimal digits (after a '-' where lo < 0), all of the text, in
// [lo, hi], without a leading zero. CLI11 2.1 reads integers with strtoll / strtoull in base 0 and
// no range check, so "99999999999999999999" silently became 2^63 - 1, "-1" of an unsigned option
// 2^64 - 1 (both seeds the same) and "010" octal 8. unsigned_integer() is the same for any uint64
// (a seed).
CLI::Validator integer_in(int64_t lo, int64_t hi);
CLI::Validator unsigned_integer();
inline CLI::Validator positive_integer() { return integer_in(1, std::numeric_limits<int64_t>::max()); }
// The text check alone, for an option whose range is checked later with a message of its own.
inline CLI::Validator int64_text() {
  return integer_in(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
}
inline CLI::Validator non_negative_integer() { return integer_in(0, std::numeric_limits<int64_t>::max()); }
// Removes the weights, shard index and config of the model in `dir` (for --overwrite), so that no
// shard of the old model is read with the new one's index or config.
void remove_model_files(const std::string& dir);

}  // namespace g4::cli

// g4: run, inspect and convert Gemma 4 models. `g4 --help` lists the subcommands.
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/blas_kernels.h"
#include "core/error.h"
#include "parallel/world.h"

int main(int argc, char** argv) {
  g4::select_blas_kernels(argv);
  CLI::App app{"g4: Gemma 4 in C++ - inspect, run, generate and convert Hugging Face checkpoints"};
  app.require_subcommand(1);
  g4::cli::Action action;
  g4::cli::add_inspect(app, action);
  g4::cli::add_forward(app, action);
  g4::cli::add_generate(app, action);
  g4::cli::add_convert(app, action);
  g4::cli::add_train(app, action);
  g4::cli::add_rl(app, action);
  g4::cli::add_eval(app, action);
  g4::cli::add_launch(app, action);
  g4::cli::add_bench(app, action);
  g4::cli::add_serve(app, action);
  g4::cli::add_task(app, action);
  const std::string unknown = g4::cli::unknown_command(app, std::vector<std::string>(argv + 1, argv + argc));
  if (!unknown.empty()) {
    std::cerr << unknown << "\nRun with --help for more information.\n";
    return static_cast<int>(CLI::ExitCodes::ExtrasError);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    action();
  } catch (const std::exception& e) {
    std::cerr << "g4: error: " << e.what() << std::endl;
    // One rank of several: its peers may be waiting for it in a collective; end the whole job.
    g4::parallel::abort_job_if_ranks(1);
    return 1;
  }
  return 0;
}

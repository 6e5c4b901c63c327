// Helpers for tests that drive the `g4` command: run it, capture its output and exit status,
// and make scratch directories.
#pragma once
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "support/test_paths.h"

namespace g4::test {

struct ProcessResult {
  int code;            // exit status, or 128 + signal when killed
  std::string output;  // stdout and stderr together
};

// Runs a shell command line, capturing what it prints (add 2>&1 for stderr too).
inline ProcessResult run_shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  ProcessResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), p)) r.output += buf.data();
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : (WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1);
  return r;
}

// Runs `g4 <args>` with `env` assignments ("A=1 B=2") in front.
inline ProcessResult run_g4(const std::string& args, const std::string& env = "") {
  return run_shell(env + " " + g4_binary() + " " + args + " 2>&1");
}

// A fresh, empty directory under the system temp dir, unique to this process.
inline std::filesystem::path scratch_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("g4_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// `ranks` CPU ranks under mpirun, one thread each (the env argument of run_g4); has_mpirun() first.
inline std::string mpirun_env(int ranks) {
  return "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np " +
         std::to_string(ranks);
}
inline bool has_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

}  // namespace g4::test

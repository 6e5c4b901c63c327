// Re-runs this binary under mpirun with 2 and 4 ranks; the ranks run MpiRanks.* (mpi_ranks_test.cpp)
// and the launch passes when every rank passes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "parallel_test_util.h"

namespace g4::parallel {
namespace {

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');)
    if (!dir.empty() && ::access((std::filesystem::path(dir) / program).c_str(), X_OK) == 0) return true;
  return false;
}

struct Run {
  int code = -1;
  std::string output;
};

Run run(const std::string& command) {
  Run r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), p)) r.output += buf.data();
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

void run_ranks(int ranks) {
  if (testing::in_mpi_child()) GTEST_SKIP() << "already inside mpirun";
  if (!on_path("mpirun"))
    GTEST_SKIP() << "mpirun not found on PATH: install openmpi-bin (scripts/install_deps.sh) to run the "
                    "multi-rank tests";
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // --oversubscribe: more ranks than cores (CI has 2); --timeout: a deadlock fails instead of hanging.
  // One thread per rank (OpenMP, OpenBLAS): the ranks already fill the cores, and threads that
  // spin-wait for cores other ranks hold make the model tests several times slower.
  const std::string command =
      std::string(testing::kMpiChildVariable) +
      "=1 mpirun --oversubscribe --allow-run-as-root --timeout 120 "
      "-x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 -np " +
      std::to_string(ranks) + " '" + self + "' --gtest_filter='MpiRanks.*' --gtest_brief=1 --gtest_color=no";
  const Run r = run(command);
  EXPECT_EQ(r.code, 0) << command << "\n" << r.output;
  EXPECT_EQ(count(r.output, "[  PASSED  ]"), ranks) << r.output;
  EXPECT_EQ(count(r.output, "[  FAILED  ]"), 0) << r.output;
  EXPECT_EQ(count(r.output, "[  SKIPPED ]"), 0) << r.output;
}

TEST(MpiLaunch, TwoRanks) {
  run_ranks(2);
}
TEST(MpiLaunch, FourRanks) {
  run_ranks(4);
}

}  // namespace
}  // namespace g4::parallel

// GPU tests that need several ranks: the launcher-side test re-runs this test binary under
// `mpirun -np N` with a gtest filter for the rank-side suite (which runs only as an MPI child,
// G4_SKIP_UNLESS_MPI_CHILD), then checks every rank passed every test.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/device_memory.h"
#include "parallel/parallel_test_util.h"
#include "support/g4_process.h"

namespace g4::test {

inline bool mpirun_available() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

// Occurrences of `what` in `text`.
inline int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The mpirun prefix the tests use (ranks oversubscribe the machine's cores and may run as root).
inline std::string mpirun_prefix(int ranks) {
  return "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root --timeout 600 -np " +
         std::to_string(ranks);
}

// Every rank sees the same one GPU (the first this process sees), so that the ranks share it
// on any machine: the host-staged path, whatever the number of GPUs.
inline std::string one_gpu_env() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string v = visible && *visible ? visible : "0";
  return "CUDA_VISIBLE_DEVICES=" + v.substr(0, v.find(','));
}

// Runs `filter` (the rank-side suite) on `ranks` ranks of this binary; expects `tests` tests to
// pass on every rank, none to fail, and exactly `skipped` to be skipped on every rank (a test meant
// for another number of ranks). `env` goes in front ("A=1 B=2"). The count of passes is what makes
// the launch decisive: ranks that skipped everything (not seen as MPI children, no GPU) would
// otherwise exit 0 with nothing checked.
inline void expect_ranks_pass(int ranks, const std::string& filter, int tests, const std::string& env = "",
                              int skipped = 0) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string command = env + " " + std::string(parallel::testing::kMpiChildVariable) + "=1 " +
                              mpirun_prefix(ranks) + " '" + self + "' --gtest_filter='" + filter +
                              "' --gtest_brief=0 --gtest_color=no 2>&1";
  // The ranks share this process's GPU: first give back the blocks this process's pool keeps from
  // earlier tests (on an 80 GB H100 the whole suite left too little for the ranks' contexts).
  release_cached_device_memory();
  const ProcessResult r = run_shell(command);
  std::printf("%s", r.output.c_str());  // the ranks' printed comparisons
  EXPECT_EQ(r.code, 0) << command << "\n" << r.output;
  EXPECT_EQ(count_of(r.output, "[       OK ]"), ranks * tests) << r.output;
  EXPECT_EQ(count_of(r.output, "[  FAILED  ]"), 0) << r.output;
  int skips = 0;  // the per-test lines only: "[  SKIPPED ] Suite.Name (N ms)"
  for (size_t at = r.output.find("[  SKIPPED ]"); at != std::string::npos; at = r.output.find("[  SKIPPED ]", at + 1)) {
    const size_t end = r.output.find('\n', at);
    const std::string line = r.output.substr(at, end == std::string::npos ? std::string::npos : end - at);
    skips += line.size() >= 4 && line.compare(line.size() - 4, 4, " ms)") == 0;
  }
  EXPECT_EQ(skips, ranks * skipped) << r.output;
}

}  // namespace g4::test

// g4 launch -n N <g4 args...>: N local ranks of one g4 command, their output prefixed by rank.
//
// The ranks talk over MPI on CPUs (and bootstrap NCCL over it on GPUs), and an MPI job of several
// processes can only be started by an MPI launcher: processes forked with rank variables alone
// would each be a one-process MPI_COMM_WORLD. So for N > 1 `g4 launch` hands the job to Open MPI's
// mpirun, which starts every rank and kills the others when one fails; each rank is a small
// wrapper (`g4 launch-rank`, hidden) that sets torchrun-style variables (RANK, WORLD_SIZE,
// LOCAL_RANK), forks and execs the real g4 command, and prefixes each of its lines with
// "[rank r] ". N = 1 needs no mpirun.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "parallel/world.h"

namespace g4::cli {

namespace {

std::string self_path() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

[[noreturn]] void exec_or_die(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  std::fprintf(stderr, "g4 launch: cannot run %s: %s\n", argv[0].c_str(), std::strerror(errno));
  std::_Exit(127);
}

// Copies `fd` to `out` line by line, each line prefixed; a last line without a newline is
// completed. Whole lines are written at once, so lines of different ranks do not interleave.
void forward_lines(int fd, FILE* out, const std::string& prefix) {
  std::string pending;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      const std::string line = prefix + pending.substr(start, nl - start + 1);
      std::fwrite(line.data(), 1, line.size(), out);
      std::fflush(out);
    }
    pending.erase(0, start);
  }
  if (!pending.empty()) {
    const std::string line = prefix + pending + "\n";
    std::fwrite(line.data(), 1, line.size(), out);
    std::fflush(out);
  }
  ::close(fd);
}

pid_t g_child = 0;
void forward_signal(int sig) {
  if (g_child > 0) ::kill(g_child, sig);
}

// Runs `self args` as rank `info.rank`, prefixing its output; returns its exit status
// (128 + signal when it was killed).
int run_rank(const parallel::LaunchInfo& info, const std::vector<std::string>& args) {
  ::setenv("RANK", std::to_string(info.rank).c_str(), 1);
  ::setenv("WORLD_SIZE", std::to_string(info.size).c_str(), 1);
  ::setenv("LOCAL_RANK", std::to_string(info.local_rank).c_str(), 1);
  int out_pipe[2], err_pipe[2];
  G4_CHECK(::pipe(out_pipe) == 0 && ::pipe(err_pipe) == 0, "g4 launch: pipe: ", std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  G4_CHECK(pid >= 0, "g4 launch: fork: ", std::strerror(errno));
  if (pid == 0) {
    // The rank dies with its wrapper: when the launcher kills the wrapper, nothing is left behind.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) std::_Exit(1);
    ::dup2(out_pipe[1], STDOUT_FILENO);
    ::dup2(err_pipe[1], STDERR_FILENO);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    std::vector<std::string> argv{self_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    exec_or_die(argv);
  }
  g_child = pid;
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::signal(sig, forward_signal);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  const std::string prefix = "[rank " + std::to_string(info.rank) + "] ";
  std::thread err([&] { forward_lines(err_pipe[0], stderr, prefix); });
  forward_lines(out_pipe[0], stdout, prefix);
  err.join();
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

std::string unknown_command(CLI::App& app, const std::vector<std::string>& words) {
  CLI::App* at = &app;
  std::string path = "g4";
  for (const std::string& w : words) {
    if (w.empty() || w[0] == '-') return "";  // an option: CLI11 names its own mistakes
    const auto named = at->get_subcommands([&](CLI::App* s) { return s->get_name() == w; });
    if (named.empty()) {
      if (at->get_require_subcommand_min() == 0) return "";  // a positional argument of `at`
      std::string known;
      for (CLI::App* s : at->get_subcommands([](CLI::App* s) { return !s->get_group().empty(); }))
        known += (known.empty() ? "" : ", ") + s->get_name();
      return path + ": '" + w + "' is not a command (" + known + ")";
    }
    at = named.front();
    path += " " + w;
  }
  return "";
}

std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::filesystem::path p = std::filesystem::path(dir.empty() ? "." : dir) / program;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return "";
}

void add_launch(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("launch", "Run a g4 command as N local ranks (N > 1 under mpirun)");
  cmd->footer(
      "g4 launch -n N <g4 command...>, e.g. g4 launch -n 2 train recipe.yaml parallel.context_parallel=2\n"
      "Each line of output is prefixed with its rank ([rank r]); the exit status is non-zero when any rank\n"
      "fails, and the other ranks are then stopped. Each rank sees RANK, WORLD_SIZE and LOCAL_RANK.\n"
      "For N > 1 the ranks are started by Open MPI's mpirun, which must be on PATH: they talk over MPI,\n"
      "and only an MPI launcher can start an MPI job. On a cluster, use srun or mpirun directly.");
  struct Opts {
    int ranks = 1;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-n,--nproc", o->ranks, "number of ranks to start on this machine (1 to 256)")
      ->check(integer_in(1, kMaxLocalRanks));
  cmd->prefix_command();  // everything after the options is the g4 command each rank runs
  cmd->callback([&action, &app, o, cmd] {
    const std::vector<std::string> args = cmd->remaining();
    action = [&app, o, args] {
      G4_CHECK(!args.empty(), "g4 launch: give the g4 command each rank runs, e.g. g4 launch -n 2 train recipe.yaml");
      G4_CHECK(args[0] != "launch" && args[0] != "launch-rank", "g4 launch: the ranks' command cannot be '",
               args[0], "'");
      // Before N ranks start, each to print the same usage error.
      const std::string unknown = unknown_command(app, args);
      G4_CHECK(unknown.empty(), "g4 launch: ", unknown);
      const int n = o->ranks;
      if (n == 1) {
        parallel::LaunchInfo one;
        const int code = run_rank(one, args);
        if (code != 0) std::exit(code);
        return;
      }
      const std::string mpirun = find_on_path("mpirun");
      G4_CHECK(!mpirun.empty(), "g4 launch: -n ", n, " needs Open MPI's mpirun on PATH (install openmpi-bin): "
               "the ranks talk over MPI, and only an MPI launcher (mpirun, srun) can start an MPI job of ",
               n, " processes");
      // Each rank gets an equal share of the cores for its OpenMP/OpenBLAS threads, unless set.
      const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
      const std::string threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(n)));
      ::setenv("OMP_NUM_THREADS", threads.c_str(), 0);
      ::setenv("OPENBLAS_NUM_THREADS", threads.c_str(), 0);
      // One machine: more ranks than cores are allowed, and threads are not pinned to one core.
      std::vector<std::string> argv{mpirun, "-np", std::to_string(n), "--oversubscribe", "--bind-to", "none"};
      if (::geteuid() == 0) argv.push_back("--allow-run-as-root");
      argv.push_back(self_path());
      argv.push_back("launch-rank");
      argv.insert(argv.end(), args.begin(), args.end());
      std::fflush(stdout);
      exec_or_die(argv);
    };
  });

  // What mpirun starts for each rank of `g4 launch` (hidden from --help).
  auto* rank_cmd = app.add_subcommand("launch-rank", "");
  rank_cmd->group("");
  rank_cmd->prefix_command();
  rank_cmd->callback([&action, rank_cmd] {
    const std::vector<std::string> args = rank_cmd->remaining();
    action = [args] {
      G4_CHECK(!args.empty(), "g4 launch-rank: no command");
      const parallel::LaunchInfo info = parallel::detect_launch();
      const int code = run_rank(info, args);
      if (code != 0) std::exit(code);
    };
  });
}

}  // namespace g4::cli

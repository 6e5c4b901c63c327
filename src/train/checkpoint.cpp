#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "io/json_input.h"
#include "parallel/world.h"

namespace g4::train {

namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

}  // namespace

void maybe_fault(const char* where, int64_t step) {
  const char* kill_at = std::getenv("G4_FAULT_KILL");
  const char* fail_at = std::getenv("G4_FAULT_ERROR");
  if (!kill_at && !fail_at) return;
  const std::string here = std::string(where) + ":" + std::to_string(step);
  // G4_FAULT_RANK=r: only that rank of a multi-rank job faults (its peers must be stopped by the launcher).
  const char* only = std::getenv("G4_FAULT_RANK");
  if (only && std::to_string(parallel::detect_launch().rank) != only) return;
  if (kill_at && here == kill_at) ::kill(::getpid(), SIGKILL);
  G4_CHECK(!fail_at || here != fail_at, "G4_FAULT_ERROR: the failure asked for at ", here);
}

std::string optimizer_shard_name(int64_t rank, int64_t world_size) {
  return "optimizer-rank" + std::to_string(rank) + "-of" + std::to_string(world_size) + ".safetensors";
}

void remove_killed_writes(const std::string& dir, std::initializer_list<const char*> names) {
  if (!fs::is_directory(dir)) return;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    for (const char* name : names)
      if (e.is_regular_file() && file.rfind(std::string(name) + ".tmp.", 0) == 0) fs::remove(e.path());
  }
}

CheckpointManager::CheckpointManager(std::string dir, int64_t keep, parallel::Communicator& world)
    : dir_(std::move(dir)), keep_(keep), world_(world) {
  // A run killed while writing a checkpoint leaves its temporary directory (named after that
  // run's pid, which no later run shares): nothing will complete it, so it goes; so does the
  // temporary file of the `latest` pointer, killed between its write and its rename.
  if (world_.rank() != 0 || !fs::is_directory(dir_)) return;
  remove_killed_writes(dir_, {"latest"});
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind(".step-", 0) == 0 && name.find(".tmp.") != std::string::npos)
      fs::remove_all(e.path());
  }
}

std::string CheckpointManager::save(int64_t step) {
  const bool main_rank = world_.rank() == 0;
  const fs::path final_dir = fs::path(dir_) / step_name(step);
  // Every rank writes into the same temporary directory, so its name is agreed (rank 0's pid).
  Tensor pid = Tensor::from_vector<int64_t>({main_rank ? static_cast<int64_t>(::getpid()) : 0}, {1});
  parallel::broadcast_values(world_, pid, 0);
  const fs::path tmp = fs::path(dir_) / ("." + step_name(step) + ".tmp." + std::to_string(pid.data<int64_t>()[0]));
  if (main_rank) {
    fs::create_directories(dir_);
    fs::remove_all(tmp);
    fs::create_directories(tmp);
  }
  world_.barrier();
  nlohmann::json state = {{"step", step}, {"ranks", world_.size()}};
  for (size_t i = 0; i < parts_.size(); ++i) {
    parts_[i]->save(tmp, state);
    if (i == 0) maybe_fault("checkpoint", step);  // halfway: the first part is written, the rest not
  }
  world_.barrier();  // every shard is written before the directory becomes a checkpoint
  if (main_rank) publish(tmp, final_dir, state);
  // Ranks do not race ahead of a checkpoint they might resume from.
  world_.barrier();
  return final_dir.string();
}

void CheckpointManager::publish(const fs::path& tmp, const fs::path& final_dir, const nlohmann::json& state) {
  io::write_file_atomic((tmp / "trainer_state.json").string(), state.dump(2) + "\n");
  // Every file in tmp is on the disk already (written atomically); so are tmp's entries, and then the
  // rename, before `latest` names the checkpoint: a machine that loses power keeps a whole one.
  io::sync_to_disk(tmp.string());
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  io::sync_to_disk(dir_);
  io::write_file_atomic((fs::path(dir_) / "latest").string(), final_dir.filename().string() + "\n");

  if (keep_ > 0) {
    std::set<std::string> steps;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0)
        steps.insert(e.path().filename().string());
    while (static_cast<int64_t>(steps.size()) > keep_) {
      fs::remove_all(fs::path(dir_) / *steps.begin());
      steps.erase(steps.begin());
    }
  }
}

std::optional<std::string> CheckpointManager::latest() const { return latest_checkpoint(dir_); }

nlohmann::json CheckpointManager::load(const std::string& checkpoint_dir) {
  const nlohmann::json state = read_trainer_state(checkpoint_dir);
  for (CheckpointPart* p : parts_) p->load(checkpoint_dir, state);
  return state;
}

std::vector<std::string> complete_checkpoints(const std::string& dir) {
  std::vector<std::string> names;
  if (!fs::is_directory(dir)) return names;
  // Renamed step directories are complete by construction.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json"))
      names.push_back(name);
  }
  std::sort(names.rbegin(), names.rend());
  for (std::string& n : names) n = (fs::path(dir) / n).string();
  return names;
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const std::vector<std::string> all = complete_checkpoints(dir);
  if (all.empty()) return std::nullopt;
  return all.front();
}

std::optional<std::string> CheckpointManager::resume() {
  const std::vector<std::string> candidates = complete_checkpoints(dir_);
  std::string failures;
  std::vector<std::string> damaged;
  for (const std::string& c : candidates) {
    std::string error;
    try {
      load(c);
    } catch (const std::exception& e) {
      error = e.what();
    }
    // Every rank takes the same checkpoint: one rank's damaged shard sends all of them back.
    Tensor failed = Tensor::from_vector<double>({error.empty() ? 0.0 : 1.0}, {1});
    if (world_.size() > 1) parallel::all_reduce_values(world_, failed);
    if (failed.data<double>()[0] == 0) {
      // The damaged newer ones go out of the way, kept for inspection: left as step-*, they would
      // count as the newest for checkpoint.keep, which would delete the good checkpoints this run
      // writes (with keep 1, the only one) and keep the damaged one.
      if (world_.rank() == 0)
        for (const std::string& d : damaged) {
          const fs::path to = fs::path(d).parent_path() / ("damaged-" + fs::path(d).filename().string());
          std::error_code ec;
          fs::remove_all(to, ec);
          fs::rename(d, to, ec);
          std::cerr << "moved the damaged checkpoint " << d << " to " << to.string()
                    << (ec ? " failed: " + ec.message() : std::string()) << "\n";
        }
      return c;
    }
    const std::string why = error.empty() ? "another rank could not read it" : error;
    if (world_.rank() == 0 || !error.empty())
      std::cerr << "checkpoint " << c << " cannot be resumed (" << why << "); trying the one before\n";
    failures += "\n  " + c + ": " + why;
    damaged.push_back(c);
  }
  G4_CHECK(candidates.empty(), "no checkpoint in ", dir_, " can be resumed:", failures);
  return std::nullopt;
}

DirectoryLock::DirectoryLock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  G4_CHECK(!ec && fs::is_directory(dir), "cannot make the run directory ", dir, " (checkpoint.dir): ",
           ec ? ec.message() : "it exists and is not a directory");
  const std::string path = (fs::path(dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  G4_CHECK(fd_ >= 0, "cannot open the lock file ", path, ": ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {0};
    const ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
    ::close(fd_);
    fd_ = -1;
    G4_FAIL("another g4 run (pid ", n > 0 ? std::string(pid, static_cast<size_t>(n)) : std::string("?"),
            ") is writing checkpoints to ", dir, "; two runs must not share checkpoint.dir");
  }
  const std::string mine = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, mine.data(), mine.size(), 0) < 0) {
    // The pid is only for the message of a refused run; the lock itself holds.
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

nlohmann::json read_trainer_state(const std::string& checkpoint_dir) {
  const std::string path = trainer_state_path(checkpoint_dir);
  G4_CHECK(fs::exists(path), "checkpoint ", checkpoint_dir, " has no trainer_state.json");
  const nlohmann::json state = io::read_json_file(path, "trainer state", io::kMaxStateBytes);
  G4_CHECK(state.is_object(), "trainer state ", path, " must be a JSON object");
  return state;
}

std::string trainer_state_path(const std::filesystem::path& checkpoint_dir) {
  return (checkpoint_dir / "trainer_state.json").string();
}

}  // namespace g4::train

#include "train/checkpoint.h"

#include <unistd.h>

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

void write_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp);
    G4_CHECK(f.good(), "cannot write ", tmp.string());
    f << text;
    f.flush();
    G4_CHECK(f.good(), "writing ", tmp.string(), " failed (disk full?)");
  }
  fs::rename(tmp, path);
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

CheckpointManager::CheckpointManager(std::string dir, int64_t keep, parallel::Communicator& world)
    : dir_(std::move(dir)), keep_(keep), world_(world) {
  // A run killed while writing a checkpoint leaves its temporary directory (named after that
  // run's pid, which no later run shares): nothing will complete it, so it goes.
  if (world_.rank() != 0 || !fs::is_directory(dir_)) return;
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
  world_.broadcast(pid, 0);
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
  write_file_atomic(tmp / "trainer_state.json", state.dump(2) + "\n");
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  write_file_atomic(fs::path(dir_) / "latest", final_dir.filename().string() + "\n");

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

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  if (!fs::is_directory(dir)) return std::nullopt;
  // Renamed step directories are complete by construction; take the newest.
  std::string best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json") &&
        name > best)
      best = name;
  }
  if (best.empty()) return std::nullopt;
  return (fs::path(dir) / best).string();
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

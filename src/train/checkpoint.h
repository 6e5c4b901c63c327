// Training checkpoints, written and read by one CheckpointManager over the stateful parts of a
// run (weights, optimizer, data position, objective state, progress), each a CheckpointPart.
//
// A checkpoint is a directory `step-NNNNNNNN/` holding a Hugging Face checkpoint (config.json +
// safetensors that transformers loads), the tokenizer files, the optimizer's moments and
// trainer_state.json (one JSON object; each part writes its own keys: "step", "data_index",
// "optimizer_steps", "elapsed_s", "ranks", "recipe" ...). It is written under a temporary name and
// renamed when complete, and `latest` is replaced atomically after it, so a run killed at any
// moment resumes from the last complete checkpoint.
//
// Optimizer files: replicated runs write one optimizer.safetensors from rank 0; expert-parallel
// runs without fsdp keep different moments on every rank and write
// `optimizer-rank<r>-of<n>.safetensors` each (resumed on the same number of ranks); sharded
// (fsdp) runs add layout metadata to those files, so they resume on any number of ranks.
#pragma once
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"

namespace g4::train {

// One stateful part of a training run. Every rank calls save and load, in the same order.
class CheckpointPart {
 public:
  virtual ~CheckpointPart() = default;
  // Writes this rank's share of the part into `dir` (a fresh directory every rank sees) and, on
  // rank 0, its entries of trainer_state.json into `state`.
  virtual void save(const std::filesystem::path& dir, nlohmann::json& state) = 0;
  // Restores the part from the complete checkpoint `dir` and its trainer_state.json.
  virtual void load(const std::filesystem::path& dir, const nlohmann::json& state) = 0;
};

class CheckpointManager {
 public:
  // Checkpoints go to `dir`/step-N; all but the newest `keep` are removed (keep <= 0: keep all).
  // Temporary directories of checkpoints a killed run left half-written are removed (rank 0).
  CheckpointManager(std::string dir, int64_t keep, parallel::Communicator& world);

  // Parts are saved and loaded in the order they are added; the manager does not own them.
  void add(CheckpointPart& part) { parts_.push_back(&part); }

  // Collective over the world: writes checkpoint `step`; returns its directory.
  std::string save(int64_t step);
  // The newest complete checkpoint under the directory, if any (half-written ones are ignored).
  std::optional<std::string> latest() const;
  // Collective: restores every part from `checkpoint_dir`; returns its trainer_state.json.
  nlohmann::json load(const std::string& checkpoint_dir);
  // Collective: restores the newest checkpoint every rank reads without error, falling back to
  // older ones (saying so on stderr) when the newest is damaged, which are then renamed
  // damaged-step-* (kept, but never resumed or counted by `keep`); returns its directory, or
  // nothing when there is none. An error when every checkpoint is damaged (nothing renamed).
  std::optional<std::string> resume();

  const std::string& dir() const { return dir_; }

 private:
  // Rank 0: trainer_state.json, the rename to step-N, `latest`, and the pruning of old ones.
  void publish(const std::filesystem::path& tmp, const std::filesystem::path& final_dir, const nlohmann::json& state);

  std::string dir_;
  int64_t keep_;
  parallel::Communicator& world_;
  std::vector<CheckpointPart*> parts_;
};

// trainer_state.json of a checkpoint directory (a clear error when missing or not JSON).
nlohmann::json read_trainer_state(const std::string& checkpoint_dir);
// Its path, which parts name in errors about its fields (io::json_int(state, "step", path)).
std::string trainer_state_path(const std::filesystem::path& checkpoint_dir);

// The newest complete checkpoint under dir, if any.
std::optional<std::string> latest_checkpoint(const std::string& dir);
// Every complete checkpoint under dir, newest first.
std::vector<std::string> complete_checkpoints(const std::string& dir);

// Removes `dir`/<name>.tmp.<pid> for each of `names`: the temporary file io::write_file_atomic
// leaves when a run is killed between writing it and renaming it over <name>. Nothing will rename
// it (the pid was another run's); call it under the run directory's lock.
void remove_killed_writes(const std::string& dir, std::initializer_list<const char*> names);

// Holds `dir`/.lock (flock) for as long as it lives, so that two runs never write one checkpoint
// directory: a second one is refused with an error naming the directory and the holder's pid. The
// lock goes with the process, also when it is killed.
class DirectoryLock {
 public:
  explicit DirectoryLock(const std::string& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// "optimizer-rank<r>-of<n>.safetensors"
std::string optimizer_shard_name(int64_t rank, int64_t world_size);

// Test hook: G4_FAULT_KILL=checkpoint:N kills the process (SIGKILL) halfway through writing
// checkpoint N; G4_FAULT_KILL=step:N right after step N; G4_FAULT_ERROR=<where>:N raises an error
// there instead (an ordinary failure); with G4_FAULT_RANK=r, only rank r of a multi-rank job. Lets
// tests crash or fail a run (or one rank of it) on purpose.
void maybe_fault(const char* where, int64_t step);

}  // namespace g4::train

#include "train/checkpoint.h"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "parallel/single_communicator.h"
#include "parallel/world.h"
#include "train/optimizer_state.h"

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
  const char* spec = std::getenv("G4_FAULT_KILL");
  if (!spec) return;
  const std::string want = std::string(where) + ":" + std::to_string(step);
  // G4_FAULT_RANK=r: only that rank of a multi-rank job dies (its peers must be stopped by the launcher).
  const char* only = std::getenv("G4_FAULT_RANK");
  if (only && std::to_string(parallel::detect_launch().rank) != only) return;
  if (want == spec) ::kill(::getpid(), SIGKILL);
}

std::string optimizer_shard_name(int64_t rank, int64_t world_size) {
  return "optimizer-rank" + std::to_string(rank) + "-of" + std::to_string(world_size) + ".safetensors";
}

std::string save_checkpoint(const std::string& dir, const model::Gemma4& model, const AdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep) {
  parallel::SingleCommunicator single;
  return save_checkpoint(dir, &model, opt, state, tokenizer_path, keep, single, false);
}

namespace {

// The moments of a GPU optimizer copied to the host (the safetensors writer reads host memory);
// CPU tensors are passed through without a copy.
std::vector<std::pair<std::string, Tensor>> on_host(std::vector<std::pair<std::string, Tensor>> named) {
  for (auto& [name, t] : named)
    if (t.device() != Device::CPU) t = t.to(Device::CPU);
  return named;
}

// The checkpoint writing shared by every optimizer: write_optimizer(tmp) writes this rank's
// optimizer files into the temporary directory (after rank 0 created it).
std::string save_checkpoint_impl(const std::string& dir, const model::Gemma4* export_model, int64_t optimizer_steps,
                                 const std::function<void(const fs::path&)>& write_optimizer,
                                 const TrainerState& state, const std::string& tokenizer_path, int64_t keep,
                                 parallel::Communicator& world) {
  const bool main_rank = world.rank() == 0;
  const fs::path final_dir = fs::path(dir) / step_name(state.step);
  // Every rank writes into the same temporary directory, so its name is agreed (rank 0's pid).
  Tensor pid = Tensor::from_vector<int64_t>({main_rank ? static_cast<int64_t>(::getpid()) : 0}, {1});
  world.broadcast(pid, 0);
  const fs::path tmp =
      fs::path(dir) / ("." + step_name(state.step) + ".tmp." + std::to_string(pid.data<int64_t>()[0]));
  if (main_rank) {
    G4_CHECK(export_model, "save_checkpoint: rank 0 needs the model to export");
    fs::create_directories(dir);
    fs::remove_all(tmp);
    fs::create_directories(tmp);
  }
  world.barrier();
  write_optimizer(tmp);
  if (main_rank) {
    model::save_hf_checkpoint(*export_model, tmp.string());
    maybe_fault("checkpoint", state.step);
    if (!tokenizer_path.empty()) {
      const fs::path t(tokenizer_path);
      if (fs::is_directory(t)) {
        for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"})
          if (fs::exists(t / f)) fs::copy_file(t / f, tmp / f);
      } else if (fs::exists(t)) {
        fs::copy_file(t, tmp / t.filename());
      }
    }
  }
  world.barrier();  // every shard is written before the directory becomes a checkpoint
  if (!main_rank) return final_dir.string();
  nlohmann::json j = {{"step", state.step},
                      {"data_index", state.data_index},
                      {"optimizer_steps", optimizer_steps},
                      {"elapsed_s", state.elapsed_s},
                      {"ranks", world.size()},
                      {"recipe", state.recipe}};
  write_file_atomic(tmp / "trainer_state.json", j.dump(2) + "\n");
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  write_file_atomic(fs::path(dir) / "latest", step_name(state.step) + "\n");

  if (keep > 0) {
    std::set<std::string> steps;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0)
        steps.insert(e.path().filename().string());
    while (static_cast<int64_t>(steps.size()) > keep) {
      fs::remove_all(fs::path(dir) / *steps.begin());
      steps.erase(steps.begin());
    }
  }
  return final_dir.string();
}

}  // namespace

std::string save_checkpoint(const std::string& dir, const model::Gemma4* export_model, const AdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep,
                            parallel::Communicator& world, bool per_rank_optimizer) {
  auto write = [&](const fs::path& tmp) {
    if (per_rank_optimizer)
      io::save_safetensors((tmp / optimizer_shard_name(world.rank(), world.size())).string(), on_host(opt.state()));
    else if (world.rank() == 0)
      io::save_safetensors((tmp / "optimizer.safetensors").string(), on_host(opt.state()));
  };
  return save_checkpoint_impl(dir, export_model, opt.steps_taken(), write, state, tokenizer_path, keep, world);
}

std::string save_checkpoint(const std::string& dir, const model::Gemma4* export_model, const ShardedAdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep,
                            parallel::Communicator& world) {
  auto write = [&](const fs::path& tmp) {
    const auto tensors = opt.checkpoint_tensors();
    if (tensors.empty()) return;  // another rank writes the same slices
    io::save_safetensors((tmp / optimizer_shard_name(world.rank(), world.size())).string(), tensors,
                         {{kOptimizerMetadataKey, opt.checkpoint_metadata()}});
  };
  return save_checkpoint_impl(dir, export_model, opt.steps_taken(), write, state, tokenizer_path, keep, world);
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

TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, AdamW& opt) {
  return load_checkpoint(checkpoint_dir, model, opt, 0, 1);
}

namespace {

nlohmann::json read_trainer_state(const std::string& checkpoint_dir) {
  std::ifstream f(fs::path(checkpoint_dir) / "trainer_state.json");
  G4_CHECK(f.good(), "checkpoint ", checkpoint_dir, " has no trainer_state.json");
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    G4_FAIL("checkpoint ", checkpoint_dir, ": trainer_state.json is not valid JSON: ", e.what());
  }
}

TrainerState trainer_state_from(const nlohmann::json& j) {
  TrainerState s;
  s.step = j.at("step").get<int64_t>();
  s.data_index = j.at("data_index").get<int64_t>();
  s.elapsed_s = j.value("elapsed_s", 0.0);
  s.recipe = j.value("recipe", nlohmann::json());
  return s;
}

// The moments (whole replicated ones and this rank's expert slices, from whichever layout was
// saved) and the step count into opt; `shapes` is a model of the parameters' shapes and experts.
void load_moments(const std::string& checkpoint_dir, const nlohmann::json& j, const model::Gemma4& shapes, AdamW& opt,
                  int64_t rank, int64_t world_size) {
  const OptimizerStateReader reader(checkpoint_dir, j.value("ranks", int64_t{1}), rank, world_size);
  std::vector<std::pair<std::string, Tensor>> named;
  const model::ExpertRange held = shapes.experts();
  for (const std::string& n : opt.trainable()) {
    const Tensor& v = shapes.params().at(n).value();
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      Tensor t = model::split_by_expert(shapes.params().kind(n))
                     ? reader.experts(kind, n, held.begin, v.size(0))
                     : reader.replicated(kind, n, 0, v.numel()).reshape(v.shape());
      named.emplace_back(std::string(kind) + "." + n, std::move(t));
    }
  }
  opt.load_state(named, j.at("optimizer_steps").get<int64_t>());
}

}  // namespace

TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, AdamW& opt, int64_t rank,
                             int64_t world_size) {
  // A bf16 (or GPU) model: the weights go through an f32 host copy into opt's masters, so the
  // fp32 values the checkpoint holds are not rounded on the way in.
  if (model.device() != Device::CPU || model.dtype() == DType::BF16) {
    model::Gemma4 host(model.config(), model.experts());
    return load_checkpoint_with_masters(checkpoint_dir, host, opt, rank, world_size);
  }
  const nlohmann::json j = read_trainer_state(checkpoint_dir);
  model::load_hf_weights(model, io::SafetensorsReader::open(checkpoint_dir));
  load_moments(checkpoint_dir, j, model, opt, rank, world_size);
  return trainer_state_from(j);
}

TrainerState load_checkpoint_with_masters(const std::string& checkpoint_dir, model::Gemma4& host, AdamW& opt,
                                          int64_t rank, int64_t world_size) {
  G4_CHECK(host.device() == Device::CPU && host.dtype() == DType::F32, "load_checkpoint_with_masters: the host model ",
           "must be an f32 CPU model (it receives the checkpoint's exact values)");
  const nlohmann::json j = read_trainer_state(checkpoint_dir);
  model::load_hf_weights(host, io::SafetensorsReader::open(checkpoint_dir));
  opt.load_parameters(host.params());
  load_moments(checkpoint_dir, j, host, opt, rank, world_size);
  return trainer_state_from(j);
}

TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, ShardedAdamW& opt,
                             int64_t rank, int64_t world_size) {
  const nlohmann::json j = read_trainer_state(checkpoint_dir);
  opt.gather_parameters();  // the weights load into the whole parameters, then the slice is taken
  model::load_hf_weights(model, io::SafetensorsReader::open(checkpoint_dir));
  const OptimizerStateReader reader(checkpoint_dir, j.value("ranks", int64_t{1}), rank, world_size);
  opt.load_state(reader, j.at("optimizer_steps").get<int64_t>());
  return trainer_state_from(j);
}

}  // namespace g4::train

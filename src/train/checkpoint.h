// Training checkpoints. Each is a directory `step-NNNNNNNN/` holding a Hugging Face checkpoint
// (config.json + safetensors that transformers loads), the tokenizer files, the optimizer's
// moments (optimizer.safetensors) and trainer_state.json. A checkpoint is written under a
// temporary name and renamed when complete, and `latest` is replaced atomically after it, so a
// run killed at any moment resumes from the last complete checkpoint.
//
// Multi-rank runs (expert parallel) keep different optimizer moments on every rank: each rank then
// writes its own `optimizer-rank<r>-of<n>.safetensors` into the same step directory, and a resume
// reads the file of its rank (a different number of ranks is an error). Sharded (fsdp) runs add
// layout metadata to those files, so they resume on any number of ranks. Replicated runs write
// the single optimizer.safetensors from rank 0.
#pragma once
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "model/gemma4.h"
#include "parallel/communicator.h"
#include "train/adamw.h"
#include "train/sharded_adamw.h"

namespace g4::train {

struct TrainerState {
  int64_t step = 0;        // optimizer steps completed
  int64_t data_index = 0;  // micro-batches consumed
  double elapsed_s = 0;
  nlohmann::json recipe;
};

// Writes checkpoint `step` into dir; removes all but the newest `keep` (keep <= 0: keep all).
// The exported weights are `model`'s values, so a model trained in bf16 is saved from an f32 CPU
// model holding its masters (AdamW::copy_masters_to), never from the rounded copies; the moments
// may live on the GPU.
std::string save_checkpoint(const std::string& dir, const model::Gemma4& model, const AdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep);

// Collective over `world`: rank 0 writes export_model (the whole model; ignored on other ranks)
// and the trainer state; with per_rank_optimizer every rank writes its optimizer shard, otherwise
// rank 0 writes optimizer.safetensors. Returns the step directory.
std::string save_checkpoint(const std::string& dir, const model::Gemma4* export_model, const AdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep,
                            parallel::Communicator& world, bool per_rank_optimizer);

// The same for sharded data parallelism (parallel.fsdp): the ranks that hold distinct slices
// write optimizer-rank<r>-of<n>.safetensors with the layout metadata that lets any other mesh
// re-split them (optimizer_state.h); rank 0 writes export_model (gathered whole).
std::string save_checkpoint(const std::string& dir, const model::Gemma4* export_model, const ShardedAdamW& opt,
                            const TrainerState& state, const std::string& tokenizer_path, int64_t keep,
                            parallel::Communicator& world);

// The newest complete checkpoint under dir, if any (half-written ones are ignored).
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Restores weights, optimizer moments and returns the trainer state.
TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, AdamW& opt);
// The same for rank `rank` of `world_size`. The moments come from optimizer.safetensors, from a
// sharded (fsdp) checkpoint of any mesh, re-split for this rank, or from this rank's own
// optimizer-rank<rank>-of<world_size>.safetensors (expert parallelism without fsdp: the same
// number of ranks only).
TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, AdamW& opt, int64_t rank,
                             int64_t world_size);
// A model that trains through fp32 masters (bf16 compute copies, or any model on the GPU) takes
// its weights this way: they are read exactly into `host`, an f32 CPU model of the same shape and
// experts, and from it into opt's masters (exactly) and into every parameter and buffer of opt's
// store (converted; the bf16 copies are the masters rounded as AdamW rounds them); then the
// moments and step as above. The trainer keeps `host` for checkpoints and samples; the overload
// above does the same through a temporary host model when handed a bf16 or GPU model.
TrainerState load_checkpoint_with_masters(const std::string& checkpoint_dir, model::Gemma4& host, AdamW& opt,
                                          int64_t rank = 0, int64_t world_size = 1);
// Into a sharded optimizer (collective over its dp group): the whole weights are loaded, then
// each rank keeps its slice; moments are re-split from any layout.
TrainerState load_checkpoint(const std::string& checkpoint_dir, model::Gemma4& model, ShardedAdamW& opt,
                             int64_t rank, int64_t world_size);

// "optimizer-rank<r>-of<n>.safetensors"
std::string optimizer_shard_name(int64_t rank, int64_t world_size);

// Test hook: G4_FAULT_KILL=checkpoint:N kills the process (SIGKILL) halfway through writing
// checkpoint N; G4_FAULT_KILL=step:N right after step N; with G4_FAULT_RANK=r, only rank r of a
// multi-rank job. Lets tests crash a run (or one rank of it) on purpose.
void maybe_fault(const char* where, int64_t step);

}  // namespace g4::train

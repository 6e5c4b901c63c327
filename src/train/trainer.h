// `g4 train`: supervised training from a recipe. The run is made of parts (train/*.h): the
// model, the device mesh, an Objective (SFT, or one the caller supplies) that owns its batches
// and loss, an Optimizer (replicated or sharded AdamW with the fp32 masters), a CheckpointManager
// over the stateful parts, and train_step, which every objective shares. This file sets them up
// from the recipe, runs the loop and reports. Runs on the CPU ranks, or on one GPU (recipe key
// train.device: cuda) in bf16 with fp32 masters.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/gemma4.h"
#include "parallel/device_mesh.h"
#include "train/objective.h"
#include "train/recipe.h"

namespace g4::train {

struct TrainResult {
  int64_t steps = 0;
  double last_train_loss = 0, last_validation_loss = 0, unigram_entropy = 0;
  std::string checkpoint;  // final checkpoint directory
  double tokens_per_s = 0;    // trained tokens per second of this run's training loop
  int64_t device_peak_bytes = 0;  // GPU runs: peak bytes of tensors on the GPU during the loop
};

// An objective that g4 train runs instead of SFT, built by a layer above train (the CLI builds
// block diffusion's from src/diffusion for a kDiffusion recipe), with what the run reports of it.
struct CustomObjective {
  std::unique_ptr<Objective> objective;
  std::string data_lines;       // the plan's lines about the data, each ending in a newline
  int64_t tokens_per_step = 0;  // tokens a step trains on, over every rank (throughput)
  double unigram_entropy = 0;   // of the trained tokens: the baseline loss in the summary
  bool has_validation = false;
};
// Called once the model, tokenizer and mesh exist (the objective's configure() comes after).
using ObjectiveFactory = std::function<CustomObjective(const Recipe&, const io::Tokenizer&, parallel::DeviceMesh&)>;

// `resume`: continue from the newest complete checkpoint in the recipe's output directory.
// `custom` (if set) supplies the objective; otherwise SFT over the recipe's packed data.
TrainResult run_training(const Recipe& recipe, bool resume, const ObjectiveFactory& custom = {});

// The model a recipe names: a Hugging Face checkpoint, or a built-in shape initialised as
// transformers initialises Gemma 4.
// experts: keep only these routed experts (the empty range: all; parallel::expert_range gives an
// expert-parallel rank's share).
std::unique_ptr<model::Gemma4> build_model(const Recipe& recipe, model::ExpertRange experts = {});
// The config of the model a recipe names.
io::ModelConfig model_config(const Recipe& recipe);

}  // namespace g4::train

// What `g4 train` shows: the plan before the first step, per-step expert load, the loss picture,
// the summary and text samples at the end.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "io/tokenizer.h"
#include "model/gemma4.h"
#include "parallel/device_mesh.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace g4::train {

// The lines printed before training (model, data, steps and parallel layout, device).
// `parameters`: the model's whole count (a sharded model's own store holds slices); `data_lines`:
// what the objective says of its data (describe_data for SFT's packed rows).
void print_plan(const Recipe& r, const model::Gemma4& model, int64_t parameters, size_t trainable_tensors,
                const std::string& data_lines, const parallel::MeshShape& mesh, int64_t tokens_per_step,
                int64_t padded_len);
// Packed data's plan lines: documents, tokens, rows, and the unigram-entropy baseline.
std::string describe_data(const data::PackedDataset& data, int64_t seq_len, double validation_fraction);

// Collective over `world`: the step's token rows per expert of every MoE layer, summed over all
// ranks (a rank counts the rows its own experts processed: under expert parallelism those came
// from its whole EP group, otherwise from its own tokens), into rec["expert_tokens"] =
// {layer: [rows of expert 0, 1, ...]} and rec["expert_load_max"] = the busiest expert's rows over
// the mean (1 is perfect balance; top-k routing sends every token to k experts).
void add_expert_load(nlohmann::json& rec, const std::map<int64_t, std::vector<int64_t>>& rows,
                     const model::Gemma4& model, parallel::Communicator& world);

// loss.svg from every record of the metrics log (earlier runs of a resumed training included).
// Returns the SVG's path.
std::string write_loss_picture(const std::string& output_dir, const std::vector<nlohmann::json>& log);

struct SummaryFacts {
  double total_s = 0;
  int64_t steps_this_run = 0;
  int64_t tokens_per_step = 0;
  bool has_validation = false;
  std::string metrics_path, svg_path;
};
void print_summary(const Recipe& r, const TrainResult& result, const SummaryFacts& facts);

// r.samples continuations of r.sample_prompt, sampled from an f32 CPU model, one line each.
std::string render_samples(const model::Gemma4& m, const io::Tokenizer& tok, const Recipe& r);

}  // namespace g4::train

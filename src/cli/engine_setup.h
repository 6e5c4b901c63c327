// What `g4 serve` and `g4 generate --prompts` share: the options of the generation engine, and
// loading the model (on the chosen device) with its tokenizer.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "generate/engine.h"
#include "io/tokenizer.h"
#include "model/gemma4.h"

namespace g4::cli {

struct EngineSetup {
  std::string model_dir, tokenizer, device = "cpu";
  gen::EngineOptions engine;
};

// --device, --page-size, --num-pages, --memory-fraction, --max-running, --max-step-tokens
std::vector<CLI::Option*> add_engine_options(CLI::App* cmd, EngineSetup& setup);

// The tokenizer of `model_dir` (or the file/directory `tokenizer` when given); null when the model
// directory has none and none was given.
std::unique_ptr<io::Tokenizer> model_tokenizer(const std::string& model_dir, const std::string& tokenizer);

// The text of generated ids. Ids past the tokenizer (a model vocabulary larger than its
// tokenizer's, or a --tokenizer of a smaller one) have no text and are left out, as in the engine's
// text stream, rather than failing after the whole generation.
std::string decode_generated(const io::Tokenizer& tok, const std::vector<int64_t>& ids);

struct LoadedModel {
  std::unique_ptr<model::Gemma4> model;
  std::unique_ptr<io::Tokenizer> tokenizer;
};

// Loads the model (bf16 on the GPU for --device cuda) and its tokenizer.
LoadedModel load_for_generation(const EngineSetup& setup);

// One line on what the engine's KV pools hold (pages, tokens, sliding windows), so that a user sees
// how many sequences of what length a GPU's memory takes before the scheduler preempts.
std::string describe_pools(const gen::Engine& engine, const io::ModelConfig& cfg, int64_t page_size);

}  // namespace g4::cli

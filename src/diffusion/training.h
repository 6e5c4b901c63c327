// `g4 train` on a block-diffusion recipe (a recipe with a dllm section): the examples from the
// recipe's data files and the DiffusionObjective the trainer runs (docs/diffusion.md "Training").
// The train layer does not know this objective; the CLI hands recipe_objective to run_training.
#pragma once
#include <vector>

#include "data/dataset.h"
#include "diffusion/objective.h"
#include "train/trainer.h"

namespace g4::diffusion {

struct DllmExamples {
  std::vector<DllmExample> train, validation;
  int64_t documents = 0, skipped = 0;  // skipped: no response token within the sequence length
  double unigram_entropy = 0;          // of the training responses' tokens
};

// Single-turn chat conversations become one example each (prompt = everything before the reply;
// the reply and its closing <turn|> are the response); a conversation with several replies is an
// error naming it. Plain text is cut into consecutive examples of prompt_tokens +
// continuation_tokens tokens (a document's tail too short for one is dropped). Whole documents
// go to validation (opt.validation_fraction, picked by opt.seed); each split is shuffled by
// opt.seed.
DllmExamples load_examples(const data::DataOptions& opt, const io::Tokenizer& tok, int64_t prompt_tokens,
                           int64_t continuation_tokens);

// The ObjectiveFactory of a kDiffusion recipe.
train::CustomObjective recipe_objective(const train::Recipe& r, const io::Tokenizer& tok, parallel::DeviceMesh& mesh);

}  // namespace g4::diffusion

// g4 train RECIPE.yaml [key.path=value ...] [--resume]   g4 train --list-keys   and   g4 eval MODEL_DIR --data FILE...
// (add_recipe_command also serves g4 rl)
#include <algorithm>
#include <cmath>
#include <iostream>

#include "cli/commands.h"
#include "diffusion/training.h"
#include "model/state_dict_adapter.h"
#include "train/recipe.h"
#include "train/run_setup.h"
#include "train/sft.h"
#include "train/trainer.h"

namespace g4::cli {

void add_recipe_command(CLI::App& app, Action& action, const std::string& name, const std::string& description,
                        train::Command command, std::function<void(const train::Recipe&, bool resume)> run) {
  auto* cmd = app.add_subcommand(name, description);
  struct Opts {
    std::string recipe;
    std::vector<std::string> overrides;
    bool resume = false, list_keys = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("recipe", o->recipe, "recipe YAML file");
  cmd->add_option("overrides", o->overrides, "recipe overrides, e.g. train.steps=20 optimizer.lr=3e-4");
  cmd->add_flag("--resume", o->resume, "continue from the newest complete checkpoint of this run");
  cmd->add_flag("--list-keys", o->list_keys, "print every recipe key with its type, default and meaning, and exit");
  cmd->callback([&action, o, command, run] {
    if (o->list_keys) {
      action = [command] {
        std::cout << train::recipe_key_listing(command);
        if (command == train::Command::kTrain)
          std::cout << "\nA recipe with a dllm section trains block diffusion (docs/diffusion.md); its keys:\n\n"
                    << train::recipe_key_listing(train::Command::kDiffusion);
      };
      return;
    }
    if (o->recipe.empty()) throw CLI::RequiredError("recipe (or --list-keys)");
    action = [o, command, run] { run(train::load_recipe(o->recipe, o->overrides, command), o->resume); };
  });
}

void add_train(CLI::App& app, Action& action) {
  add_recipe_command(app, action, "train", "Train or fine-tune from a YAML recipe (see recipes/)",
                     train::Command::kTrain, [](const train::Recipe& r, bool resume) {
                       train::run_training(r, resume,
                                           r.command == train::Command::kDiffusion ? diffusion::recipe_objective
                                                                                   : train::ObjectiveFactory());
                     });
}

void add_eval(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on text or JSONL data");
  struct Opts {
    std::string model, tokenizer, format = "auto", split = "paragraph";
    std::vector<std::string> data;
    int64_t seq_len = 256, batch_size = 4;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--data", o->data, "data files (.txt, .jsonl)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file or directory (default: the model directory)");
  cmd->add_option("--format", o->format, "auto | text | jsonl | chat");
  cmd->add_option("--text-split", o->split, "plain text documents: paragraph | line | file");
  cmd->add_option("--seq-len", o->seq_len, "packed row length")->check(positive_integer());
  cmd->add_option("--batch-size", o->batch_size, "rows per forward pass (the loss is the same for any)")->check(positive_integer());
  cmd->callback([&action, o] {
    action = [o] {
      const io::ModelConfig config = model::load_hf_config(o->model);
      const int64_t context = config.max_position_embeddings;  // 0 = not given
      G4_CHECK(context <= 0 || o->seq_len <= context, "--seq-len ", o->seq_len, " exceeds the context length of ",
               o->model, " (max_position_embeddings ", context, ")");
      // The tokenizer and the data files before the weights load (minutes for a large model).
      const std::string tokenizer = o->tokenizer.empty() ? o->model : o->tokenizer;
      const auto tok = io::load_tokenizer(tokenizer);
      train::check_tokenizer_fits(*tok, tokenizer, config.vocab_size);
      data::DataOptions d;
      d.files = o->data;
      d.format = o->format;
      d.text_split = o->split;
      d.seq_len = o->seq_len;
      d.seq_len_name = "--seq-len";
      d.max_soft_tokens_name.clear();  // eval keeps the processor's image budget
      d.validation_fraction = 0;
      d.image_processor = train::data_image_processor(o->model, config);
      d.video_processor = train::data_video_processor(o->model, config);
      const data::PackedDataset ds(d, *tok);
      // One pass over every row, in order of the first epoch, --batch-size rows a forward pass. Batch i
      // of size B holds rows iB .. iB + B - 1 of the stream, so the rows past the last whole batch go one
      // at a time: a batch running past the epoch's end would count rows of the next epoch twice.
      const int64_t rows = ds.train_rows();
      G4_CHECK(rows > 0, "g4 eval: the --data files hold no tokens to evaluate");
      // Each batch is made when it runs, so memory holds one batch, not the whole data's rows.
      const int64_t b = std::min(o->batch_size, rows), whole = rows / b;
      const auto model = model::load_hf_model(o->model);
      double sum = 0;  // of per-token losses
      int64_t tokens = 0;
      const auto evaluate = [&](const data::Batch& batch) {
        int64_t counted = 0;
        const double mean = train::evaluate_loss(*model, {batch}, &counted);
        if (counted > 0) sum += mean * static_cast<double>(counted);
        tokens += counted;
      };
      for (int64_t i = 0; i < whole; ++i) evaluate(ds.train_batch(b, i));
      for (int64_t r = whole * b; r < rows; ++r) evaluate(ds.train_batch(1, r));
      G4_CHECK(tokens > 0, "g4 eval: the --data files hold no token whose next token is a target (chat data without "
               "assistant turns, or one-token documents): there is no loss to measure");
      const double loss = sum / static_cast<double>(tokens);
      G4_CHECK(std::isfinite(loss), "the loss of ", o->model, " on the data is ", loss,
               ": the model's weights or outputs are not finite (NaN or infinite)");
      std::printf("loss %.4f  perplexity %.3f  over %lld tokens (%lld rows of %lld)\n", loss, std::exp(loss),
                  static_cast<long long>(tokens), static_cast<long long>(ds.train_rows()),
                  static_cast<long long>(o->seq_len));
    };
  });
}

}  // namespace g4::cli

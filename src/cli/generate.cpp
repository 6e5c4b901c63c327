// g4 generate MODEL_DIR (--prompt-ids 5,17,... | --prompt TEXT) --max-new-tokens N [--greedy | sampling]
// Prints the new token ids, and their text when the model directory (or --tokenizer) has a tokenizer.
#include <filesystem>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "generate/generator.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

namespace {
std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      G4_CHECK(used == item.size(), "");
    } catch (...) {
      G4_FAIL("--prompt-ids: '", item, "' is not an integer token id");
    }
  }
  G4_CHECK(!ids.empty(), "--prompt-ids is empty");
  return ids;
}
}  // namespace

void add_generate(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("generate", "Generate tokens with the paged KV cache engine");
  struct Opts {
    std::string model, prompt, text, tokenizer;
    gen::GenerateOptions gen;
    bool greedy = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->model, "Hugging Face model directory")->required();
  auto* ids_opt = cmd->add_option("--prompt-ids", o->prompt, "comma-separated prompt token ids");
  auto* text_opt = cmd->add_option("--prompt", o->text, "prompt text (needs a tokenizer; BOS is added)");
  ids_opt->excludes(text_opt);
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file or directory (default: the model directory)");
  cmd->add_option("--max-new-tokens", o->gen.max_new_tokens, "tokens to generate (prompt + N at most the model's context length)");
  cmd->add_flag("--greedy", o->greedy, "argmax decoding (default when no sampling option is given)");
  cmd->add_option("--temperature", o->gen.sampling.temperature, "sampling temperature (finite, >= 0)");
  cmd->add_option("--top-k", o->gen.sampling.top_k, "keep the k most likely tokens (0 = all)");
  cmd->add_option("--top-p", o->gen.sampling.top_p, "nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", o->gen.sampling.seed, "random seed for sampling");
  cmd->add_option("--stop-ids", o->gen.stop_ids, "stop a row after one of these ids")->delimiter(',');
  cmd->callback([&action, o, cmd] {
    const bool sampling = cmd->count("--temperature") + cmd->count("--top-k") + cmd->count("--top-p") > 0;
    if (sampling && o->greedy) throw CLI::ValidationError("--greedy cannot be combined with sampling options");
    // GenerateOptions default to greedy (temperature 0); a sampling option alone samples at 1.
    if (sampling && cmd->count("--temperature") == 0) o->gen.sampling.temperature = 1.0;
    action = [o] {
      G4_CHECK(!o->prompt.empty() || !o->text.empty(), "generate needs --prompt-ids or --prompt");
      // Out-of-range options are reported before a large model is loaded; the context length
      // is checked once the model and the prompt are known.
      gen::validate(o->gen, 0, 0, gen::OptionStyle::Flag);
      auto model = model::load_hf_model(o->model);
      namespace fs = std::filesystem;
      const std::string tok_path = o->tokenizer.empty() ? o->model : o->tokenizer;
      const bool has_tokenizer = !o->tokenizer.empty() || fs::exists(fs::path(o->model) / "tokenizer.json") ||
                                 fs::exists(fs::path(o->model) / "tokenizer.model");
      std::unique_ptr<io::Tokenizer> tok;
      if (has_tokenizer) tok = io::load_tokenizer(tok_path);
      std::vector<int64_t> prompt;
      if (!o->text.empty()) {
        G4_CHECK(tok, "--prompt needs a tokenizer: none in ", o->model, " (pass --tokenizer)");
        prompt.push_back(tok->bos_id);
        for (int32_t id : tok->encode(o->text)) prompt.push_back(id);
      } else {
        prompt = parse_ids(o->prompt);
      }
      for (int64_t id : prompt)
        G4_CHECK(id >= 0 && id < model->config().vocab_size, "--prompt-ids: token id ", id,
                 " is outside the vocabulary [0, ", model->config().vocab_size, ")");
      gen::validate(o->gen, static_cast<int64_t>(prompt.size()), model->config().max_position_embeddings,
                    gen::OptionStyle::Flag);
      const auto out = gen::generate(*model, {prompt}, o->gen);
      for (size_t i = prompt.size(); i < out[0].size(); ++i) std::cout << (i > prompt.size() ? "," : "") << out[0][i];
      std::cout << "\n";
      if (tok) {
        const std::vector<int32_t> fresh(out[0].begin() + static_cast<std::ptrdiff_t>(prompt.size()), out[0].end());
        std::cout << tok->decode(fresh) << "\n";
      }
    };
  });
}

}  // namespace g4::cli

// g4 generate MODEL_DIR (--prompt-ids 5,17,... | --prompt TEXT [--image F]... [--video F1,F2,...|DIR]...
//             [--video-fps F] [--video-frames N] [--audio F.wav]... [--chat]) --max-new-tokens N
//             [--greedy | sampling]
// Prints the new token ids, and their text when the model directory (or --tokenizer) has a tokenizer.
// Images, videos and clips are processed as `g4 forward --prompt` processes them (cli/media_prompt.h).
// g4 generate MODEL_DIR --prompts IN.jsonl --out OUT.jsonl [--chat] [sampling options] [engine options]
// runs one request per line on the batching engine (serve/prompts_file.h, docs/serving.md).
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "cli/generate_diffusion.h"
#include "cli/media_prompt.h"
#include "generate/generator.h"
#include "io/json_input.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"
#include "serve/prompts_file.h"

namespace g4::cli {

namespace {
// The flag's stop ids, checked against the model's vocabulary once it is loaded: the engine's own
// check would name a "Request" (or the first line of a prompts file) for the flag's mistake.
void check_stop_ids(const std::vector<int64_t>& ids, int64_t vocab) {
  for (int64_t id : ids)
    G4_CHECK(id >= 0 && id < vocab, "--stop-ids: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
}

struct FileOpts {
  std::string prompts, out;
  bool chat = false, overwrite = false;
  int64_t n = 1, logprobs = -1;
  EngineSetup setup;
};

// The command line's sampling options are the defaults of every line, which may override them.
void run_prompts_file(const FileOpts& f, const gen::GenerateOptions& g) {
  G4_CHECK(!f.out.empty(), "--prompts needs --out");
  if (!runs_in_this_rank("g4 generate", "--out")) return;
  // The flags are every line's defaults: checked once here, so that a bad flag is not reported
  // as a mistake of the first line.
  gen::validate(g, 0, 0, gen::OptionStyle::Flag);
  G4_CHECK(g.max_new_tokens >= 1, "--max-new-tokens must be >= 1 with --prompts, got ", g.max_new_tokens);
  // The bounds a line's "n" and "logprobs" have: the flags are the lines' defaults.
  G4_CHECK(f.n >= 1 && f.n <= serve::kMaxN, "--n must be in [1, ", serve::kMaxN, "], got ", f.n);
  G4_CHECK(f.logprobs >= -1 && f.logprobs <= serve::kMaxLogprobs, "--logprobs must be in [-1, ", serve::kMaxLogprobs,
           "] (-1: none), got ", f.logprobs);
  G4_CHECK(f.overwrite || !std::filesystem::exists(f.out), "--out ", f.out,
           " already exists; pass --overwrite to replace it");
  check_output_file(f.out, "--out", f.overwrite, f.setup.model_dir);
  check_output_not_input(f.out, "--out", f.prompts, "--prompts");
  check_output_not_input(f.out, "--out", f.setup.tokenizer, "--tokenizer");
  check_output_file_creatable(f.out, "--out");
  io::check_regular_file(f.prompts, "prompts file");  // its lines are read once the tokenizer is loaded
  LoadedModel loaded = load_for_generation(f.setup);
  check_stop_ids(g.stop_ids, loaded.model->config().vocab_size);
  serve::Defaults defaults;
  defaults.random_seed = false;
  gen::RequestOptions& d = defaults.options;
  d.max_tokens = g.max_new_tokens;
  d.sampling = g.sampling;
  d.stop_ids = g.stop_ids;
  d.n = f.n;
  d.logprobs = f.logprobs;
  const serve::ModelInfo info = serve::model_info(loaded.model->config(), loaded.tokenizer.get(), f.setup.model_dir);
  if (f.chat && loaded.tokenizer) data::warn_chat_tokenizer(*loaded.tokenizer, "the tokenizer of --chat");
  const auto requests = serve::read_prompts_file(f.prompts, f.chat, info, defaults);
  gen::EngineOptions engine_options = f.setup.engine;
  engine_options.tokenizer = loaded.tokenizer.get();
  gen::Engine engine(*loaded.model, engine_options);
  const serve::RunTotals t = serve::run_prompts(engine, requests, f.prompts, f.out, loaded.tokenizer.get());
  std::cerr << "g4 generate: " << t.requests << " requests, " << t.samples << " samples, " << t.prompt_tokens
            << " prompt tokens, " << t.generated_tokens << " generated in " << t.seconds << " s ("
            << (t.seconds > 0 ? double(t.generated_tokens) / t.seconds : 0.0) << " tokens/s) -> " << f.out << "\n";
}
}  // namespace

void add_generate(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("generate", "Generate tokens with the paged KV cache engine (one prompt, or a --prompts file)");
  struct Opts {
    std::string model, prompt, text, tokenizer;
    gen::GenerateOptions gen;
    bool greedy = false;
    FileOpts file;
    MediaPromptOptions media;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->model, "Hugging Face model directory")->required();
  auto* ids_opt = cmd->add_option("--prompt-ids", o->prompt, "comma-separated prompt token ids");
  auto* text_opt = cmd->add_option("--prompt", o->text, "prompt text (needs a tokenizer; BOS is added)");
  ids_opt->excludes(text_opt);
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file or directory (default: the model directory)");
  // The integer checks refuse the text CLI11 would clamp (18446744073709551615 read as 2^63 - 1) or
  // read as octal ("010"); ranges are gen::validate's (max_new_tokens >= 0 and within the context,
  // naming the prompt; top_k >= 0; stop ids in the vocabulary).
  cmd->add_option("--max-new-tokens", o->gen.max_new_tokens,
                  "tokens to generate (prompt + N at most the model's context length)")
      ->check(int64_text());
  cmd->add_flag("--greedy", o->greedy, "argmax decoding (default when no sampling option is given)");
  cmd->add_option("--temperature", o->gen.sampling.temperature, "sampling temperature (finite, >= 0)");
  cmd->add_option("--top-k", o->gen.sampling.top_k, "keep the k most likely tokens (0 = all)")->check(int64_text());
  cmd->add_option("--top-p", o->gen.sampling.top_p, "nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", o->gen.sampling.seed, "random seed for sampling")->check(unsigned_integer());
  cmd->add_option("--stop-ids", o->gen.stop_ids, "stop a row after one of these ids")
      ->delimiter(',')
      ->check(int64_text());
  auto* prompts_opt = cmd->add_option("--prompts", o->file.prompts,
                                      "JSONL file of requests, one per line (prompt, prompt_ids or messages, with "
                                      "per-request options as in the OpenAI API)");
  prompts_opt->excludes(ids_opt)->excludes(text_opt);
  cmd->add_option("--out", o->file.out, "JSONL file the --prompts results are written to")->needs(prompts_opt);
  cmd->add_flag("--chat", o->file.chat,
                "--prompts lines hold chat messages, or --prompt is one user turn (the Gemma 4 chat template)");
  add_media_options(cmd, o->media, text_opt, /*videos=*/true);
  cmd->add_flag("--overwrite", o->file.overwrite, "replace an existing --out file")->needs(prompts_opt);
  cmd->add_option("--min-p", o->gen.sampling.min_p, "keep tokens with p >= min_p * p_max (in [0, 1])");
  cmd->add_option("--n", o->file.n, "--prompts: samples per request")->needs(prompts_opt)->check(int64_text());
  cmd->add_option("--logprobs", o->file.logprobs,
                  "--prompts: report each token's log-prob and this many alternatives (-1: none)")
      ->needs(prompts_opt)
      ->check(int64_text());
  // The engine's options shape the batching of --prompts; --device applies to every way of prompting.
  for (CLI::Option* opt : add_engine_options(cmd, o->file.setup))
    if (opt->get_name() != "--device") opt->needs(prompts_opt);
  auto diffusion = add_diffusion_generate_options(cmd);
  cmd->callback([&action, o, cmd, diffusion] {
    const bool is_diffusion = is_diffusion_model(o->model);
    check_generate_flags(cmd, is_diffusion);
    if (is_diffusion) {
      DiffusionGenerateOptions& d = *diffusion;
      d.model = o->model;
      d.tokenizer = o->tokenizer;
      d.prompt_ids = o->prompt;
      d.prompt = o->text;
      d.prompts = o->file.prompts;
      d.out = o->file.out;
      d.overwrite = o->file.overwrite;
      if (cmd->count("--max-new-tokens")) d.max_new_tokens = o->gen.max_new_tokens;
      d.seed = o->gen.sampling.seed;
      d.device = o->file.setup.device;
      action = [diffusion] { run_diffusion_generate(*diffusion); };
      return;
    }
    const bool sampling =
        cmd->count("--temperature") + cmd->count("--top-k") + cmd->count("--top-p") + cmd->count("--min-p") > 0;
    if (sampling && o->greedy) throw CLI::ValidationError("--greedy cannot be combined with sampling options");
    // GenerateOptions default to greedy (temperature 0); a sampling option alone samples at 1.
    if (sampling && cmd->count("--temperature") == 0) o->gen.sampling.temperature = 1.0;
    if (!o->file.prompts.empty()) {
      o->file.setup.model_dir = o->model;
      o->file.setup.tokenizer = o->tokenizer;
      action = [o] { run_prompts_file(o->file, o->gen); };
      return;
    }
    action = [o] {
      G4_CHECK(!o->prompt.empty() || !o->text.empty(), "generate needs --prompt-ids or --prompt");
      G4_CHECK(!o->file.chat || !o->text.empty(), "--chat needs --prompt (or --prompts)");
      // Out-of-range options are reported before a large model is loaded; the context length
      // is checked once the model and the prompt are known.
      gen::validate(o->gen, 0, 0, gen::OptionStyle::Flag);
      std::unique_ptr<model::Gemma4> model = model::load_hf_model(o->model);
      if (o->file.setup.device == "cuda") model = model->copy_to(Device::CUDA, DType::BF16);
      const std::unique_ptr<io::Tokenizer> tok = model_tokenizer(o->model, o->tokenizer);
      std::vector<int64_t> prompt;
      gen::RequestMedia media;
      const bool multimodal =
          o->file.chat || !o->media.images.empty() || !o->media.audio.empty() || !o->media.videos.empty();
      if (multimodal) {
        G4_CHECK(tok, "--prompt needs a tokenizer: none in ", o->model, " (pass --tokenizer)");
        MediaPromptOptions p = o->media;
        p.text = o->text;
        p.chat = o->file.chat;
        const model::ForwardInputs in = media_prompt_inputs(*model, o->model, *tok, p);
        for (int64_t i = 0; i < in.input_ids.numel(); ++i) prompt.push_back(in.input_ids.data<int64_t>()[i]);
        media = {in.pixel_values, in.image_position_ids, in.input_features, in.input_features_mask,
                 in.pixel_values_videos, in.video_position_ids};
      } else if (!o->text.empty()) {
        G4_CHECK(tok, "--prompt needs a tokenizer: none in ", o->model, " (pass --tokenizer)");
        prompt.push_back(tok->bos_id);
        for (int32_t id : tok->encode(o->text)) prompt.push_back(id);
      } else {
        prompt = parse_token_ids(o->prompt, "--prompt-ids");
      }
      // Ids from --prompt come from the tokenizer: one past the model's vocabulary means a tokenizer
      // of another model, not a mistyped id.
      const char* source = o->prompt.empty() ? "--prompt: the tokenizer gave" : "--prompt-ids:";
      for (int64_t id : prompt)
        G4_CHECK(id >= 0 && id < model->config().vocab_size, source, " token id ", id,
                 " is outside the model's vocabulary [0, ", model->config().vocab_size, ")");
      gen::validate(o->gen, static_cast<int64_t>(prompt.size()), model->config().max_position_embeddings,
                    gen::OptionStyle::Flag);
      check_stop_ids(o->gen.stop_ids, model->config().vocab_size);
      const auto out = gen::generate(*model, {prompt}, o->gen, {media});
      for (size_t i = prompt.size(); i < out[0].size(); ++i) std::cout << (i > prompt.size() ? "," : "") << out[0][i];
      std::cout << "\n";
      if (tok)
        std::cout << decode_generated(*tok, {out[0].begin() + std::ptrdiff_t(prompt.size()), out[0].end()}) << "\n";
    };
  });
}

}  // namespace g4::cli

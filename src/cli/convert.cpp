// g4 convert IN_DIR OUT_DIR [--overwrite]: Hugging Face -> native -> Hugging Face (sharded when large), with
// the tokenizer and generation files copied alongside. --to-diffusion adapts an autoregressive Gemma 4 MoE
// checkpoint into a diffusion_gemma one (diffusion/from_autoregressive.h). --merge-lora ADAPTER_DIR writes the
// base with a PEFT LoRA adapter merged in (W + alpha/r·B·A; model/lora.h).
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "diffusion/from_autoregressive.h"
#include "io/json_input.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

namespace {

namespace fs = std::filesystem;

// Moves the model written in `staging` into `out` over the one there: the old model's files (weights,
// index, config and `side_files`) go first, then the new ones move in, config.json last, so that a kill
// in between leaves no config.json (a model that will not load) rather than a mix that does.
void replace_model(const fs::path& out, const fs::path& staging, const std::vector<std::string>& side_files) {
  remove_model_files(out.string());
  std::error_code ec;
  for (const std::string& f : side_files) {
    fs::remove(out / f, ec);  // the replaced model's, which need not match this one
    G4_CHECK(!ec, "convert --overwrite: cannot remove ", (out / f).string(), " of the old model: ", ec.message());
  }
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::directory_iterator(staging)) files.push_back(e.path());
  std::stable_partition(files.begin(), files.end(), [](const fs::path& p) { return p.filename() != "config.json"; });
  for (const fs::path& p : files) {
    fs::rename(p, out / p.filename(), ec);
    G4_CHECK(!ec, "convert --overwrite: cannot move ", p.string(), " to ", (out / p.filename()).string(), ": ",
             ec.message(), " (the new model's remaining files are in ", staging.string(), ")");
  }
  io::sync_to_disk(out.string());  // the moves (each file's data is on the disk since its atomic write)
  fs::remove(staging, ec);
}

}  // namespace

void add_convert(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("convert", "Load a Hugging Face checkpoint and write it back (round trip)");
  struct Opts {
    std::string in, out, merge_lora;
    double max_shard_gb = 5.0;
    bool overwrite = false, to_diffusion = false;
    int64_t canvas_length = 256;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("in_dir", o->in, "Hugging Face model directory")->required();
  cmd->add_option("out_dir", o->out, "output directory (created)")->required();
  // The shard size in bytes must fit a size_t.
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "largest safetensors shard, GiB (> 0)")
      ->check(real_in(0, 1e9, true));
  cmd->add_flag("--overwrite", o->overwrite, "replace the model already in OUT_DIR (never IN_DIR itself)");
  cmd->add_option("--merge-lora", o->merge_lora,
                  "a PEFT LoRA adapter directory (a g4 LoRA checkpoint's adapter/) merged into IN_DIR's weights");
  cmd->add_flag("--to-diffusion", o->to_diffusion,
                "adapt an autoregressive Gemma 4 MoE checkpoint into a diffusion_gemma one (docs/diffusion.md)");
  auto* canvas = cmd->add_option("--canvas-length", o->canvas_length,
                                 "--to-diffusion: the canvas (block) length (default 256, as transformers)")
                     ->check(int64_text());
  auto* seed = cmd->add_option("--seed", o->seed, "--to-diffusion: seed of the self-conditioning MLP's random init")
                   ->check(unsigned_integer());
  cmd->callback([&action, o, canvas, seed] {
    const bool adapt_options = canvas->count() > 0 || seed->count() > 0;
    action = [o, adapt_options] {
      G4_CHECK(o->to_diffusion || !adapt_options, "convert: --canvas-length and --seed only apply with --to-diffusion");
      // Checked here, not by CLI::PositiveNumber, whose message prints its range as a 300-digit number.
      G4_CHECK(o->canvas_length > 0, "convert: --canvas-length must be > 0, got ", o->canvas_length);
      if (!runs_in_this_rank("g4 convert", "OUT_DIR")) return;
      // The files copied beside the weights: a user's own in OUT_DIR are not replaced without --overwrite,
      // and IN_DIR's are checked before anything is written.
      std::vector<std::string> side_files{"generation_config.json"};
      side_files.insert(side_files.end(), io::kTokenizerFiles.begin(), io::kTokenizerFiles.end());
      side_files.push_back("chat_template.jinja");
      check_output_model_dir(o->out, "convert: OUT_DIR", o->overwrite, o->in, side_files);
      for (const std::string& f : side_files)
        if (std::error_code ec; fs::exists(fs::symlink_status(fs::path(o->in) / f, ec)))
          io::check_regular_file((fs::path(o->in) / f).string(), "IN_DIR's " + f);
      io::make_directories(o->out, "convert: OUT_DIR");  // before the load (minutes), so that a bad OUT_DIR costs none
      auto model = model::load_hf_model(o->in);
      if (!o->merge_lora.empty()) {
        model::apply_peft_adapter(*model, o->merge_lora);
        model = model::merge_lora(*model);
      }
      const fs::path generation = fs::path(o->in) / "generation_config.json";
      if (o->to_diffusion) {
        const nlohmann::json ar_generation =
            fs::exists(generation) ? io::read_json_file(generation.string(), "generation config", 1 << 20) : nullptr;
        model = diffusion::adapt_autoregressive(*model, o->canvas_length, o->seed, ar_generation);
      }
      // With --overwrite the new model is written whole beside the old one (in a folder inside OUT_DIR: the
      // same file system) and moved in only then, so a failure (a full disk) leaves the old model as it was.
      const fs::path out(o->out);
      const fs::path staging = o->overwrite ? out / (".g4-convert." + std::to_string(::getpid())) : fs::path();
      const fs::path target = o->overwrite ? staging : out;
      try {
        if (o->overwrite) io::make_directories(staging.string(), "convert: OUT_DIR");
        model::save_hf_checkpoint(*model, target.string(),
                                  static_cast<size_t>(o->max_shard_gb * double(size_t(1) << 30)));
        // An adapted model's generation_config.json is its own (save_hf_checkpoint wrote it).
        // Each whole or not at all (a full disk leaves no truncated tokenizer beside a complete model).
        for (const std::string& f : side_files) {
          if (o->to_diffusion && fs::path(f) == generation.filename()) continue;
          const fs::path src = fs::path(o->in) / f;
          if (std::error_code ec; fs::exists(src, ec))
            io::copy_file_atomic(src.string(), (target / f).string(), "IN_DIR's " + f);
        }
      } catch (...) {
        std::error_code ec;
        if (o->overwrite) fs::remove_all(staging, ec);
        throw;
      }
      if (o->overwrite) replace_model(out, staging, side_files);
      std::cout << "wrote " << o->out << " (" << model->params().numel() << " parameters"
                << (o->to_diffusion ? ", diffusion_gemma, canvas " + std::to_string(o->canvas_length) : "")
                << (o->merge_lora.empty() ? "" : ", LoRA " + o->merge_lora + " merged") << ")\n";
    };
  });
}

}  // namespace g4::cli

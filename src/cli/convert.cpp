// g4 convert IN_DIR OUT_DIR [--overwrite]: Hugging Face -> native -> Hugging Face (sharded when large), with
// the tokenizer and generation files copied alongside.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

void add_convert(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("convert", "Load a Hugging Face checkpoint and write it back (round trip)");
  struct Opts {
    std::string in, out;
    double max_shard_gb = 5.0;
    bool overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("in_dir", o->in, "Hugging Face model directory")->required();
  cmd->add_option("out_dir", o->out, "output directory (created)")->required();
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "largest safetensors shard, GiB")->check(CLI::PositiveNumber);
  cmd->add_flag("--overwrite", o->overwrite, "replace the model already in OUT_DIR (never IN_DIR itself)");
  cmd->callback([&action, o] {
    action = [o] {
      namespace fs = std::filesystem;
      check_output_model_dir(o->out, "convert: OUT_DIR", o->overwrite, o->in);
      auto model = model::load_hf_model(o->in);
      // Only once the input has loaded, so a bad IN_DIR leaves the old output as it was.
      if (o->overwrite) remove_model_files(o->out);
      model::save_hf_checkpoint(*model, o->out, static_cast<size_t>(o->max_shard_gb * double(size_t(1) << 30)));
      for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                            "special_tokens_map.json", "chat_template.jinja"}) {
        const fs::path src = fs::path(o->in) / f;
        const fs::path dst = fs::path(o->out) / f;
        if (fs::exists(src))
          fs::copy_file(src, dst, fs::copy_options::overwrite_existing);
        else if (o->overwrite)
          fs::remove(dst);  // the replaced model's, which need not match this one
      }
      std::cout << "wrote " << o->out << " (" << model->params().numel() << " parameters)\n";
    };
  });
}

}  // namespace g4::cli

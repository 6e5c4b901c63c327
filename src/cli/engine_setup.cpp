#include "cli/engine_setup.h"

#include <filesystem>
#include <sstream>

#include "cli/commands.h"
#include "generate/page_pool.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

std::vector<CLI::Option*> add_engine_options(CLI::App* cmd, EngineSetup& s) {
  std::vector<CLI::Option*> added;
  added.push_back(cmd->add_option("--device", s.device, "where the model runs: cpu (f32) or cuda (bf16)")
                      ->check(CLI::IsMember({"cpu", "cuda"})));
  added.push_back(
      cmd->add_option("--page-size", s.engine.page_size, "tokens per KV-cache page")->check(positive_integer()));
  added.push_back(
      cmd->add_option("--num-pages", s.engine.num_pages,
                      "KV-cache pages per attention kind (0 = sized from free GPU memory, or for --max-running "
                      "full-context sequences within 4 GiB on the CPU)")
          ->check(non_negative_integer()));
  added.push_back(
      cmd->add_option("--memory-fraction", s.engine.memory_fraction, "share of the free GPU memory given to the pages")
          ->check(real_in(0, 1)));
  added.push_back(cmd->add_option("--max-running", s.engine.max_running, "sequences in one decode step")
                      ->check(positive_integer()));
  added.push_back(cmd->add_option("--max-step-tokens", s.engine.max_step_tokens,
                                  "tokens in one forward (prefill chunks + decode rows)")
                      ->check(positive_integer()));
  return added;
}

std::unique_ptr<io::Tokenizer> model_tokenizer(const std::string& model_dir, const std::string& tokenizer) {
  namespace fs = std::filesystem;
  if (!tokenizer.empty()) return io::load_tokenizer(tokenizer);
  if (fs::exists(fs::path(model_dir) / "tokenizer.json") || fs::exists(fs::path(model_dir) / "tokenizer.model"))
    return io::load_tokenizer(model_dir);
  return nullptr;
}

std::string decode_generated(const io::Tokenizer& tok, const std::vector<int64_t>& ids) {
  std::vector<int32_t> known;
  for (int64_t id : ids)
    if (id >= 0 && id < tok.vocab_size()) known.push_back(static_cast<int32_t>(id));
  return tok.decode(known);
}

LoadedModel load_for_generation(const EngineSetup& s) {
  LoadedModel out;
  out.tokenizer = model_tokenizer(s.model_dir, s.tokenizer);
  out.model = model::load_hf_model(s.model_dir);
  if (s.device == "cuda") out.model = out.model->copy_to(Device::CUDA, DType::BF16);
  return out;
}

std::string describe_pools(const gen::Engine& engine, const io::ModelConfig& cfg, int64_t page_size) {
  const gen::PoolStats p = engine.stats();
  std::ostringstream line;
  line << "KV pages of " << page_size << " tokens: " << p.full_pages << " for the full-attention layers ("
       << p.full_pages * page_size << " tokens of context in all)";
  if (p.sliding_pages > 0 && cfg.sliding_window > 0) {
    const int64_t sequences = p.sliding_pages / gen::window_pages(cfg.sliding_window, page_size);
    line << ", " << p.sliding_pages << " for the sliding ones (" << sequences << " sequences at a full window of "
         << cfg.sliding_window << " tokens)";
  }
  return line.str();
}

}  // namespace g4::cli

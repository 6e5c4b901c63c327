// g4 bench rl: one GRPO step of `g4 rl` on the GPU at the real widths of a Gemma 4 model (random
// weights, --layers decoder layers, the built-in arithmetic prompts, by default NeMo-RL's recipe
// batch of 32 prompts x 16 samples), split into its stages:
// generation (the engine on the policy's weights), log-probs (the training forward over the
// rollouts), training (forward, backward and update) and the rest, with tokens/s of each, beside
// the shares other RL stacks publish. There is no weight-transfer stage: the engine reads the
// weights being trained.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <limits>

#include "cli/commands.h"
#include "core/device_memory.h"
#include "core/error.h"
#include "io/json_input.h"
#include "rl/rl_trainer.h"
#include "train/recipe.h"

namespace g4::cli {

namespace {

struct RlBenchOptions {
  std::string model = "gemma-4-e4b";
  // NeMo-RL's Gemma 4 recipes' batch: 32 prompts x 16 samples (RL.md section 6).
  int64_t layers = 4, prompts = 32, generations = 16, new_tokens = 256, max_running = 256;
  std::string tokenizer = "recipes/data/kjv-chat-tokenizer";
  uint64_t seed = 1234;
};

void bench_rl(const RlBenchOptions& o) {
  // The flags first, then the GPU: on a machine without one, a mistake in them is reported as such.
  check_bench_model("g4 bench rl", o.model, {"gemma-4-e4b", "gemma-4-26b-a4b", "gemma-4-31b"}, o.layers);
  std::error_code ec;
  G4_CHECK(std::filesystem::exists(o.tokenizer, ec), "g4 bench rl: --tokenizer ", o.tokenizer, " does not exist",
           io::relative_path_note(o.tokenizer));
  G4_CHECK(cuda_available(), "g4 bench rl needs a CUDA GPU (this build or machine has none)");
  // A folder of this process alone (removed at the end): two runs at once must not share one.
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("g4-bench-rl-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  // Step 1 warms up (kernels, allocator); step 2 is the one reported.
  const std::vector<std::string> keys = {
      "model.name=" + o.model,
      "model.config={num_hidden_layers: " + std::to_string(o.layers) + "}",
      "model.init_seed=" + std::to_string(o.seed),
      "tokenizer=" + o.tokenizer,
      "prompts.task=arithmetic",
      "grpo.num_prompts_per_step=" + std::to_string(o.prompts),
      "grpo.num_generations_per_prompt=" + std::to_string(o.generations),
      "generation.max_new_tokens=" + std::to_string(o.new_tokens),
      "generation.max_running=" + std::to_string(o.max_running),
      "train.micro_batch_tokens=8192",
      "train.device=cuda",
      "train.steps=2",
      "optimizer.lr=1e-6",
      "log.validation_every=0",
      "checkpoint.dir=" + dir,
  };
  const train::Recipe r = train::recipe_from_yaml("{}", "g4 bench rl", keys, train::Command::kRl);
  const rl::RlResult res = rl::run_rl(r, {.final_checkpoint = false});
  std::filesystem::remove_all(dir);
  const nlohmann::json& s = res.last_step;
  const double gen = s.at("generation_s"), lp = s.at("logprobs_s"), tr = s.at("training_s");
  const double total = s.at("step_s"), other = total - gen - lp - tr;
  std::printf("\n== g4 bench rl: %s, %lld layers, %lld prompts x %lld samples, %lld new tokens, %lld decoded together "
              "at most, %s ==\n",
              o.model.c_str(), static_cast<long long>(o.layers), static_cast<long long>(o.prompts),
              static_cast<long long>(o.generations), static_cast<long long>(o.new_tokens),
              static_cast<long long>(o.max_running), cuda_device_name().c_str());
  std::printf("%-16s %9s %7s %14s\n", "stage", "seconds", "share", "tokens/s");
  auto row = [&](const char* name, double sec, double tps) {
    std::printf("%-16s %9.3f %6.1f%% %14.0f\n", name, sec, 100 * sec / total, tps);
  };
  row("generation", gen, s.at("generation_tokens_per_s").get<double>());
  const double steps = s.at("generation_steps"), host = s.at("generation_host_s"),
               sampling = s.at("generation_sampling_s"), start = s.at("generation_engine_start_s"),
               scoring = s.at("generation_reward_s");
  std::printf("  of which: engine start %.3f s; %.0f engine steps: host %.3f s, sampling (waits for the GPU) "
              "%.3f s (%.2f ms a step together); scoring %.3f s; the rest %.3f s\n",
              start, steps, host, sampling, steps > 0 ? 1e3 * (host + sampling) / steps : 0.0, scoring,
              gen - start - host - sampling - scoring);
  row("log-probs", lp, s.at("logprobs_tokens_per_s").get<double>());
  row("training", tr, s.at("training_tokens_per_s").get<double>());
  row("weight transfer", 0, 0);
  row("other", other, 0);
  std::printf("%-16s %9.3f\n", "step", total);
  // How far the rollouts' log-probs are from the training forward's (RL.md section 5; docs/rl.md
  // says why random weights of several layers put it above a trained model's).
  if (s.contains("token_mult_prob_error_median"))
    std::printf("token_mult_prob_error (engine against the training forward, per token): mean %.6f, median %.6f, "
                "max %.4f\n",
                s.at("token_mult_prob_error").get<double>(), s.at("token_mult_prob_error_median").get<double>(),
                s.at("token_mult_prob_error_max").get<double>());
  std::printf("published splits: NeMo-RL async GRPO (RL#1052) generation 48.9%%, training 37.6%%, log-probs 7.2%%, "
              "weight sync 0.2%%; verl + SGLang (verl#1208) generation 77%%; refit of a 30B MoE 0.48-0.67 s (RL#2808)\n");
}

}  // namespace

void add_bench_rl(CLI::App& bench, Action& action) {
  auto* cmd = bench.add_subcommand("rl", "One GRPO step's time split (generation, log-probs, training) on the GPU");
  auto o = std::make_shared<RlBenchOptions>();
  cmd->add_option("--model", o->model, "gemma-4-e4b | gemma-4-26b-a4b | gemma-4-31b (real widths)");
  cmd->add_option("--layers", o->layers, "decoder layers")->check(positive_integer());
  cmd->add_option("--prompts", o->prompts, "prompts per step")->check(positive_integer());
  cmd->add_option("--generations", o->generations, "samples per prompt (2 or more: a GRPO group)")
      ->check(integer_in(2, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--new-tokens", o->new_tokens, "tokens per response (random weights rarely stop early)")
      ->check(positive_integer());
  cmd->add_option("--max-running", o->max_running, "sequences decoded together at most (generation.max_running)")
      ->check(positive_integer());
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer of the prompts");
  cmd->add_option("--seed", o->seed, "seed of the weights")->check(unsigned_integer());
  cmd->callback([&action, o] { action = [o] { bench_rl(*o); }; });
}

}  // namespace g4::cli

// g4 rl on one GPU: the rollouts' log-probs (the engine, bf16 weights being trained) against the
// training forward's (lp_prev) at real widths, for dense (E4B) and MoE (26B-A4B) models, through
// whole GRPO steps with updates in between.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "gpu/gpu_test.h"
#include "rl/rl_trainer.h"
#include "support/test_paths.h"
#include "train/recipe.h"

namespace g4 {
namespace {

TEST(GpuRl, RolloutLogprobsEqualTheTrainingForwardAtRealWidths) {
  G4_REQUIRE_GPU();
  for (const char* name : {"gemma-4-e4b", "gemma-4-26b-a4b"}) {
    SCOPED_TRACE(name);
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("g4_gpu_rl_" + std::string(name));
    std::filesystem::remove_all(dir);
    const std::vector<std::string> keys = {
        std::string("model.name=") + name,
        "model.config={num_hidden_layers: 2}",
        "tokenizer=" + test::source_dir() + "/recipes/data/kjv-chat-tokenizer",
        "prompts.task=arithmetic",
        "grpo.num_prompts_per_step=4",
        "grpo.num_generations_per_prompt=4",
        "generation.max_new_tokens=32",
        "reward.kind=regex",
        "reward.pattern='th'",
        "loss_fn.use_importance_sampling_correction=true",
        "loss_fn.truncated_importance_sampling_type=tis",
        "optimizer.lr=1e-5",
        "train.device=cuda",
        "train.steps=2",
        "log.validation_every=0",
        "checkpoint.dir=" + dir.string(),
    };
    const train::Recipe r = train::recipe_from_yaml("{}", "gpu rl test", keys, train::Command::kRl);
    const rl::RlResult res = rl::run_rl(r, {.final_checkpoint = false});
    const nlohmann::json& s = res.last_step;  // step 2: after one update
    const double mean = s.at("token_mult_prob_error").get<double>();
    const double median = s.at("token_mult_prob_error_median").get<double>();
    const double max = s.at("token_mult_prob_error_max").get<double>();
    std::printf("  %s: token_mult_prob_error mean %.6f median %.6f max %.6f, gen_kl_error %.2e over %.0f tokens\n",
                name, mean, median, max, s.at("gen_kl_error").get<double>(), s.at("generation_tokens").get<double>());
    EXPECT_LE(mean, 1.001);
    EXPECT_LT(s.at("gen_kl_error").get<double>(), 1e-3);
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace g4

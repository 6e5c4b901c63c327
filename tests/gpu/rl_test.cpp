// g4 rl on one GPU: the rollouts' log-probs (the engine, bf16 weights being trained) against the
// training forward's (lp_prev) at real widths, for dense (E4B) and MoE (26B-A4B) models, through
// whole GRPO steps with updates in between; and g4 rl on two ranks sharing the GPU against one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gpu/gpu_test.h"
#include "rank_launch.h"
#include "rl/rl_trainer.h"
#include "support/run_metrics.h"
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

// Two data-parallel ranks on one GPU (host-staged MPI) split each step's prompts and training rows
// and train as one rank does: the rollouts are seeded per prompt, not per rank, so step 1's
// rewards and lengths are the same; losses and gradient norms agree to bf16 noise (the ranks'
// batches have other shapes, and their gradients add in another order).
TEST(GpuRlRanks, TwoRanksOnOneGpuTrainLikeOne) {
  if (parallel::testing::in_mpi_child()) GTEST_SKIP() << "already inside mpirun";
  G4_REQUIRE_GPU();
  if (!test::mpirun_available()) GTEST_SKIP() << "mpirun not found on PATH (openmpi-bin)";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "g4_gpu_rl_ranks";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string recipe = (dir / "rl.yaml").string();
  std::ofstream(recipe) << "model: {name: tiny-dense, init_seed: 3, config: {num_hidden_layers: 2}}\n"
                        << "tokenizer: " << test::source_dir() << "/recipes/data/kjv-chat-tokenizer\n"
                        << "prompts: {task: arithmetic, task_difficulty: 1}\n"
                        << "grpo: {num_prompts_per_step: 4, num_generations_per_prompt: 4, seed: 5}\n"
                        << "generation: {max_new_tokens: 8}\n"
                        << "reward: {kind: regex, pattern: 'th'}\n"
                        << "optimizer: {lr: 1.0e-3}\n"
                        << "train: {device: cuda, steps: 3, micro_batch_tokens: 128}\n"
                        << "log: {validation_every: 0}\n";
  const auto run = [&](const std::string& launcher, const std::string& name) {
    const test::ProcessResult r = test::run_g4(launcher + "rl " + recipe + " checkpoint.every=0 checkpoint.dir=" +
                                                   (dir / name).string(),
                                               test::one_gpu_env() + " timeout 500");
    EXPECT_EQ(r.code, 0) << r.output;
    return test::records(dir / name);
  };
  const std::vector<nlohmann::json> one = run("", "one"), two = run("launch -n 2 ", "two");
  ASSERT_EQ(one.size(), 3u);
  ASSERT_EQ(two.size(), 3u);
  std::printf("  step  reward (1 rank / 2 ranks)   loss (1 / 2)            grad norm (1 / 2)\n");
  for (size_t s = 0; s < one.size(); ++s) {
    const double l1 = one[s]["loss"].get<double>(), l2 = two[s]["loss"].get<double>();
    const double g1 = one[s]["grad_norm"].get<double>(), g2 = two[s]["grad_norm"].get<double>();
    std::printf("  %4zu  %.4f / %.4f   %+.6f / %+.6f   %.6f / %.6f\n", s + 1, one[s]["reward"].get<double>(),
                two[s]["reward"].get<double>(), l1, l2, g1, g2);
    EXPECT_NEAR(l2, l1, 2e-2 * std::abs(l1) + 5e-3) << "step " << s + 1;
    EXPECT_NEAR(g2, g1, 5e-2 * g1) << "step " << s + 1;
  }
  EXPECT_EQ(one[0]["reward"], two[0]["reward"]);
  EXPECT_EQ(one[0]["response_length_mean"], two[0]["response_length_mean"]);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace g4

// g4 rl end to end on the CPU with a tiny random model: the metrics a step logs, on-policy
// agreement of the engine's and the training forward's log-probs, exact resume, and data-parallel
// ranks under g4 launch; LoRA adapters trained by GRPO.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/random.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"
#include "parallel/single_communicator.h"
#include "rl/grpo.h"
#include "rl/prompts.h"
#include "rl/rl_trainer.h"
#include "train/trainer.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/lora_model.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"
#include "train/recipe.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

// A tiny random policy on the built-in arithmetic task. Its responses are random text, so the
// reward is a regex that about a third of them match ("th"), which gives groups with mixed rewards.
std::string tiny_rl_recipe(const fs::path& dir) {
  const std::string path = (dir / "rl.yaml").string();
  std::ofstream(path) << "model: {name: tiny-dense, init_seed: 3, config: {num_hidden_layers: 2}}\n"
                      << "tokenizer: " << test::source_dir() << "/recipes/data/kjv-chat-tokenizer\n"
                      << "prompts: {task: arithmetic, task_difficulty: 1, task_validation_prompts: 4}\n"
                      << "grpo: {num_prompts_per_step: 3, num_generations_per_prompt: 4, seed: 5,\n"
                      << "       reward_scaling: {enabled: true, target_min: -1.0}}\n"
                      << "loss_fn: {ratio_clip_max: 0.28, ratio_clip_c: 10, use_importance_sampling_correction: true,\n"
                      << "          truncated_importance_sampling_type: tis}\n"
                      << "generation: {max_new_tokens: 6}\n"
                      << "reward: {kind: regex, pattern: 'th'}\n"
                      << "optimizer: {lr: 1.0e-3}\n"
                      << "schedule: {kind: constant}\n"
                      << "train: {steps: 3, micro_batch_tokens: 96}\n"
                      << "checkpoint: {dir: " << (dir / "run").string() << ", every: 1, keep: 5}\n"
                      << "log: {validation_every: 2}\n";
  return path;
}

std::vector<nlohmann::json> read_log(const fs::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(GrpoRun, LogsEveryStageAndAgreesWithTheEngineOnPolicy) {
  const fs::path dir = test::scratch_dir("grpo_run");
  const train::Recipe r = train::load_recipe(tiny_rl_recipe(dir), {}, train::Command::kRl);
  const rl::RlResult res = rl::run_rl(r);
  EXPECT_EQ(res.steps, 3);
  EXPECT_GE(res.first_validation_accuracy, 0.0);
  const std::vector<nlohmann::json> log = read_log(dir / "run" / "metrics.jsonl");
  int steps = 0, validations = 0;
  for (const nlohmann::json& rec : log) {
    if (rec.contains("validation_accuracy")) {
      ++validations;
      continue;
    }
    ++steps;
    for (const char* key : {"reward", "filtered_reward", "accuracy", "loss", "token_mult_prob_error", "gen_kl_error",
                            "generation_s", "logprobs_s", "training_s", "grad_norm", "lr", "response_length_mean",
                            "truncation_rate", "groups_kept", "approx_entropy", "clip_fraction",
                            "token_mult_prob_error_median", "token_mult_prob_error_max", "probs_ratio"})
      EXPECT_TRUE(rec.contains(key)) << key << " missing from " << rec.dump();
    // The engine and the training forward run the same f32 CPU kernels on the same weights.
    EXPECT_LT(rec["token_mult_prob_error_max"].get<double>(), 1.0001) << rec.dump();
    EXPECT_LT(std::abs(rec["gen_kl_error"].get<double>()), 1e-6) << rec.dump();
    // One optimizer step per GRPO step: the ratio is exactly 1 and nothing is clipped.
    EXPECT_NEAR(rec["probs_ratio"].get<double>(), 1.0, 1e-9) << rec.dump();
    EXPECT_EQ(rec["clip_fraction"].get<double>(), 0.0) << rec.dump();
    EXPECT_TRUE(std::isfinite(rec["loss"].get<double>()));
    EXPECT_GT(rec["grad_norm"].get<double>(), 0.0);
  }
  EXPECT_EQ(steps, 3);
  EXPECT_EQ(validations, 3);  // before the first step, at step 2 and at the end
  EXPECT_TRUE(fs::exists(dir / "run" / "reward.svg"));
  fs::remove_all(dir);
}

// Killed after step 2 and resumed, a run logs step 3 exactly as an uninterrupted one and ends
// with the same weights.
TEST(GrpoRun, ResumesExactly) {
  const fs::path dir = test::scratch_dir("grpo_resume");
  const std::string recipe = tiny_rl_recipe(dir);
  const std::string straight = (dir / "straight").string(), cut = (dir / "cut").string();
  rl::run_rl(train::load_recipe(recipe, {"checkpoint.dir=" + straight, "log.validation_every=0"}, train::Command::kRl));
  rl::run_rl(train::load_recipe(recipe, {"checkpoint.dir=" + cut, "log.validation_every=0", "train.steps=2"},
                                train::Command::kRl));
  rl::run_rl(train::load_recipe(recipe, {"checkpoint.dir=" + cut, "log.validation_every=0"}, train::Command::kRl),
             {.resume = true});
  const auto a = read_log(fs::path(straight) / "metrics.jsonl"), b = read_log(fs::path(cut) / "metrics.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (const char* key : {"reward", "loss", "grad_norm", "token_mult_prob_error", "response_length_mean"})
    EXPECT_EQ(a[2][key], b[2][key]) << key;
  std::ifstream wa(fs::path(straight) / "checkpoints" / "step-00000003" / "model.safetensors", std::ios::binary),
      wb(fs::path(cut) / "checkpoints" / "step-00000003" / "model.safetensors", std::ios::binary);
  ASSERT_TRUE(wa.good() && wb.good());
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(wa), {}, std::istreambuf_iterator<char>(wb)))
      << "the resumed run's weights differ";
  fs::remove_all(dir);
}

// lora.rank: the rollouts run the adapted policy (the engine's log-probs are the training forward's),
// only the adapters change, and each checkpoint holds them in PEFT's format beside the frozen base.
TEST(GrpoRun, LoraAdaptersTrainOnTheirOwn) {
  const fs::path dir = test::scratch_dir("grpo_lora");
  const train::Recipe r = train::load_recipe(
      tiny_rl_recipe(dir), {"lora.rank=4", "lora.alpha=8", "optimizer.lr=2e-2", "log.validation_every=0"},
      train::Command::kRl);
  EXPECT_EQ(rl::run_rl(r).steps, 3);
  const std::vector<nlohmann::json> log = read_log(dir / "run" / "metrics.jsonl");
  ASSERT_EQ(log.size(), 3u);
  for (const nlohmann::json& rec : log) {
    EXPECT_LT(std::abs(rec["gen_kl_error"].get<double>()), 1e-6) << rec.dump();
    EXPECT_NEAR(rec["probs_ratio"].get<double>(), 1.0, 1e-9) << rec.dump();
    EXPECT_GT(rec["grad_norm"].get<double>(), 0.0);
  }
  const fs::path checkpoints = dir / "run" / "checkpoints";
  const fs::path first = checkpoints / "step-00000001", last = checkpoints / "step-00000003";
  auto same = [](const io::SafetensorsReader& a, const io::SafetensorsReader& b, const std::string& n) {
    const Tensor x = a.get(n), y = b.get(n);
    return x.nbytes() == y.nbytes() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
  };
  const auto base1 = io::SafetensorsReader::open(first.string()), base3 = io::SafetensorsReader::open(last.string());
  for (const std::string& n : base3.names()) EXPECT_TRUE(same(base1, base3, n)) << n << " is frozen but changed";
  const std::string adapter = "adapter_model.safetensors";
  const auto a1 = io::SafetensorsReader::open((first / model::kLoraAdapterDir / adapter).string());
  const auto a3 = io::SafetensorsReader::open((last / model::kLoraAdapterDir / adapter).string());
  int changed = 0;
  for (const std::string& n : a3.names()) changed += !same(a1, a3, n);
  EXPECT_EQ(changed, static_cast<int>(a3.names().size()));
  fs::remove_all(dir);
}

// Two data-parallel ranks split the prompts of a step and the training rows, and train as one.
TEST(GrpoRun, TwoRanksTrainLikeOne) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = test::scratch_dir("grpo_ranks");
  const std::string recipe = tiny_rl_recipe(dir);
  const std::string common = recipe + " train.steps=2 log.validation_every=0 checkpoint.every=0 checkpoint.dir=";
  const test::ProcessResult one = test::run_g4("rl " + common + (dir / "one").string(), "OMP_NUM_THREADS=1");
  ASSERT_EQ(one.code, 0) << one.output;
  const test::ProcessResult two =
      test::run_g4("launch -n 2 rl " + common + (dir / "two").string(), "OMP_NUM_THREADS=1 timeout 300");
  ASSERT_EQ(two.code, 0) << two.output;
  const auto a = read_log(dir / "one" / "metrics.jsonl"), b = read_log(dir / "two" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t s = 0; s < 2; ++s) {
    // The same rollouts (seeds per prompt, not per rank) and rewards; the loss up to summation order.
    EXPECT_EQ(a[s]["reward"], b[s]["reward"]) << s;
    EXPECT_EQ(a[s]["response_length_mean"], b[s]["response_length_mean"]) << s;
    EXPECT_NEAR(a[s]["loss"].get<double>(), b[s]["loss"].get<double>(), 1e-5) << s;
    // The second step's gradient starts from weights one AdamW step apart in their rounding: 1.4e-4
    // of the norm with OpenBLAS's AVX2 kernels (Haswell, Zen), 2.0e-4 with its SSE3 ones; a rank's
    // samples lost or counted twice would change a twelfth of the batch.
    EXPECT_NEAR(a[s]["grad_norm"].get<double>(), b[s]["grad_norm"].get<double>(),
                5e-4 * a[s]["grad_norm"].get<double>())
        << s;
  }
  fs::remove_all(dir);
}

TEST(GrpoRun, BadRecipesNameTheKey) {
  const fs::path dir = test::scratch_dir("grpo_bad");
  const std::string recipe = tiny_rl_recipe(dir);
  std::string e = test::error_of(
      [&] { rl::run_rl(train::load_recipe(recipe, {"prompts.task=sudoku"}, train::Command::kRl)); });
  EXPECT_NE(e.find("'prompts.task' sudoku is not a built-in task"), std::string::npos) << e;
  e = test::error_of([&] {
    rl::run_rl(train::load_recipe(recipe, {"loss_fn.use_importance_sampling_correction=false"}, train::Command::kRl));
  });
  EXPECT_NE(e.find("loss_fn.truncated_importance_sampling_type"), std::string::npos) << e;
  e = test::error_of([&] {
    rl::run_rl(train::load_recipe(recipe, {"prompts.task=''", "prompts.train=" + (dir / "none.jsonl").string()},
                                  train::Command::kRl));
  });
  EXPECT_NE(e.find("none.jsonl"), std::string::npos) << e;
  // Probed (tools/probe_rl.py): a group of one sample never learns (its own baseline); the task's
  // difficulty was refused without the key.
  e = test::error_of([&] {
    rl::run_rl(train::load_recipe(recipe, {"grpo.num_generations_per_prompt=1"}, train::Command::kRl));
  });
  EXPECT_NE(e.find("'grpo.num_generations_per_prompt' is 1"), std::string::npos) << e;
  e = test::error_of(
      [&] { rl::run_rl(train::load_recipe(recipe, {"prompts.task_difficulty=99"}, train::Command::kRl)); });
  EXPECT_NE(e.find("'prompts.task_difficulty' is 99"), std::string::npos) << e;
  e = test::error_of(
      [&] { rl::run_rl(train::load_recipe(recipe, {"generation.stop_strings=['']"}, train::Command::kRl)); });
  EXPECT_NE(e.find("'generation.stop_strings' holds an empty string"), std::string::npos) << e;
  e = test::error_of(
      [&] { rl::run_rl(train::load_recipe(recipe, {"generation.page_size=100000000"}, train::Command::kRl)); });
  EXPECT_NE(e.find("generation.page_size 100000000"), std::string::npos) << e;
  fs::remove_all(dir);
}

// Probed (tools/probe_rl.py): checkpoint.dir naming the SFT run the policy comes from (instead of
// model.path) was refused naming only a missing 'prompt_position'; it now says what the checkpoint
// is and where it belongs, and leaves it in place.
TEST(GrpoRun, ResumeOverAnSftRunSaysSo) {
  const fs::path dir = test::scratch_dir("grpo_over_sft");
  {
    std::ofstream data(dir / "sft.jsonl");
    for (const rl::PromptExample& p : rl::task_problems({"arithmetic", 1, 0}, 0, 8))
      data << nlohmann::json{{"messages", {{{"role", "user"}, {"content", p.prompt}},
                                           {{"role", "assistant"}, {"content", rl::task_reference_response(p)}}}}}
                  .dump()
           << "\n";
  }
  train::run_training(
      train::recipe_from_yaml("model: {name: tiny-dense, init_seed: 3, config: {num_hidden_layers: 2}}\n"
                              "tokenizer: " + test::source_dir() + "/recipes/data/kjv-chat-tokenizer\n"
                              "data: {train: [" + (dir / "sft.jsonl").string() + "], format: chat, seq_len: 64,\n"
                              "       validation_fraction: 0}\n"
                              "train: {steps: 1, batch_size: 2}\n"
                              "checkpoint: {dir: " + (dir / "sft").string() + "}\n"
                              "log: {validation_every: 0, samples: 0}\n",
                              "sft.yaml"),
      false);
  const std::string e = test::error_of([&] {
    rl::run_rl(train::load_recipe(tiny_rl_recipe(dir), {"checkpoint.dir=" + (dir / "sft").string()}, train::Command::kRl),
               {.resume = true});
  });
  EXPECT_NE(e.find("has no 'prompt_position': not a checkpoint of g4 rl"), std::string::npos) << e;
  EXPECT_TRUE(fs::exists(dir / "sft" / "checkpoints" / "step-00000001" / "trainer_state.json"));
  fs::remove_all(dir);
}

// Probed: a step whose groups all scored alike trained on zero advantages without a word; it now
// logs groups_with_spread and says so. Rewards whose squares overflow a double made NaN
// advantages, reported as a non-finite loss to be fixed with the learning rate.
TEST(GrpoRun, DegenerateRewardsAreSaid) {
  const fs::path dir = test::scratch_dir("grpo_degenerate");
  const std::string recipe = tiny_rl_recipe(dir);
  testing::internal::CaptureStderr();
  rl::run_rl(train::load_recipe(recipe, {"reward.pattern=QQQ#never", "train.steps=1", "log.validation_every=0"},
                                train::Command::kRl));
  const std::string err = testing::internal::GetCapturedStderr();
  const std::vector<nlohmann::json> log = read_log(dir / "run" / "metrics.jsonl");
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0]["groups_with_spread"].get<double>(), 0.0);
  EXPECT_EQ(log[0]["loss"].get<double>(), 0.0);
  EXPECT_NE(err.find("step 1: no reward spread"), std::string::npos) << err;
  // The regex base recipe's groups do differ.
  rl::run_rl(train::load_recipe(recipe, {"train.steps=1", "log.validation_every=0", "checkpoint.dir=" +
                                         (dir / "spread").string()}, train::Command::kRl));
  EXPECT_GT(read_log(dir / "spread" / "metrics.jsonl").at(0)["groups_with_spread"].get<double>(), 0.0);

  std::string e = test::error_of([&] {
    rl::run_rl(train::load_recipe(recipe, {"reward.kind=command", "reward.pattern=''",
                                           R"(reward.command="awk '{print (NR % 2) * 1e308}'")",
                                           "grpo.reward_scaling.enabled=false", "checkpoint.dir=" +
                                           (dir / "huge").string()}, train::Command::kRl));
  });
  EXPECT_NE(e.find("reward.kind command returned rewards up to 1e+308"), std::string::npos) << e;
  EXPECT_NE(e.find("grpo.reward_scaling"), std::string::npos) << e;
  // Scaled into range for training, but the validation accuracy averages the raw rewards (an
  // infinite mean was written to metrics.jsonl as null, on which reward.svg then failed).
  e = test::error_of([&] {
    rl::run_rl(train::load_recipe(recipe, {"reward.kind=command", "reward.pattern=''",
                                           R"(reward.command="awk '{print 1e308}'")", "checkpoint.dir=" +
                                           (dir / "huge-validation").string()}, train::Command::kRl));
  });
  EXPECT_NE(e.find("returned rewards up to 1e+308 in magnitude, too large to average (their sum"), std::string::npos)
      << e;
  fs::remove_all(dir);
}

// With LoRA the KL term's reference is the frozen base: the policy itself with its adapters
// bypassed, so no second model is built; its log-probs are those of the adapter-free model bit
// for bit, and the bypass ends with the call.
TEST(GrpoRun, LoraReferenceIsThePolicysBaseWithoutACopy) {
  const fs::path dir = test::scratch_dir("grpo_lora_reference");
  const train::Recipe r = train::load_recipe(
      tiny_rl_recipe(dir), {"lora.rank=4", "lora.alpha=8", "loss_fn.reference_policy_kl_penalty=0.05"},
      train::Command::kRl);
  const io::ModelConfig cfg = train::model_config(r);
  const std::unique_ptr<io::Tokenizer> tok = io::load_tokenizer(r.tokenizer);
  parallel::SingleCommunicator world;
  parallel::DeviceMesh mesh(world, parallel::MeshShape{});
  rl::GrpoObjective objective(r, *tok, cfg, mesh, nullptr);
  EXPECT_EQ(objective.reference_model(), nullptr);

  // The policy: the recipe's base with adapters whose B is not zero (a trained policy).
  std::unique_ptr<model::Gemma4> policy = train::build_model(r);
  policy->enable_lora(r.lora);
  test::randomise_lora_b(*policy, 40);
  model::Gemma4 base(cfg);
  for (const std::string& n : policy->params().order)
    if (!model::is_lora(policy->params().kind(n)))
      base.params().at(n).mutable_value().copy_from(policy->params().at(n).value());
  base.params().buffers = policy->params().buffers;
  model::ForwardInputs in;
  in.input_ids = randint({1, 12}, 9, 3, cfg.vocab_size, DType::I64);
  in.labels = in.input_ids.clone();
  in.return_logits = false;
  in.return_token_logprobs = true;
  auto logprobs = [&](const model::Gemma4& m) {
    ag::NoGrad no_grad;
    return m.forward(in).token_logprobs.value().clone();
  };
  const Tensor want = logprobs(base), adapted = logprobs(*policy);
  ASSERT_GT(test::max_diff(adapted, want), 1e-3) << "the adapters must change the policy, or this proves nothing";
  const std::vector<double> ref = objective.reference_logprobs(*policy, in);
  ASSERT_EQ(static_cast<int64_t>(ref.size()), want.numel());
  for (int64_t i = 0; i < want.numel(); ++i) EXPECT_EQ(ref[static_cast<size_t>(i)], want.data<float>()[i]) << i;
  EXPECT_TRUE(policy->lora_active());
  EXPECT_EQ(test::max_diff(logprobs(*policy), adapted), 0.0);

  // A LoRA run with the KL term trains and logs it (the policy moves away from its base).
  const rl::RlResult res = rl::run_rl(train::load_recipe(
      tiny_rl_recipe(dir), {"lora.rank=4", "lora.alpha=8", "optimizer.lr=2e-2", "log.validation_every=0",
                            "loss_fn.reference_policy_kl_penalty=0.05"},
      train::Command::kRl));
  EXPECT_EQ(res.steps, 3);
  const std::vector<nlohmann::json> log = read_log(dir / "run" / "metrics.jsonl");
  ASSERT_EQ(log.size(), 3u);
  for (const nlohmann::json& rec : log) ASSERT_TRUE(rec.contains("kl_penalty")) << rec.dump();
  EXPECT_LT(std::abs(log[0]["kl_penalty"].get<double>()), 1e-9) << "step 1: the policy is its base (B = 0)";
  EXPECT_GT(log[2]["kl_penalty"].get<double>(), 0.0) << "step 3: the adapters have moved the policy";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

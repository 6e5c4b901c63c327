// `g4 train` with LoRA adapters (lora.* keys) on the tiny test model: only the adapters change and the
// loss falls, checkpoints hold the frozen base plus the adapter in PEFT's format (a built-in shape) or
// the adapter alone (a base on disk, model.path), a killed run resumes to the same losses (dropout on),
// and `g4 convert --merge-lora` writes a model computing the same logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/train_recipe.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

const char* kLora = " lora.rank=4 lora.alpha=8 lora.dropout=0.1 lora.seed=3 optimizer.lr=2e-2";

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Every logged step's loss and gradient norm and every validation loss of a run (all but the timings).
std::vector<std::string> loss_lines(const fs::path& run_dir, std::vector<double>* validation = nullptr) {
  std::vector<std::string> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) lines.push_back(j["step"].dump() + " " + j["loss"].dump() + " " + j["grad_norm"].dump());
    if (j.contains("validation_loss")) {
      lines.push_back("val " + j["validation_loss"].dump());
      if (validation) validation->push_back(j["validation_loss"].get<double>());
    }
  }
  return lines;
}

// `g4 convert BASE OUT --merge-lora ADAPTER` writes a plain checkpoint computing base + adapter's logits.
void expect_merge_computes_the_adapted_model(const fs::path& base, const fs::path& adapter, const fs::path& out) {
  const test::ProcessResult r =
      test::run_g4("convert " + base.string() + " " + out.string() + " --merge-lora " + adapter.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out / model::kLoraAdapterDir));
  auto adapted = model::load_hf_model(base.string());
  model::apply_peft_adapter(*adapted, adapter.string());
  const auto merged = model::load_hf_model(out.string());
  model::ForwardInputs in;
  in.input_ids = randint({2, 16}, 5, 0, adapted->config().vocab_size);
  ag::NoGrad no_grad;
  const Tensor want_logits = adapted->forward(in).logits.value();
  EXPECT_LT(test::max_diff(merged->forward(in).logits.value(), want_logits), 1e-5);
  EXPECT_GT(test::max_diff(model::load_hf_model(base.string())->forward(in).logits.value(), want_logits), 1e-4);
}

TEST(LoraTrain, OnlyTheAdaptersTrainResumeIsExactAndTheMergeComputesTheAdaptedModel) {
  const fs::path dir = test::scratch_dir("train_lora");
  const std::string recipe = test::write_train_recipe(dir);
  const std::string full = "train " + recipe + kLora + " checkpoint.dir=" + (dir / "full").string();
  test::ProcessResult r = test::run_g4(full);
  ASSERT_EQ(r.code, 0) << r.output;
  // The validation loss (the same rows at steps 4 and 8) falls: 7.645 -> 7.618 when written. The base
  // is random with a small tied embedding, which the adapters cannot change, so the logits stay small.
  std::vector<double> validation;
  const auto want = loss_lines(dir / "full", &validation);
  ASSERT_EQ(want.size(), 8u + 2u);
  ASSERT_EQ(validation.size(), 2u);
  EXPECT_LT(validation[1], validation[0] - 0.01);

  // The base is the same bits at steps 4 and 8 (experts, router, norms, embedding); every B moved.
  const fs::path ckpt4 = dir / "full" / "checkpoints" / "step-00000004";
  const fs::path ckpt8 = dir / "full" / "checkpoints" / "step-00000008";
  const auto base4 = io::SafetensorsReader::open(ckpt4.string()), base8 = io::SafetensorsReader::open(ckpt8.string());
  ASSERT_EQ(base4.names(), base8.names());
  for (const std::string& n : base8.names()) {
    EXPECT_EQ(n.find("lora"), std::string::npos) << n;
    EXPECT_TRUE(same_bits(base4.get(n), base8.get(n))) << n << " is frozen but changed";
  }
  const fs::path adapter8 = ckpt8 / model::kLoraAdapterDir;
  const auto a4 = io::SafetensorsReader::open((ckpt4 / model::kLoraAdapterDir / "adapter_model.safetensors").string());
  const auto a8 = io::SafetensorsReader::open((adapter8 / "adapter_model.safetensors").string());
  model::LoraConfig every;
  every.rank = 4;
  ASSERT_EQ(a8.names().size(), 2 * model::lora_modules(model::load_hf_config(ckpt8.string()), every).size());
  for (const std::string& n : a8.names()) {
    EXPECT_EQ(n.rfind("base_model.model.model.layers.", 0), 0u) << n;
    EXPECT_FALSE(same_bits(a4.get(n), a8.get(n))) << n << " is an adapter but did not change";
  }
  const nlohmann::json cfg = io::read_json_file((adapter8 / "adapter_config.json").string(), "test", 1 << 20);
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 8.0);
  EXPECT_EQ(cfg["base_model_name_or_path"], "tiny-moe");

  // Killed after step 6: resumes from step 4 to the same losses, dropout masks included.
  const std::string killed = "train " + recipe + kLora + " checkpoint.dir=" + (dir / "killed").string();
  r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), want);

  // The merged checkpoint computes the adapted model's logits.
  expect_merge_computes_the_adapted_model(ckpt8, adapter8, dir / "merged");
  fs::remove_all(dir);
}

// With experts adapted and the base on disk, checkpoints hold only the adapter (adapter/ and the
// base's record), a killed run resumes from them to the same losses, resuming onto another base or a
// missing one is refused, and the base plus the adapter merge into a model computing the adapted logits.
TEST(LoraTrain, ExpertAdaptersInAdapterOnlyCheckpointsResumeExactly) {
  const fs::path dir = test::scratch_dir("train_lora_experts");
  const std::string recipe = test::write_base_on_disk_recipe(dir, dir / "base");
  const std::string lora = std::string(kLora) +
                           " lora.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,"
                           "experts.gate_up_proj,experts.down_proj]";
  const std::string full = "train " + recipe + lora + " checkpoint.dir=" + (dir / "full").string();
  test::ProcessResult r = test::run_g4(full);
  ASSERT_EQ(r.code, 0) << r.output;
  std::vector<double> validation;
  const auto want = loss_lines(dir / "full", &validation);
  ASSERT_EQ(validation.size(), 2u);
  EXPECT_LT(validation[1], validation[0] - 0.01);

  const fs::path ckpt4 = dir / "full" / "checkpoints" / "step-00000004";
  const fs::path ckpt8 = dir / "full" / "checkpoints" / "step-00000008";
  for (const fs::path& c : {ckpt4, ckpt8}) {
    EXPECT_FALSE(fs::exists(c / "model.safetensors")) << c;
    EXPECT_FALSE(fs::exists(c / "config.json")) << c;
    EXPECT_TRUE(fs::exists(c / "optimizer.safetensors")) << c;
  }
  const nlohmann::json base = io::read_json_file((ckpt8 / model::kLoraBaseFile).string(), "test", 1 << 20);
  EXPECT_EQ(base["base_model"], (dir / "base").string());
  const auto a4 = io::SafetensorsReader::open((ckpt4 / model::kLoraAdapterDir / "adapter_model.safetensors").string());
  const auto a8 = io::SafetensorsReader::open((ckpt8 / model::kLoraAdapterDir / "adapter_model.safetensors").string());
  const std::string experts = "base_model.model.model.layers.1.experts.";
  for (const std::string& n : {experts + "lora_B.weight", experts + "base_layer.lora_B.weight"}) {
    ASSERT_TRUE(a8.has(n)) << n;
    EXPECT_FALSE(same_bits(a4.get(n), a8.get(n))) << n << " is an adapter but did not change";
  }

  const std::string killed = "train " + recipe + lora + " checkpoint.dir=" + (dir / "killed").string();
  r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  // Another base (one weight changed) and a missing one are refused; the checkpoint stays usable.
  fs::copy(dir / "base", dir / "other");
  {
    std::vector<std::pair<std::string, Tensor>> tensors;
    const io::SafetensorsReader o = io::SafetensorsReader::open((dir / "other").string());
    for (const std::string& n : o.names())
      tensors.emplace_back(n, n == "model.norm.weight" ? rand_uniform(o.get(n).shape(), 43, 0.5, 1.5, DType::F32)
                                                       : o.get(n).clone());
    io::save_safetensors((dir / "other" / "model.safetensors").string(), tensors);
  }
  r = test::run_g4(killed + " --resume model.path=" + (dir / "other").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("holds only a LoRA adapter, trained on the base " + (dir / "base").string()),
            std::string::npos)
      << r.output;
  r = test::run_g4(killed + " --resume model.path=" + (dir / "missing").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find((dir / "missing").string()), std::string::npos) << r.output;
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), want);

  expect_merge_computes_the_adapted_model(dir / "base", ckpt8 / model::kLoraAdapterDir, dir / "merged");
  fs::remove_all(dir);
}

// The largest |a - b| over the tensors of two PEFT adapter files (the same names and shapes).
double adapter_difference(const fs::path& a_dir, const fs::path& b_dir) {
  const auto a = io::SafetensorsReader::open((a_dir / model::kLoraAdapterDir / "adapter_model.safetensors").string());
  const auto b = io::SafetensorsReader::open((b_dir / model::kLoraAdapterDir / "adapter_model.safetensors").string());
  EXPECT_EQ(a.names(), b.names());
  double worst = 0;
  for (const std::string& n : a.names()) worst = std::max(worst, test::max_diff(a.get(n), b.get(n)));
  return worst;
}

std::vector<double> step_losses(const fs::path& run_dir) {
  std::vector<double> l;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) l.push_back(j["loss"].get<double>());
  }
  return l;
}

// parallel.fsdp with LoRA: the adapters are the sharded trainable units (each rank holds half of
// their masters and moments), the frozen base stays whole on every rank. Two ranks reproduce one
// rank's losses (the tolerance of the sharded tests in train_run_test.cpp), their adapter-only
// checkpoint holds the one-rank adapter (to 1e-4), and checkpoints resume across rank counts. No dropout: its
// masks are drawn over each rank's own rows, so ranks that split a batch draw others than one rank.
TEST(LoraTrain, ShardedDataParallelTrainsLikeOneRankAndResumesAcrossRankCounts) {
  if (!test::has_mpirun()) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = test::scratch_dir("train_lora_fsdp");
  const std::string recipe = test::write_base_on_disk_recipe(dir, dir / "base");
  const std::string base = "train " + recipe +
                           " lora.rank=4 lora.alpha=8 lora.seed=3 optimizer.lr=2e-2 lora.targets=[q_proj,v_proj,"
                           "down_proj,experts.gate_up_proj,experts.down_proj] log.samples=0 train.steps=4 "
                           "checkpoint.every=0 checkpoint.dir=";
  const std::string one_rank = " train.batch_size=4", two_ranks = " train.batch_size=2 parallel.fsdp=true";
  test::ProcessResult r = test::run_g4(base + (dir / "one").string() + one_rank);
  ASSERT_EQ(r.code, 0) << r.output;
  r = test::run_g4(base + (dir / "two").string() + two_ranks, test::mpirun_env(2));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2 data-parallel shards"), std::string::npos) << r.output;
  const auto a = step_losses(dir / "one"), b = step_losses(dir / "two");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  EXPECT_GT(std::abs(a.back() - a.front()), 1e-4) << "the adapters must move the loss, or this proves nothing";

  // The sharded run's PEFT export is the one-rank run's adapter. The gradients are summed in
  // another order over two ranks, and Adam's first updates turn last-bit differences of near-zero
  // gradients into differences of up to lr·|Δg/g| (1.6e-5 measured); an adapter gathered or ordered
  // wrongly is off by its whole update, about lr = 2e-2 per step.
  const fs::path one4 = dir / "one" / "checkpoints" / "step-00000004", two4 = dir / "two" / "checkpoints" / "step-00000004";
  for (const char* f : {"optimizer-rank0-of2.safetensors", "optimizer-rank1-of2.safetensors", model::kLoraBaseFile})
    EXPECT_TRUE(fs::exists(two4 / f)) << f;
  EXPECT_FALSE(fs::exists(two4 / "model.safetensors")) << "LoRA checkpoints of a base on disk hold the adapter alone";
  const std::string config = "adapter/adapter_config.json";
  EXPECT_EQ(io::read_json_file((one4 / config).string(), "test", 1 << 20),
            io::read_json_file((two4 / config).string(), "test", 1 << 20));
  const double export_diff = adapter_difference(one4, two4);
  std::printf("sharded vs one-rank adapter: largest difference %.3g\n", export_diff);
  EXPECT_LT(export_diff, 1e-4);

  // The two-rank checkpoint resumes on one rank and the one-rank one on two sharded ranks: step 5
  // is the one-rank run's step 5 either way.
  const std::string more = " train.steps=5 --resume";
  fs::copy(dir / "one", dir / "one_on_two", fs::copy_options::recursive);
  r = test::run_g4(base + (dir / "one").string() + one_rank + more);
  ASSERT_EQ(r.code, 0) << r.output;
  r = test::run_g4(base + (dir / "two").string() + one_rank + more);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  r = test::run_g4(base + (dir / "one_on_two").string() + two_ranks + more, test::mpirun_env(2));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a5 = step_losses(dir / "one"), b5 = step_losses(dir / "two"), c5 = step_losses(dir / "one_on_two");
  ASSERT_EQ(a5.size(), 5u);
  ASSERT_EQ(b5.size(), 5u);
  ASSERT_EQ(c5.size(), 5u);
  EXPECT_NEAR(b5[4], a5[4], 1e-5 * a5[4]) << "two-rank checkpoint resumed on one rank";
  EXPECT_NEAR(c5[4], a5[4], 1e-5 * a5[4]) << "one-rank checkpoint resumed on two sharded ranks";
  fs::remove_all(dir);
}

// parallel.expert_parallel with expert adapters: each rank holds its experts' A and B, as it
// holds their weights. Two ranks (2 of the 4 experts each) and four (one each) reproduce one rank's losses (the
// tolerance of train_run_test.cpp's EP test), the first EP group gathers the adapter for rank 0's
// adapter-only checkpoint, which is the one-rank run's adapter, and a killed two-rank run resumes
// to the same losses. (Per-rank optimizer files of expert parallelism resume on the same number of
// ranks only, LoRA or not.)
TEST(LoraTrain, ExpertParallelRanksTrainLikeOneRankAndExportTheSameAdapter) {
  if (!test::has_mpirun()) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = test::scratch_dir("train_lora_ep");
  const std::string recipe = test::write_base_on_disk_recipe(dir, dir / "base");
  const std::string base = "train " + recipe +
                           " lora.rank=4 lora.alpha=8 lora.seed=3 optimizer.lr=2e-2 lora.targets=[q_proj,v_proj,"
                           "experts.gate_up_proj,experts.down_proj] checkpoint.dir=";
  test::ProcessResult r = test::run_g4(base + (dir / "one").string() + " train.batch_size=4 log.samples=0");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string ep = " train.batch_size=2 parallel.expert_parallel=2";
  r = test::run_g4(base + (dir / "two").string() + ep, test::mpirun_env(2));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("samples:"), std::string::npos) << "rank 0 samples the gathered adapted model\n" << r.output;
  const auto a = step_losses(dir / "one"), b = step_losses(dir / "two");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  EXPECT_GT(std::abs(a.back() - a.front()), 1e-4) << "the adapters must move the loss, or this proves nothing";
  // Four ranks, one expert each.
  r = test::run_g4(base + (dir / "four").string() + " train.batch_size=1 parallel.expert_parallel=4 log.samples=0",
                   test::mpirun_env(4));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto c = step_losses(dir / "four");
  ASSERT_EQ(c.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], c[i], 1e-5 * a[i]) << "four ranks, step " << i + 1;

  const fs::path one8 = dir / "one" / "checkpoints" / "step-00000008", two8 = dir / "two" / "checkpoints" / "step-00000008";
  for (const char* f : {"optimizer-rank0-of2.safetensors", "optimizer-rank1-of2.safetensors", model::kLoraBaseFile})
    EXPECT_TRUE(fs::exists(two8 / f)) << f;
  EXPECT_EQ(io::read_json_file((one8 / model::kLoraBaseFile).string(), "test", 1 << 20),
            io::read_json_file((two8 / model::kLoraBaseFile).string(), "test", 1 << 20))
      << "the two-rank run names the whole base by the one-rank fingerprint";
  // As in the fsdp test: another summation order, amplified by Adam's first steps.
  const double export_diff = adapter_difference(one8, two8);
  std::printf("expert-parallel vs one-rank adapter: largest difference %.3g\n", export_diff);
  EXPECT_LT(export_diff, 1e-4);
  expect_merge_computes_the_adapted_model(dir / "base", two8 / model::kLoraAdapterDir, dir / "merged");

  // Killed after step 6 under mpirun: resuming the adapter-only step-4 checkpoint on two ranks
  // gives the same curve.
  const std::string killed = base + (dir / "killed").string() + ep + " log.samples=0";
  r = test::run_g4(killed, std::string("G4_FAULT_KILL=step:6 ") + test::mpirun_env(2));
  EXPECT_NE(r.code, 0) << r.output;
  r = test::run_g4(killed + " --resume", test::mpirun_env(2));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), loss_lines(dir / "two"));
  fs::remove_all(dir);
}

TEST(LoraTrain, RecipeErrorsNameTheKey) {
  const fs::path dir = test::scratch_dir("train_lora_errors");
  const std::string recipe = test::write_train_recipe(dir);
  const std::pair<std::string, std::string> bad[] = {
      {"lora.rank=-1", "'lora.rank' must be >= 0"},
      {"lora.dropout=1", "'lora.dropout' must be in [0, 1)"},
      {"lora.alpha=0", "'lora.alpha' must be > 0"},
  };
  for (const auto& [override_, want] : bad) {
    const std::string e = test::error_of([&] { train::load_recipe(recipe, {override_}); });
    EXPECT_NE(e.find(want), std::string::npos) << override_ << ": " << e;
  }
  EXPECT_NE(test::error_of([&] {
              train::load_recipe(recipe, {"lora.rank=4", "lora.target_regex=("});
            }).find("not a valid regular expression"),
            std::string::npos);
  const train::Recipe ok = train::load_recipe(recipe, {"lora.rank=4", "lora.targets=[q_proj, mlp.up_proj]"});
  EXPECT_EQ(ok.lora.targets, (std::vector<std::string>{"q_proj", "mlp.up_proj"}));
  EXPECT_EQ(ok.lora.base_model, "tiny-moe");
  EXPECT_FALSE(ok.lora_save_base);
  EXPECT_TRUE(train::load_recipe(recipe, {"lora.rank=4", "lora.save_base=true"}).lora_save_base);
  const test::ProcessResult r = test::run_g4("train " + recipe + " lora.rank=4 lora.targets=[experts]");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("LoRA targets [experts] select none"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

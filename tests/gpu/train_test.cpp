// Training on the GPU: checkpoints of the bf16 model hold its fp32 masters and resume the
// optimizer bit for bit (in process, with real forward/backward steps), and `g4 train` with
// train.device: cuda trains like the CPU run (within bf16 tolerance), reports GPU memory and
// throughput, and resumes after a kill.
//
// Determinism, which the exact comparisons below rely on: the GPU forward has no floating-point
// atomics (the MoE plan counts with integer atomics and scatters stably; matmuls, attention, norms
// and the fused loss reduce in fixed orders), so equal weights give equal losses bit for bit. The
// backward does not: the embedding gradient and attention's dQ accumulate with fp32 atomics, so two
// runs of the same steps differ in the last bits of their gradients, and whole training runs are
// compared to a tolerance.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/variable.h"
#include "core/random.h"
#include "gpu_test.h"
#include "io/safetensors.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/run_metrics.h"
#include "support/g4_process.h"
#include "support/masters_checkpoint.h"
#include "support/tiny_models.h"
#include "support/train_recipe.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

using test::same_bits;

io::ModelConfig tiny_moe() { return test::tiny_moe_config(64, 2, {{"sliding_window", 16}}); }

// Two rows of 32 tokens, two packed documents in the second.
model::ForwardInputs batch(int64_t vocab, uint64_t seed) {
  model::ForwardInputs in;
  in.input_ids = randint({2, 32}, seed, 3, vocab, DType::I64);
  in.position_ids = Tensor::empty({2, 32}, DType::I64);
  for (int64_t s = 0; s < 32; ++s) {
    in.position_ids.data<int64_t>()[s] = s;
    in.position_ids.data<int64_t>()[32 + s] = s < 20 ? s : s - 20;
  }
  in.labels = in.input_ids.clone();
  in.return_logits = false;
  return in;
}

// Three real steps, a checkpoint, a resume into a fresh model and optimizer, and one more step,
// with AdamW's state stored as `o` says.
void expect_exact_resume(const train::AdamWOptions& o, const std::string& scratch) {
  const fs::path dir = test::scratch_dir(scratch);
  const io::ModelConfig cfg = tiny_moe();
  model::Gemma4 host(cfg);
  host.init_weights(21);
  auto gpu = host.copy_to(Device::CUDA, DType::BF16);
  const std::vector<std::string>& names = gpu->params().order;
  // The masters start from host's f32 values (its copy, which the optimizer keeps for export).
  train::ReplicatedAdamW opt(gpu->params(), cfg, {}, host.copy_to(Device::CPU, DType::F32), nullptr, names, o,
                             gpu.get());
  for (size_t i = 0; i < names.size(); ++i)
    ASSERT_TRUE(same_bits(opt.adamw().master(i), host.params().at(names[i]).value())) << "master of " << names[i];
  for (uint64_t step = 0; step < 3; ++step) {
    const model::ForwardOutputs out = gpu->forward(batch(cfg.vocab_size, 40 + step));
    ag::backward(out.loss);
    opt.clip_grad_norm(0.5);
    opt.step(3e-3);
  }
  int64_t unrounded = 0;
  for (size_t i = 0; i < names.size(); ++i) unrounded += test::not_bf16(opt.adamw().master(i));
  ASSERT_GT(unrounded, 0) << "the masters must carry bits the bf16 copies lose, or this test proves nothing";
  for (const auto& [name, t] : opt.adamw().state())
    EXPECT_EQ(t.dtype(), name.rfind("exp_avg_sq.", 0) == 0 ? o.exp_avg_sq_dtype : o.exp_avg_dtype) << name;
  // The checkpoint's weights are the masters, in f32.
  const std::string ckpt = test::save_masters_checkpoint(dir, opt, names);

  // A fresh bf16 GPU model and optimizer: loading sets masters and bf16 copies.
  model::Gemma4 gpu2(cfg, {}, DType::BF16, Device::CUDA);
  train::ReplicatedAdamW opt2(gpu2.params(), cfg, {}, nullptr, nullptr, names, o, &gpu2);
  test::OneRankCheckpoints resumed(dir / "ckpt", opt2);
  const nlohmann::json s2 = resumed.manager.load(ckpt);
  EXPECT_EQ(s2.at("step"), 3);
  EXPECT_EQ(opt2.steps_taken(), 3);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(same_bits(opt2.adamw().master(i), opt.adamw().master(i))) << "master of " << names[i];
    EXPECT_TRUE(same_bits(gpu2.params().at(names[i]).value(), gpu->params().at(names[i]).value()))
        << "bf16 copy of " << names[i];
  }
  test::expect_same_moments(opt.adamw(), opt2.adamw());

  // The same weights give the same loss (the forward is deterministic), and the same gradients
  // the same update, bit for bit.
  const model::ForwardInputs in = batch(cfg.vocab_size, 99);
  const model::ForwardOutputs a = gpu->forward(in);
  ag::backward(a.loss);
  const model::ForwardOutputs b = gpu2.forward(in);
  ag::clear_tape();
  EXPECT_EQ(a.loss.value().item(), b.loss.value().item());
  for (const std::string& n : names) {
    ag::Var& v = gpu2.params().at(n);
    v.impl()->grad = gpu->params().at(n).grad().defined() ? gpu->params().at(n).grad().clone() : Tensor();
    v.impl()->grad_owned = true;
  }
  const double g1 = opt.clip_grad_norm(0.5);
  const double g2 = opt2.clip_grad_norm(0.5);
  EXPECT_EQ(g1, g2);
  opt.step(3e-3);
  opt2.step(3e-3);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(same_bits(opt2.adamw().master(i), opt.adamw().master(i)))
        << "master of " << names[i] << " after the next step";
    EXPECT_TRUE(same_bits(gpu2.params().at(names[i]).value(), gpu->params().at(names[i]).value()))
        << "bf16 copy of " << names[i] << " after the next step";
  }
  fs::remove_all(dir);
}

TEST(GpuTrain, Bf16CheckpointKeepsTheMastersAndResumesTheOptimizerExactly) {
  G4_REQUIRE_GPU();
  expect_exact_resume({0.9, 0.95, 1e-8, 0.1}, "gpu_ckpt_masters");
}

// NeMo-RL's Gemma 4 storage: bf16 moments, and the masters as the bf16 parameters plus remainders.
TEST(GpuTrain, RemaindersAndBf16MomentsResumeExactly) {
  G4_REQUIRE_GPU();
  train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  o.exp_avg_dtype = o.exp_avg_sq_dtype = DType::BF16;
  o.store_param_remainders = true;
  expect_exact_resume(o, "gpu_ckpt_remainders");
}

// ---------------------------------------------------------------------------------------------
// g4 train on the GPU (the recipe of tests/train/train_run_test.cpp: 8 steps of 2 rows of 64).

using test::ProcessResult;


std::vector<nlohmann::json> records(const fs::path& run_dir, const char* key) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains(key)) out.push_back(j);
  }
  return out;
}

std::vector<double> values(const fs::path& run_dir, const char* key) {
  std::vector<double> v;
  for (const auto& j : records(run_dir, key)) v.push_back(j[key].get<double>());
  return v;
}


// bf16 tolerance of a whole training run against the f32 CPU run: every weight and activation is
// rounded to 8 significant bits (relative 2^-9 = 2e-3 per rounding), and Adam's first updates
// move each weight by about +-lr whatever the gradient's size, so elements whose gradients are
// near zero may move the other way; 2% of the loss bounds both on this recipe's 8 steps.
constexpr double kBf16RunTolerance = 2e-2;

TEST(GpuTrain, CudaRunTrainsLikeTheCpuRun) {
  G4_REQUIRE_GPU();
  const fs::path dir = test::scratch_dir("gpu_train_vs_cpu");
  // The dense recipe: a near-tied MoE routing choice flipped by bf16 rounding would send a token to
  // another expert, a difference that is not rounding error.
  const std::string recipe = test::write_train_recipe(dir, /*dense=*/true, /*samples=*/0);
  const std::string common = "train " + recipe + " checkpoint.dir=";
  const ProcessResult cpu = test::run_g4(common + (dir / "cpu").string());
  ASSERT_EQ(cpu.code, 0) << cpu.output;
  const ProcessResult gpu = test::run_g4(common + (dir / "gpu").string() + " train.device=cuda log.samples=1");
  ASSERT_EQ(gpu.code, 0) << gpu.output;
  for (const char* want : {"device     cuda: bf16 compute, fp32 master weights", "on the GPU during training",
                           "throughput ", "samples:\n  1. "})
    EXPECT_NE(gpu.output.find(want), std::string::npos) << want << "\n" << gpu.output;

  const auto cpu_loss = values(dir / "cpu", "loss"), gpu_loss = values(dir / "gpu", "loss");
  ASSERT_EQ(cpu_loss.size(), 8u);
  test::expect_close_values(gpu_loss, cpu_loss, kBf16RunTolerance, "bf16 GPU vs f32 CPU training loss, step");
  test::expect_close_values(values(dir / "gpu", "validation_loss"), values(dir / "cpu", "validation_loss"), kBf16RunTolerance,
               "bf16 GPU vs f32 CPU validation loss");
  EXPECT_LT(gpu_loss.back(), gpu_loss.front());
  for (const auto& j : records(dir / "gpu", "loss")) {
    ASSERT_TRUE(j.contains("device_peak_mib")) << j.dump();
    EXPECT_GT(j["device_peak_mib"].get<double>(), 0) << j.dump();
    EXPECT_GT(j["tokens_per_s"].get<double>(), 0) << j.dump();
  }
  EXPECT_FALSE(records(dir / "cpu", "loss")[0].contains("device_peak_mib"));
  // The checkpoint holds f32 weights (the masters) that the CPU evaluates.
  const fs::path ckpt = dir / "gpu" / "checkpoints" / "step-00000008";
  const io::SafetensorsReader reader = io::SafetensorsReader::open(ckpt.string());
  for (const std::string& n : reader.names()) EXPECT_EQ(reader.get(n).dtype(), DType::F32) << n;
  const ProcessResult e = test::run_g4("eval " + ckpt.string() + " --data " + test::data_dir() +
                                       "/text/genesis.txt --seq-len 64");
  EXPECT_EQ(e.code, 0) << e.output;

  fs::remove_all(dir);
}

// The image recipe (recipes/multimodal/tiny-image-sft.yaml: tiny-mm-e, PNG images in chat data):
// the vision tower, the merge and the image masks run in bf16 on the GPU as in f32 on the CPU. Twice
// the text recipe's tolerance for the tower's own bf16 roundings.
TEST(GpuTrain, ImageRecipeTrainsLikeTheCpuRun) {
  G4_REQUIRE_GPU();
  const fs::path dir = test::scratch_dir("gpu_train_images");
  const std::string src = test::source_dir(), data = src + "/recipes/multimodal/data";
  const std::string common = "train " + src + "/recipes/multimodal/tiny-image-sft.yaml model.path=" + test::data_dir() +
                             "/hf-gemma4-mm/tiny-mm-e tokenizer=" + data + "/tokenizer.json data.train=" + data +
                             "/images.jsonl train.steps=8 checkpoint.dir=";
  const ProcessResult cpu = test::run_g4(common + (dir / "cpu").string());
  ASSERT_EQ(cpu.code, 0) << cpu.output;
  const ProcessResult gpu = test::run_g4(common + (dir / "gpu").string() + " train.device=cuda");
  ASSERT_EQ(gpu.code, 0) << gpu.output;
  const auto cpu_loss = values(dir / "cpu", "loss"), gpu_loss = values(dir / "gpu", "loss");
  ASSERT_EQ(cpu_loss.size(), 8u);
  test::expect_close_values(gpu_loss, cpu_loss, 2 * kBf16RunTolerance, "bf16 GPU vs f32 CPU image training loss, step");
  EXPECT_LT(gpu_loss.back(), gpu_loss.front());
  fs::remove_all(dir);
}

TEST(GpuTrain, ResumeAfterKillContinuesTheRun) {
  G4_REQUIRE_GPU();
  const fs::path dir = test::scratch_dir("gpu_train_resume");
  const std::string recipe = test::write_train_recipe(dir, /*dense=*/false, /*samples=*/0);
  const std::string common = "train " + recipe + " train.device=cuda checkpoint.dir=";
  const ProcessResult full = test::run_g4(common + (dir / "full").string());
  ASSERT_EQ(full.code, 0) << full.output;
  const auto want = values(dir / "full", "loss");
  ASSERT_EQ(want.size(), 8u);

  // Killed after step 6; the resumed run restarts from the step-4 checkpoint.
  const std::string killed = common + (dir / "killed").string();
  ProcessResult r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  // Step 5 as the killed run computed it from its in-memory state (the resume drops it from the log).
  const auto before = values(dir / "killed", "loss");
  ASSERT_EQ(before.size(), 6u);
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(step 4)"), std::string::npos) << r.output;
  const auto after = values(dir / "killed", "loss");
  ASSERT_EQ(after.size(), 8u);
  // The restored weights equal the killed run's bit for bit, and the forward is deterministic, so
  // the first resumed step's loss is exactly the one the killed run logged.
  EXPECT_EQ(after[4], before[4]) << "step 5: the resumed run's loss differs from the killed run's";
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(after[i], before[i]) << "step " << i + 1 << " (kept from the first run)";
  // From then on the backward's fp32 atomics make each run's gradients differ in their last bits.
  test::expect_close_values(after, want, kBf16RunTolerance, "resumed vs uninterrupted GPU training loss, step");

  // Killed while writing the step-8 checkpoint: the torn one is ignored, the run resumes at 4.
  const std::string torn = common + (dir / "torn").string();
  r = test::run_g4(torn, "G4_FAULT_KILL=checkpoint:8");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  EXPECT_FALSE(fs::exists(dir / "torn" / "checkpoints" / "step-00000008"));
  r = test::run_g4(torn + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(step 4)"), std::string::npos) << r.output;
  test::expect_close_values(values(dir / "torn", "loss"), want, kBf16RunTolerance, "torn-checkpoint resume vs uninterrupted, step");

  // A CPU checkpoint resumes on the GPU (the same f32 weights and moments).
  const ProcessResult cpu = test::run_g4("train " + recipe + " train.steps=4 checkpoint.dir=" + (dir / "x").string());
  ASSERT_EQ(cpu.code, 0) << cpu.output;
  r = test::run_g4(common + (dir / "x").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(step 4)"), std::string::npos) << r.output;
  EXPECT_EQ(values(dir / "x", "loss").size(), 8u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

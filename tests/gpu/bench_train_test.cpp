// `g4 bench train` on the GPU at tiny shapes: the paths the CPU smoke runs (test_cli BenchTrain.*)
// cannot reach — the bf16 model with fp32 masters, LoRA over a frozen bf16 base, media through the
// GPU towers, and ranks sharing the GPU over host-staged MPI — each checked against a reference
// run of the same command (the first step's loss: the same seeded weights and row), never against
// timings. Each test prints the numbers it compares.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "gpu_test.h"
#include "io/json_input.h"
#include "support/g4_process.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

// `g4 bench train ARGS --json FILE`: the report (empty, with a test failure, when the run fails).
nlohmann::json bench(const std::string& args, const std::string& name) {
  const fs::path dir = test::scratch_dir("gpu_bench_" + name);
  const std::string json = (dir / "report.json").string();
  const test::ProcessResult r = test::run_g4("bench train " + args + " --json " + json);
  EXPECT_EQ(r.code, 0) << r.output;
  if (r.code != 0) return {};
  nlohmann::json report = io::read_json_file(json, "bench report", io::kMaxConfigBytes);
  fs::remove_all(dir);
  return report;
}

double first_loss(const nlohmann::json& r) { return r.at("g4").at("loss_first").get<double>(); }

const std::string kTiny = "--model tiny-moe --layers 2 --seq 256 --steps 2 --warmup 1";

// The bf16 step against the f32 CPU step from the same seeded weights and row: the first loss
// agrees to bf16 accuracy, and the GPU reports memory and an MFU.
TEST(GpuBenchTrain, Bf16StepStartsFromTheCpuRunsLoss) {
  G4_REQUIRE_GPU();
  const nlohmann::json gpu = bench(kTiny, "bf16"), cpu = bench(kTiny + " --device cpu", "f32");
  ASSERT_FALSE(gpu.empty() || cpu.empty());
  std::printf("first loss: GPU bf16 %.6f, CPU f32 %.6f; GPU peak %lld bytes, MFU %.3g\n", first_loss(gpu),
              first_loss(cpu), static_cast<long long>(gpu.at("g4").at("peak_alloc_bytes").get<int64_t>()),
              gpu.at("g4").at("mfu").get<double>());
  EXPECT_NEAR(first_loss(gpu), first_loss(cpu), 2e-2 * std::abs(first_loss(cpu)));
  EXPECT_GT(gpu.at("g4").at("peak_alloc_bytes").get<int64_t>(), 0);
  EXPECT_GT(gpu.at("g4").at("mfu").get<double>(), 0);
}

// Fresh adapters (B = 0) compute the base model: the LoRA run's first loss is the full run's, only
// the adapters train (the element count the CPU test derives by hand), and the frozen base holds
// no gradients, masters or moments, so the peak is lower.
TEST(GpuBenchTrain, LoraOverAFrozenBf16Base) {
  G4_REQUIRE_GPU();
  const nlohmann::json lora = bench(kTiny + " --lora 4 --lora-experts", "lora"), full = bench(kTiny, "full");
  ASSERT_FALSE(lora.empty() || full.empty());
  const int64_t lora_peak = lora.at("g4").at("peak_alloc_bytes").get<int64_t>();
  const int64_t full_peak = full.at("g4").at("peak_alloc_bytes").get<int64_t>();
  std::printf("first loss: LoRA %.6f, full %.6f; trained elements %lld; peak LoRA %lld, full %lld bytes\n",
              first_loss(lora), first_loss(full),
              static_cast<long long>(lora.at("g4").at("trainable_parameters").get<int64_t>()),
              static_cast<long long>(lora_peak), static_cast<long long>(full_peak));
  EXPECT_NEAR(first_loss(lora), first_loss(full), 1e-3 * std::abs(first_loss(full)));
  EXPECT_EQ(lora.at("g4").at("trainable_parameters").get<int64_t>(), 6656 + 6912 + 2 * 8 * 4 * (256 + 192));
  EXPECT_LT(lora_peak, full_peak);
}

// Two images and a second of audio through the GPU towers: the first loss is the CPU run's to bf16
// accuracy.
TEST(GpuBenchTrain, MediaThroughTheGpuTowers) {
  G4_REQUIRE_GPU();
  const std::string args = "--config " + test::data_dir() +
                           "/hf-gemma4-mm/tiny-mm-e --seq 192 --steps 2 --warmup 1 --images 2 --audio-seconds 1 "
                           "--image-soft-tokens 70";
  const nlohmann::json gpu = bench(args, "mm_gpu"), cpu = bench(args + " --device cpu", "mm_cpu");
  ASSERT_FALSE(gpu.empty() || cpu.empty());
  std::printf("first loss with media: GPU bf16 %.6f, CPU f32 %.6f (%lld image, %lld audio soft tokens)\n",
              first_loss(gpu), first_loss(cpu),
              static_cast<long long>(gpu.at("media").at("image_soft_tokens").get<int64_t>()),
              static_cast<long long>(gpu.at("media").at("audio_soft_tokens").get<int64_t>()));
  EXPECT_NEAR(first_loss(gpu), first_loss(cpu), 3e-2 * std::abs(first_loss(cpu)));
}

// --ranks 1,2 on one GPU: both ranks take it and join over host-staged MPI; the table says that
// their efficiency is no scaling figure. With two GPUs or more the ranks get one each (NCCL).
TEST(GpuBenchTrain, RanksThroughTheLauncher) {
  G4_REQUIRE_GPU();
  if (test::run_shell("command -v mpirun >/dev/null 2>&1").code != 0) GTEST_SKIP() << "mpirun not on PATH";
  const fs::path dir = test::scratch_dir("gpu_bench_ranks");
  const std::string json = (dir / "ranks.json").string();
  const test::ProcessResult r = test::run_g4("bench train " + kTiny + " --ranks 1,2 --json " + json);
  ASSERT_EQ(r.code, 0) << r.output;
  std::printf("%s\n", r.output.c_str());
  const nlohmann::json runs = io::read_json_file(json, "ranks report", io::kMaxConfigBytes).at("ranks");
  ASSERT_EQ(runs.size(), 2u);
  const bool shared = runs[1].at("gpus").get<int64_t>() < 2;
  EXPECT_EQ(runs[1].at("backend").get<std::string>(), shared ? "mpi (host-staged)" : "nccl");
  EXPECT_EQ(r.output.find("ranks share GPUs") != std::string::npos, shared) << r.output;
  for (const auto& run : runs) EXPECT_TRUE(std::isfinite(run.at("loss_last").get<double>()));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

// `g4 bench train` on the CPU: tiny shapes, one step, so that CI runs the benchmark's code (the
// packed row, the model and optimizer set-up, the timing and the report) that otherwise only runs
// on GPU time. Timings are never asserted: only that the run completes, reports what it says it
// reports, and trains (a finite loss).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "io/json_input.h"
#include "support/g4_process.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using test::ProcessResult;

const std::string kSmoke = "bench train --device cpu --seq 64 --steps 1 --warmup 0";

// Runs `g4 bench train ARGS --json FILE` and returns the report; fails the test on a non-zero exit.
nlohmann::json bench(const std::string& args, const std::string& name, std::string* output = nullptr) {
  const fs::path dir = test::scratch_dir("bench_" + name);
  const std::string json = (dir / "report.json").string();
  const ProcessResult r = test::run_g4(args + " --json " + json);
  EXPECT_EQ(r.code, 0) << r.output;
  if (output) *output = r.output;
  if (r.code != 0) return {};
  nlohmann::json report = io::read_json_file(json, "bench report", io::kMaxConfigBytes);
  fs::remove_all(dir);
  return report;
}

void expect_trained(const nlohmann::json& g4, const std::string& output) {
  EXPECT_GT(g4.at("tokens_per_s").get<double>(), 0) << output;
  EXPECT_GT(g4.at("step_ms").get<double>(), 0) << output;
  EXPECT_TRUE(std::isfinite(g4.at("loss_first").get<double>())) << output;
  EXPECT_TRUE(std::isfinite(g4.at("loss_last").get<double>())) << output;
}

TEST(BenchTrain, CpuSmokeRunOnABuiltInTinyMoe) {
  std::string out;
  const nlohmann::json r = bench(kSmoke + " --model tiny-moe --layers 2", "tiny_moe", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  EXPECT_EQ(r.at("layers").get<int64_t>(), 2);
  EXPECT_EQ(r.at("device").get<std::string>(), "cpu");
  int64_t tokens = 0;
  for (const auto& n : r.at("documents")) tokens += n.get<int64_t>();
  EXPECT_EQ(tokens, 64);
  EXPECT_NE(out.find("MFU is n/a"), std::string::npos) << out;
  EXPECT_NE(out.find("g4 (f32, CPU)"), std::string::npos) << out;
}

TEST(BenchTrain, CpuSmokeRunOnAConfigFile) {
  std::string out;
  const nlohmann::json r =
      bench(kSmoke + " --config " + test::data_dir() + "/hf-gemma4/tiny-dense-ple --accum 2", "config", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  EXPECT_EQ(r.at("accum").get<int64_t>(), 2);
}

TEST(BenchTrain, RefusesOptionsThatDoNotApply) {
  const ProcessResult device = test::run_g4("bench train --device tpu --model tiny-dense --seq 64 --steps 1");
  EXPECT_NE(device.code, 0);
  EXPECT_NE(device.output.find("--device is cuda or cpu"), std::string::npos) << device.output;
  const ProcessResult layers =
      test::run_g4(kSmoke + " --config " + test::data_dir() + "/hf-gemma4/tiny-moe --layers 2");
  EXPECT_NE(layers.code, 0);
  EXPECT_NE(layers.output.find("--layers"), std::string::npos) << layers.output;
  const ProcessResult profile = test::run_g4(kSmoke + " --model tiny-dense --profile");
  EXPECT_NE(profile.code, 0);
  EXPECT_NE(profile.output.find("--profile"), std::string::npos) << profile.output;
}

}  // namespace
}  // namespace g4

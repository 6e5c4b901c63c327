// LoRA on the GPU keeps the frozen base only as its bf16 copy (issue 17 B): the optimizer's f32
// host model holds the adapters (and the buffers) alone, the f32 masters and moments on the device
// are the adapters', the base streamed from model.path onto the device is the CPU load rounded,
// the adapter checkpoints' base fingerprint is the CPU run's, and `g4 train` with LoRA on cuda
// trains like the f32 CPU run (bf16 tolerance) and resumes from adapter-only checkpoints. A full
// fine-tune (nothing frozen) keeps the whole f32 host model as before.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpu_test.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/state_dict_adapter.h"
#include "support/g4_process.h"
#include "support/masters_checkpoint.h"
#include "support/run_metrics.h"
#include "support/train_recipe.h"
#include "train/optimizer.h"
#include "train/run_setup.h"
#include "train/weights_checkpoint.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

const char* kLora = " lora.rank=4 lora.alpha=8 lora.seed=3 optimizer.lr=2e-2";
// As tests/gpu/train_test.cpp's kBf16RunTolerance (the same recipe and steps).
constexpr double kBf16RunTolerance = 2e-2;

std::vector<double> losses(const fs::path& run_dir) {
  std::vector<double> v;
  for (const nlohmann::json& j : test::records(run_dir))
    if (j.contains("loss")) v.push_back(j["loss"].get<double>());
  return v;
}


int64_t f32_bytes_of(const model::Gemma4& m, bool adapters) {
  int64_t n = 0;
  for (const std::string& name : m.params().order)
    if (model::is_lora(m.params().kind(name)) == adapters) n += m.params().at(name).value().numel();
  return 4 * n;
}

int64_t buffer_bytes(const model::Gemma4& m) {
  int64_t n = 0;
  for (const auto& [name, b] : m.params().buffers) n += static_cast<int64_t>(b.value.nbytes());
  return n;
}

TEST(GpuLoraMemory, TheHostAndTheOptimizerHoldOnlyTheAdaptersInF32) {
  G4_REQUIRE_GPU();
  const fs::path dir = test::scratch_dir("gpu_lora_memory");
  const std::string recipe = test::write_base_on_disk_recipe(dir, dir / "base", /*dense=*/true);
  const std::unique_ptr<model::Gemma4> cpu_base = model::load_hf_model((dir / "base").string());
  test::DataPosition objective;
  {
    const train::Recipe r = train::load_recipe(
        recipe, {"lora.rank=4", "lora.alpha=8", "train.device=cuda", "checkpoint.dir=" + (dir / "lora").string()});
    train::RunParts p(r, 64, /*resume=*/false);
    // The base on the device is the CPU load rounded, bit for bit.
    for (const std::string& n : cpu_base->params().order)
      EXPECT_TRUE(test::same_bits(p.model->params().at(n).value(), cpu_base->params().at(n).value().to(DType::BF16)))
          << n;
    // Before the optimizer exists, the host model holds the adapters and buffers only.
    int64_t allocated = 0;
    for (const std::string& n : p.host->params().order)
      if (p.host->params().at(n).value().defined()) allocated += p.host->params().at(n).value().numel() * 4;
    EXPECT_EQ(allocated, f32_bytes_of(*p.model, /*adapters=*/true));
    p.set_up_training(objective);
    const auto& opt = dynamic_cast<const train::ReplicatedAdamW&>(*p.opt);
    const int64_t adapters = f32_bytes_of(*p.model, true), base = f32_bytes_of(*p.model, false);
    int64_t masters = 0, moments = 0;
    for (size_t i = 0; i < opt.adamw().trainable().size(); ++i) {
      EXPECT_EQ(opt.adamw().master(i).dtype(), DType::F32);
      EXPECT_EQ(opt.adamw().master(i).device(), Device::CUDA);
      masters += static_cast<int64_t>(opt.adamw().master(i).nbytes());
    }
    for (const auto& [n, t] : opt.adamw().state()) moments += static_cast<int64_t>(t.nbytes());
    std::printf("LoRA on cuda: f32 host model %lld bytes (adapters %lld + buffers %lld; the base would add %lld), "
                "device masters %lld, moments %lld\n",
                static_cast<long long>(opt.host_bytes()), static_cast<long long>(adapters),
                static_cast<long long>(buffer_bytes(*p.model)), static_cast<long long>(base),
                static_cast<long long>(masters), static_cast<long long>(moments));
    EXPECT_EQ(opt.host_bytes(), adapters + buffer_bytes(*p.model));
    EXPECT_EQ(masters, adapters);
    EXPECT_EQ(moments, 2 * adapters);
    // Adapter-only checkpoints name the base by the fingerprint a CPU run computes (from the whole
    // f32 model; the adapters do not enter it).
    EXPECT_EQ(p.base_fingerprint, train::lora_base_fingerprint(*cpu_base));
  }
  {
    // A full fine-tune keeps the whole model in f32 on the host, as before.
    const train::Recipe r =
        train::load_recipe(recipe, {"train.device=cuda", "checkpoint.dir=" + (dir / "full").string()});
    train::RunParts p(r, 64, /*resume=*/false);
    p.set_up_training(objective);
    const auto& opt = dynamic_cast<const train::ReplicatedAdamW&>(*p.opt);
    EXPECT_EQ(opt.host_bytes(), f32_bytes_of(*p.model, false) + buffer_bytes(*p.model));
  }
  fs::remove_all(dir);
}

TEST(GpuLoraMemory, CudaLoraTrainsLikeTheCpuAndResumesFromAdapterOnlyCheckpoints) {
  G4_REQUIRE_GPU();
  const fs::path dir = test::scratch_dir("gpu_lora_train");
  const std::string recipe = test::write_base_on_disk_recipe(dir, dir / "base", /*dense=*/true);
  const std::string common = "train " + recipe + kLora + " checkpoint.dir=";
  const test::ProcessResult cpu = test::run_g4(common + (dir / "cpu").string());
  ASSERT_EQ(cpu.code, 0) << cpu.output;
  const test::ProcessResult gpu = test::run_g4(common + (dir / "gpu").string() + " train.device=cuda");
  ASSERT_EQ(gpu.code, 0) << gpu.output;
  const auto cpu_loss = losses(dir / "cpu"), gpu_loss = losses(dir / "gpu");
  ASSERT_EQ(cpu_loss.size(), 8u);
  test::expect_close_values(gpu_loss, cpu_loss, kBf16RunTolerance, "bf16 GPU vs f32 CPU LoRA training loss, step");
  const fs::path ckpt8 = dir / "gpu" / "checkpoints" / "step-00000008";
  EXPECT_TRUE(fs::exists(ckpt8 / model::kLoraBaseFile)) << "adapter-only checkpoints by default";
  EXPECT_FALSE(fs::exists(ckpt8 / "model.safetensors"));

  // Killed after step 6, resumed from the adapter-only step-4 checkpoint: step 5 repeats exactly.
  const std::string killed = common + (dir / "killed").string() + " train.device=cuda";
  test::ProcessResult r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  const auto before = losses(dir / "killed");
  ASSERT_EQ(before.size(), 6u);
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto after = losses(dir / "killed");
  ASSERT_EQ(after.size(), 8u);
  EXPECT_EQ(after[4], before[4]) << "step 5: the resumed run's loss differs from the killed run's";
  test::expect_close_values(after, gpu_loss, kBf16RunTolerance, "resumed vs uninterrupted GPU LoRA loss, step");

  // lora.save_base: the base in the checkpoint comes from its bf16 copy (the f32 base rounded).
  const test::ProcessResult with_base =
      test::run_g4(common + (dir / "with_base").string() + " train.device=cuda train.steps=4 lora.save_base=true");
  ASSERT_EQ(with_base.code, 0) << with_base.output;
  const auto saved = io::SafetensorsReader::open((dir / "with_base" / "checkpoints" / "step-00000004").string());
  const auto original = io::SafetensorsReader::open((dir / "base").string());
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_TRUE(test::same_bits(saved.get_f32(q, original.get(q).shape()),
                              original.get_f32(q, original.get(q).shape()).to(DType::BF16).to(DType::F32)));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

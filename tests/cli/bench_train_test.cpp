// `g4 bench train` on the CPU: tiny shapes, one step, so that CI runs the benchmark's code (the
// packed row, the model and optimizer set-up, the timing and the report) that otherwise only runs
// on GPU time. Timings are never asserted: only that the run completes, reports what it says it
// reports, and trains (a finite loss).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/named_configs.h"
#include "model/params.h"
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

// A stand-in for tools/bench_hf_train.py that records its arguments in its --json output.
fs::path fake_hf_script(const fs::path& dir) {
  const fs::path script = dir / "fake_hf.py";
  // g4 removes the files it wrote for the script after the run: the stand-in keeps copies, and
  // records their paths in place of the originals.
  std::ofstream(script) << "import json, shutil, sys\n"
                           "args = sys.argv[1:]\n"
                           "out = args[args.index('--json') + 1]\n"
                           "for key in ('--config', '--inputs'):\n"
                           "    if key in args:\n"
                           "        i = args.index(key) + 1\n"
                           "        args[i] = shutil.copy(args[i], out + key)\n"
                           "json.dump({'tokens_per_s': 1.0, 'step_ms': 1.0, 'peak_alloc_bytes': 0, 'argv': args}, "
                           "open(out, 'w'))\n";
  return script;
}

std::string arg_value(const std::vector<std::string>& argv, const std::string& key) {
  const auto it = std::find(argv.begin(), argv.end(), key);
  return it == argv.end() || it + 1 == argv.end() ? std::string("(missing)") : *(it + 1);
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

// LoRA rank 4 on tiny-moe's seven projections and both expert weights. Per token, a projection
// W [out, in] costs r·(in + out) multiply-adds in its adapter, an expert weight top-k (2) times that:
// layer 0 (sliding: q 128->128, k and v 128->64, o 128->128, gate/up 128->128, down 128->128)
// 4 · (256 + 192 + 192 + 256 + 3 · 256) = 6656; layer 1 (full: q 128->256, k 128->64 and no v (K=V),
// o 256->128, the MLP as before) 4 · (384 + 192 + 384 + 768) = 6912; experts (gate_up 128->128,
// down 64->128) per layer 2 · 4 · (256 + 192) = 3584. 20 736 per token, 2 FLOPs each, 64 tokens.
TEST(BenchTrain, LoraTrainsOnlyTheAdaptersAndCountsTheirFlops) {
  std::string out;
  const std::string shape = kSmoke + " --model tiny-moe --layers 2";
  const nlohmann::json r = bench(shape + " --lora 4 --lora-experts", "lora", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  const nlohmann::json& f = r.at("flops");
  EXPECT_EQ(f.at("adapters_forward").get<double>(), 2.0 * 20736 * 64);
  EXPECT_TRUE(f.at("frozen_base").get<bool>());
  // The base's weight-gradient GEMMs are skipped: 2 x its matmuls, 3 x attention and adapters.
  EXPECT_DOUBLE_EQ(r.at("flops_per_step").get<double>(),
                   2 * f.at("matmul_forward").get<double>() + 3 * f.at("attention_forward").get<double>() +
                       3 * f.at("adapters_forward").get<double>());
  // The adapters' elements are the multiply-adds above without top-k, times the 8 experts:
  // 6656 + 6912 + 2 · 8 · 4 · (256 + 192).
  EXPECT_EQ(r.at("g4").at("trainable_parameters").get<int64_t>(), 6656 + 6912 + 2 * 8 * 4 * (256 + 192));
  // B starts at zero, so the first step's loss is the base model's (the same seeded weights and row).
  const nlohmann::json full = bench(shape, "lora_base");
  ASSERT_FALSE(full.empty());
  EXPECT_EQ(r.at("g4").at("loss_first").get<double>(), full.at("g4").at("loss_first").get<double>());
  EXPECT_GT(full.at("g4").at("trainable_parameters").get<int64_t>(), r.at("g4").at("parameters").get<int64_t>() / 2);

  const ProcessResult dense = test::run_g4(kSmoke + " --model tiny-dense --lora 4 --lora-experts");
  EXPECT_NE(dense.code, 0);
  EXPECT_NE(dense.output.find("no routed experts"), std::string::npos) << dense.output;
}

// The command line `g4 bench train --hf` gives the Hugging Face script, checked with a stand-in
// script that records its arguments (torch is not needed): the same shape (the config g4 trained),
// device, document lengths, and peft's rank, alpha and targets.
TEST(BenchTrain, HfScriptGetsTheSameShapeDocumentsAndAdapters) {
  const fs::path dir = test::scratch_dir("bench_hf_script");
  const fs::path script = fake_hf_script(dir);
  std::string out;
  const nlohmann::json r = bench(kSmoke + " --model tiny-moe --layers 2 --lora 4 --lora-alpha 8 --lora-experts --hf "
                                 "--hf-script " + script.string(), "hf_args", &out);
  ASSERT_FALSE(r.empty());
  ASSERT_TRUE(r.contains("hf_bf16")) << out;  // --lora: one run, a bf16 base
  EXPECT_FALSE(r.contains("hf_fp32-autocast")) << out;
  const auto argv = r.at("hf_bf16").at("argv").get<std::vector<std::string>>();
  const auto value = [&](const std::string& key) { return arg_value(argv, key); };
  EXPECT_EQ(value("--device"), "cpu");
  EXPECT_EQ(value("--lora"), "4");
  EXPECT_EQ(value("--lora-alpha"), "8");
  EXPECT_EQ(value("--lora-targets"),
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,experts.gate_up_proj,experts.down_proj");
  std::string documents;
  for (const auto& n : r.at("documents")) documents += (documents.empty() ? "" : ",") + std::to_string(n.get<int64_t>());
  EXPECT_EQ(value("--documents"), documents);
  // A tiny shape is not in the script's table: it gets the config g4 trained.
  const nlohmann::json cfg = io::read_json_file(value("--config"), "config for HF", io::kMaxConfigBytes);
  EXPECT_EQ(cfg.at("num_hidden_layers").get<int64_t>(), 2);
  EXPECT_EQ(cfg.at("num_experts").get<int64_t>(), 8);
  EXPECT_NE(out.find("HF transformers + peft (bf16)"), std::string::npos) << out;
  fs::remove(value("--config"));
  fs::remove_all(dir);
}

// A script that runs out of GPU memory exits 3 with {"oom": true} in its output: the table says
// "out of memory" and g4's own row and report stand.
TEST(BenchTrain, HfOutOfMemoryIsReportedAsSuch) {
  const fs::path dir = test::scratch_dir("bench_hf_oom");
  const fs::path script = dir / "oom.py";
  std::ofstream(script) << "import json, sys\n"
                           "args = sys.argv[1:]\n"
                           "json.dump({'oom': True, 'error': 'stand-in'}, open(args[args.index('--json') + 1], 'w'))\n"
                           "sys.exit(3)\n";
  std::string out;
  const nlohmann::json r = bench(kSmoke + " --model tiny-dense --layers 1 --hf --hf-precision bf16 --hf-script " +
                                     script.string(), "oom", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  EXPECT_TRUE(r.at("hf_bf16").value("oom", false)) << out;
  EXPECT_NE(out.find("out of memory"), std::string::npos) << out;
  fs::remove_all(dir);
}

// A script that fails (here: exit 1, as Python does on a missing torch) is reported with its exit
// status, not std::system's raw status (256), and g4's own row stands. Found by tools/probe_misc.py.
TEST(BenchTrain, HfFailureNamesTheScriptsExitStatus) {
  const fs::path dir = test::scratch_dir("bench_hf_fail_script");  // not bench()'s own folder
  const fs::path script = dir / "fail.py";
  std::ofstream(script) << "import sys\nsys.exit(1)\n";
  std::string out;
  const nlohmann::json r = bench(kSmoke + " --model tiny-dense --layers 1 --hf --hf-precision bf16 --hf-script " +
                                     script.string(), "hf_fail", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  EXPECT_NE(out.find("failed (exit status 1; its output is above)"), std::string::npos) << out;
  fs::remove_all(dir);
}

// Two images at the smallest budget and a second of audio through the towers of the tiny E-type
// multimodal fixture; the Hugging Face side gets that very row (ids, token types, media) and the
// conditional config.
TEST(BenchTrain, ImagesAndAudioGoThroughTheTowers) {
  const fs::path dir = test::scratch_dir("bench_mm_script");
  const std::string fixture = test::data_dir() + "/hf-gemma4-mm/tiny-mm-e";
  std::string out;
  const nlohmann::json r = bench("bench train --device cpu --seq 192 --steps 1 --warmup 0 --config " + fixture +
                                     " --images 2 --audio-seconds 1 --image-soft-tokens 70 --hf --hf-precision bf16 "
                                     "--hf-script " + fake_hf_script(dir).string(),
                                 "mm", &out);
  ASSERT_FALSE(r.empty());
  expect_trained(r.at("g4"), out);
  const int64_t image_tokens = r.at("media").at("image_soft_tokens").get<int64_t>();
  const int64_t audio_tokens = r.at("media").at("audio_soft_tokens").get<int64_t>();
  EXPECT_GT(image_tokens, 0);
  EXPECT_LE(image_tokens, 2 * 70);
  EXPECT_EQ(audio_tokens, 25) << "1 s at 40 ms per soft token";
  EXPECT_NE(out.find("soft tokens"), std::string::npos) << out;

  const auto argv = r.at("hf_bf16").at("argv").get<std::vector<std::string>>();
  const io::ModelConfig cfg = io::load_model_config(fixture);
  const nlohmann::json hf_cfg = io::read_json_file(arg_value(argv, "--config"), "config for HF", io::kMaxConfigBytes);
  EXPECT_EQ(hf_cfg.at("model_type").get<std::string>(), "gemma4");
  EXPECT_TRUE(hf_cfg.at("vision_config").is_object());
  EXPECT_TRUE(hf_cfg.at("audio_config").is_object());
  const io::SafetensorsReader in = io::SafetensorsReader::open(arg_value(argv, "--inputs"));
  for (const char* k : {"pixel_values", "image_position_ids", "input_features", "input_features_mask"})
    EXPECT_TRUE(in.has(k)) << k;
  const Tensor ids = in.get("input_ids"), types = in.get("mm_token_type_ids"), labels = in.get("labels");
  ASSERT_EQ(ids.numel(), 192);
  int64_t images = 0, audio = 0, typed_images = 0, typed_audio = 0, trained_media = 0;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t id = ids.data<int64_t>()[i], type = types.data<int64_t>()[i];
    images += id == cfg.vision->image_token_id;
    audio += id == cfg.audio_token_id;
    typed_images += type == 1;
    typed_audio += type == 3;
    trained_media += type != 0 && labels.data<int64_t>()[i] != -100;
  }
  EXPECT_EQ(images, image_tokens);  // random text never takes a placeholder id
  EXPECT_EQ(audio, audio_tokens);
  EXPECT_EQ(typed_images, image_tokens);
  EXPECT_EQ(typed_audio, audio_tokens);
  EXPECT_EQ(trained_media, 0);
  for (const char* k : {"--config", "--inputs"}) fs::remove(arg_value(argv, k));
  fs::remove_all(dir);
}

// The built-in multimodal shapes are the released towers: their parameter counts are CONFIGS.md's
// (computed from the released widths), and E4B alone has the audio tower.
TEST(BenchTrain, BuiltInMultimodalShapesHaveTheReleasedTowers) {
  const auto tower_elements = [](const io::ModelConfig& c, const std::string& prefix) {
    int64_t n = 0;
    for (const model::ParamSpec& p : model::native_param_specs(c))
      if (p.name.rfind(prefix, 0) == 0) n += shape_numel(p.shape);
    return n;
  };
  const io::ModelConfig e4b = io::parse_model_config(model::named_multimodal_config("gemma-4-e4b"), "e4b");
  ASSERT_TRUE(e4b.vision && e4b.has_audio);
  EXPECT_EQ(tower_elements(e4b, "model.vision_tower."), 167364608);
  EXPECT_EQ(tower_elements(e4b, "model.audio_tower."), 304824608);
  EXPECT_EQ(e4b.num_layers, 42);
  const io::ModelConfig moe = io::parse_model_config(model::named_multimodal_config("gemma-4-26b-a4b"), "26b");
  ASSERT_TRUE(moe.vision);
  EXPECT_FALSE(moe.has_audio);
  EXPECT_EQ(tower_elements(moe, "model.vision_tower."), 569548080);
  EXPECT_EQ(moe.bidirectional, "vision");
}

// --ranks 1,2: each count relaunched through g4 launch (mpirun for 2), every rank a data-parallel
// replica with its own row; the table's totals, per-rank figures and efficiency are consistent.
// --fsdp runs the same with the optimizer state sharded.
TEST(BenchTrain, RanksRunDataParallelThroughTheLauncher) {
  if (test::run_shell("command -v mpirun >/dev/null 2>&1").code != 0)
    GTEST_SKIP() << "mpirun not found on PATH: install openmpi-bin (scripts/install_deps.sh) to run g4 launch -n 2";
  for (const std::string fsdp : {"", " --fsdp"}) {
    std::string out;
    const nlohmann::json r =
        bench(kSmoke + " --model tiny-moe --layers 2 --ranks 1,2" + fsdp, "ranks" + std::to_string(fsdp.size()), &out);
    ASSERT_FALSE(r.empty());
    const nlohmann::json& runs = r.at("ranks");
    ASSERT_EQ(runs.size(), 2u) << out;
    for (size_t i = 0; i < 2; ++i) {
      const nlohmann::json& run = runs[i];
      const int64_t n = static_cast<int64_t>(i) + 1;
      EXPECT_EQ(run.at("ranks").get<int64_t>(), n);
      EXPECT_EQ(run.at("backend").get<std::string>(), n == 1 ? "single" : "mpi");
      EXPECT_DOUBLE_EQ(run.at("tokens_per_s").get<double>(), n * run.at("tokens_per_s_per_rank").get<double>());
      EXPECT_DOUBLE_EQ(run.at("tokens_per_s_per_rank").get<double>(), 64 / (run.at("step_ms").get<double>() * 1e-3));
      EXPECT_DOUBLE_EQ(run.at("efficiency").get<double>(),
                       run.at("tokens_per_s").get<double>() / (n * runs[0].at("tokens_per_s").get<double>()));
      EXPECT_TRUE(std::isfinite(run.at("loss_last").get<double>())) << out;
    }
    EXPECT_NE(out.find("efficiency"), std::string::npos) << out;
    EXPECT_NE(out.find(fsdp.empty() ? "replicated" : "sharded"), std::string::npos) << out;
  }
  // Started by the launcher itself: one data-parallel run, its row printed by rank 0 alone.
  std::string out;
  const nlohmann::json r = bench("launch -n 2 " + kSmoke + " --model tiny-moe --layers 2", "launched", &out);
  ASSERT_FALSE(r.empty());
  ASSERT_EQ(r.at("ranks").size(), 1u) << out;
  EXPECT_EQ(r.at("ranks")[0].at("ranks").get<int64_t>(), 2);
  EXPECT_EQ(r.at("ranks")[0].at("backend").get<std::string>(), "mpi");
  EXPECT_EQ(out.find("[rank 1]   ranks"), std::string::npos) << out;
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
  const ProcessResult images = test::run_g4(kSmoke + " --model tiny-moe --images 1");
  EXPECT_NE(images.code, 0);
  EXPECT_NE(images.output.find("no multimodal form"), std::string::npos) << images.output;
  // Refused from the config, before a model of these widths is built.
  const ProcessResult audio = test::run_g4(kSmoke + " --model gemma-4-26b-a4b --layers 1 --audio-seconds 1");
  EXPECT_NE(audio.code, 0);
  EXPECT_NE(audio.output.find("has none"), std::string::npos) << audio.output;
  const ProcessResult long_media = test::run_g4(kSmoke + " --config " + test::data_dir() +
                                                "/hf-gemma4-mm/tiny-mm-e --images 1 --image-soft-tokens 70");
  EXPECT_NE(long_media.code, 0);
  EXPECT_NE(long_media.output.find("more than --seq 64"), std::string::npos) << long_media.output;
  const ProcessResult ranks_hf = test::run_g4(kSmoke + " --model tiny-moe --ranks 1,2 --hf");
  EXPECT_NE(ranks_hf.code, 0);
  EXPECT_NE(ranks_hf.output.find("--ranks and --hf"), std::string::npos) << ranks_hf.output;
}

// Exit status 1 and a message holding every one of `parts`.
void expect_refused(const std::string& args, std::initializer_list<std::string> parts) {
  const ProcessResult r = test::run_g4(args);
  EXPECT_EQ(r.code, 1) << args << ": " << r.output;
  for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << p << " in: " << r.output;
}

// Found by tools/probe_misc.py: every bench command's flags are checked before the GPU is looked at
// (on a machine without one, a mistake was hidden behind "needs a CUDA GPU"), before the run (a
// --json in a missing folder was silently not written after it), and NaN gets no further than
// CLI::Range let it.
TEST(BenchTrain, FlagsAreCheckedBeforeTheGpuAndTheRun) {
  const fs::path dir = test::scratch_dir("bench_flags");
  // The run would take seconds; the refusal comes before it.
  expect_refused(kSmoke + " --model tiny-moe --layers 2 --json " + (dir / "no" / "r.json").string(),
                 {"--json", "does not exist"});
  const std::string gpu = "bench train --device cuda --seq 64 --steps 1";
  expect_refused(gpu + " --model tiny-moe --lora-experts", {"--lora-experts"});
  expect_refused(gpu + " --model gemma-9", {"--model 'gemma-9'", "tiny-moe", "gemma-4-e4b"});
  expect_refused(gpu + " --model gemma-4-e4b --layers 43", {"--layers 43", "42 decoder layers"});
  expect_refused("bench generate --model gemma-4-31b --layers 61", {"--layers 61", "60 decoder layers"});
  expect_refused("bench rl --model gemma-4-26b-a4b --layers 31", {"--layers 31", "30 decoder layers"});
  expect_refused("bench rl --model tiny-moe", {"--model 'tiny-moe'", "gemma-4-e4b"});
  expect_refused("bench rl --tokenizer " + (dir / "nope").string(), {"--tokenizer", "nope"});
  expect_refused(kSmoke + " --model tiny-moe --hf --hf-script " + (dir / "nope.py").string(),
                 {"--hf-script", "nope.py"});
  for (const char* flag : {"--peak-tflops", "--audio-seconds", "--lora-alpha"})
    for (const char* v : {"nan", "-1", "inf"}) {
      const ProcessResult r = test::run_g4(kSmoke + " --model tiny-moe " + flag + "=" + v);
      EXPECT_NE(r.code, 0) << flag << " " << v;
      EXPECT_NE(r.output.find(flag), std::string::npos) << r.output;
    }
  // --ranks relaunches the command per count: its flags are checked before any rank starts.
  const ProcessResult model = test::run_g4(kSmoke + " --model gemma-9 --ranks 1,2");
  EXPECT_NE(model.output.find("--model 'gemma-9'"), std::string::npos) << model.output;
  EXPECT_EQ(model.output.find("running:"), std::string::npos) << model.output;
  for (const char* ranks : {"0", "-1", "257"}) {
    const ProcessResult r = test::run_g4(kSmoke + " --model tiny-moe --ranks " + ranks);
    EXPECT_NE(r.code, 0) << ranks;
    EXPECT_NE(r.output.find("--ranks"), std::string::npos) << r.output;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

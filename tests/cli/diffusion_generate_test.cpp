// `g4 generate` on a diffusion_gemma checkpoint: transformers' recorded run, through the command.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "support/g4_process.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

using nlohmann::json;

std::vector<int64_t> row(const Tensor& t, int64_t r, int64_t begin, int64_t end) {
  std::vector<int64_t> v;
  for (int64_t i = begin; i < end; ++i) v.push_back(element_as_int(t, r * t.size(1) + i));
  return v;
}

// Runs a recorded run of tiny-dg-a through `g4 generate --prompts` (its prompts without their left
// padding, which the command restores) and compares every row with transformers' output.
void replay(const std::string& run, const std::string& flags, const json& steps_per_block) {
  const std::string fixture = test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const Tensor prompt = ref.get(run + ".prompt"), want = ref.get(run + ".output");
  const Tensor tpf = ref.get_f32(run + ".tokens_per_forward", {2});
  const int64_t P = prompt.size(1), L = want.size(1);
  std::vector<int64_t> pads(2, 0);
  if (ref.has(run + ".attention_mask")) {
    const Tensor mask = ref.get(run + ".attention_mask");
    for (int64_t b = 0; b < 2; ++b)
      while (element_as_int(mask, b * P + pads[b]) == 0) ++pads[b];
  }
  const std::filesystem::path dir = test::scratch_dir("cli_diffusion_" + run);
  const std::string in = (dir / "in.jsonl").string(), out = (dir / "out.jsonl").string();
  {
    std::ofstream f(in);
    for (int64_t b = 0; b < 2; ++b) f << json{{"prompt_ids", row(prompt, b, pads[b], P)}}.dump() << "\n";
  }
  const test::ProcessResult r =
      test::run_g4("generate " + fixture + " --prompts " + in + " --out " + out + " --rng torch-cpu " + flags);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string text = io::read_regular_file(out, "output", 1 << 20);
  std::istringstream lines(text);
  std::string line;
  for (int64_t b = 0; b < 2; ++b) {
    ASSERT_TRUE(std::getline(lines, line)) << text;
    const json j = json::parse(line);
    EXPECT_EQ(j.at("prompt_ids").get<std::vector<int64_t>>(), row(prompt, b, pads[b], P));
    EXPECT_EQ(j.at("output_ids").get<std::vector<int64_t>>(), row(want, b, P, L)) << run << " row " << b;
    EXPECT_EQ(j.at("tokens_per_forward").get<float>(), tpf.data<float>()[b]);
    EXPECT_EQ(j.at("steps_per_block"), steps_per_block);
  }
  EXPECT_FALSE(std::getline(lines, line));
  std::filesystem::remove_all(dir);
}

TEST(CliDiffusion, GenerateWithTorchDrawsReproducesTransformers) {
  replay("gen_argmax",
         "--seed 121 --max-new-tokens 16 --max-denoising-steps 4 --t-min 0.0 --t-max 1e-6 --entropy-bound 0.1 "
         "--stability-threshold none --confidence-threshold none --eos-token-id none --pad-token-id 0",
         json::array({4, 4}));
  // Row 1 left-padded by the command as transformers' tokenizer pads; adaptive stopping.
  replay("gen_argmax_stop",
         "--seed 221 --max-new-tokens 24 --max-denoising-steps 10 --t-min 0.0 --t-max 1e-6 --entropy-bound 0.1 "
         "--stability-threshold 2 --confidence-threshold 0.005 --eos-token-id none --pad-token-id 0",
         json::array({9, 8, 7}));
}

TEST(CliDiffusion, TheFirstBlockCanBeSeeded) {
  // Seeded with the initial canvas transformers drew, the run is the recorded one: the command
  // still makes that draw, as transformers does (tests/diffusion/seeded_generate_test.cpp has the
  // library's properties).
  const std::string fixture = test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const Tensor init = ref.get("gen_argmax.init_canvas");
  const int64_t BC = 2 * 8;
  std::string ids;
  for (int64_t i = 0; i < BC; ++i) ids += (i ? "," : "") + std::to_string(element_as_int(init, i));
  const std::string flags =
      "--seed 121 --max-new-tokens 16 --max-denoising-steps 4 --t-min 0.0 --t-max 1e-6 --entropy-bound 0.1 "
      "--stability-threshold none --confidence-threshold none --eos-token-id none --pad-token-id 0";
  replay("gen_argmax", flags + " --decoder-input-ids " + ids, json::array({4, 4}));

  const std::filesystem::path dir = test::scratch_dir("cli_diffusion_seeded");
  const std::string base = "generate " + fixture + " --prompt-ids 5,6,7 --max-new-tokens 8 --max-denoising-steps 2";
  test::ProcessResult r = test::run_g4(base + " --decoder-input-ids 1,2,3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--decoder-input-ids holds 3 ids: give C = 8"), std::string::npos) << r.output;
  const std::string sc = (dir / "sc.safetensors").string();
  io::save_safetensors(sc, {{"self_conditioning_logits", randn({1, 8, 255}, 6101)}});
  r = test::run_g4(base + " --self-conditioning-logits " + sc);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("self_conditioning_logits"), std::string::npos) << r.output;
  io::save_safetensors(sc, {{"self_conditioning_logits", randn({1, 8, 256}, 6101, DType::F32, 4.0)}});
  const test::ProcessResult seeded = test::run_g4(base + " --self-conditioning-logits " + sc + " --seed 3");
  const test::ProcessResult plain = test::run_g4(base + " --seed 3");
  ASSERT_EQ(seeded.code, 0) << seeded.output;
  ASSERT_EQ(plain.code, 0) << plain.output;
  EXPECT_NE(seeded.output, plain.output) << "the first step's self-conditioning input changes the run";
  std::filesystem::remove_all(dir);
}

TEST(CliDiffusion, FlagsOfTheOtherSamplerAreRefused) {
  const std::string fixture = test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a";
  // Flags of the other kind of model are refused by name.
  const test::ProcessResult wrong = test::run_g4("generate " + fixture + " --prompt-ids 5,6 --temperature 0.7");
  EXPECT_NE(wrong.code, 0);
  EXPECT_NE(wrong.output.find("--temperature"), std::string::npos) << wrong.output;
  const test::ProcessResult bad = test::run_g4("generate " + fixture + " --prompt-ids 5,6 --stability-threshold 1.5");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--stability-threshold: '1.5' is not an integer"), std::string::npos) << bad.output;
  const test::ProcessResult other =
      test::run_g4("generate " + test::data_dir() + "/hf-gemma4/tiny-moe --prompt-ids 5,6 --t-min 0.1");
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.output.find("--t-min: applies only to diffusion_gemma checkpoints"), std::string::npos)
      << other.output;
}

}  // namespace
}  // namespace g4

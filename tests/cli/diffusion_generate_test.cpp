// `g4 generate` on a diffusion_gemma checkpoint: transformers' recorded run, through the command.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

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

TEST(CliDiffusion, GenerateWithTorchDrawsReproducesTransformers) {
  // gen_argmax of tiny-dg-a: both prompts as one batch, the recorded seed and settings.
  const std::string fixture = test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const Tensor prompt = ref.get("gen_argmax.prompt"), want = ref.get("gen_argmax.output");
  const Tensor tpf = ref.get_f32("gen_argmax.tokens_per_forward", {2});
  const int64_t P = prompt.size(1), L = want.size(1);
  const std::filesystem::path dir = test::scratch_dir("cli_diffusion_generate");
  const std::string in = (dir / "in.jsonl").string(), out = (dir / "out.jsonl").string();
  {
    std::ofstream f(in);
    for (int64_t b = 0; b < 2; ++b) f << json{{"prompt_ids", row(prompt, b, 0, P)}}.dump() << "\n";
  }
  const test::ProcessResult r =
      test::run_g4("generate " + fixture + " --prompts " + in + " --out " + out +
                   " --rng torch-cpu --seed 121 --max-new-tokens 16 --max-denoising-steps 4 --t-min 0.0 --t-max 1e-6"
                   " --entropy-bound 0.1 --stability-threshold none --confidence-threshold none --eos-token-id none "
                   "--pad-token-id 0");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string text = io::read_regular_file(out, "output", 1 << 20);
  std::istringstream lines(text);
  std::string line;
  for (int64_t b = 0; b < 2; ++b) {
    ASSERT_TRUE(std::getline(lines, line)) << text;
    const json j = json::parse(line);
    EXPECT_EQ(j.at("prompt_ids").get<std::vector<int64_t>>(), row(prompt, b, 0, P));
    EXPECT_EQ(j.at("output_ids").get<std::vector<int64_t>>(), row(want, b, P, L)) << "row " << b;
    EXPECT_EQ(j.at("tokens_per_forward").get<float>(), tpf.data<float>()[b]);
    EXPECT_EQ(j.at("steps_per_block"), json::array({4, 4}));
  }
  EXPECT_FALSE(std::getline(lines, line));

  // Flags of the other kind of model are refused by name.
  const test::ProcessResult wrong = test::run_g4("generate " + fixture + " --prompt-ids 5,6 --temperature 0.7");
  EXPECT_NE(wrong.code, 0);
  EXPECT_NE(wrong.output.find("--temperature"), std::string::npos) << wrong.output;
  const test::ProcessResult bad = test::run_g4("generate " + fixture + " --prompt-ids 5,6 --stability-threshold 1.5");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--stability-threshold: '1.5' is not an integer"), std::string::npos) << bad.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace g4

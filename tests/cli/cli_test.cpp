// The `g4` command as users and other tools drive it: outputs, exit codes and error messages.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/random.h"
#include "io/safetensors.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"
#include "support/train_recipe.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
const std::string kData = test::data_dir();

using test::ProcessResult;

ProcessResult run(const std::string& args, const std::string& env = "") { return test::run_g4(args, env); }
fs::path temp_dir(const std::string& name) { return test::scratch_dir("cli_" + name); }

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

// Elements [begin, end) of an integer tensor as "a,b,c".
std::string join_ids(const Tensor& t, int64_t begin, int64_t end) {
  std::string s;
  for (int64_t i = begin; i < end; ++i) {
    if (i > begin) s.push_back(',');
    s.append(std::to_string(element_as_int(t, i)));
  }
  return s;
}

TEST(Cli, InspectDescribesTheModel) {
  const ProcessResult r = run("inspect " + kData + "/hf-gemma4/tiny-moe");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("MoE"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("full"), std::string::npos);
  EXPECT_NE(r.output.find("parameters"), std::string::npos);
}

TEST(Cli, TrainListsRecipeKeysWithoutARecipe) {
  const ProcessResult r = run("train --list-keys");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("optimizer.lr"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parallel.fsdp"), std::string::npos) << r.output;
  const ProcessResult none = run("train");
  EXPECT_NE(none.code, 0) << none.output;
  EXPECT_NE(none.output.find("--list-keys"), std::string::npos) << none.output;
}

TEST(Cli, ForwardWritesLogitsLossAndHfGradients) {
  const fs::path dir = temp_dir("forward");
  const std::string fixture = kData + "/hf-gemma4/tiny-dense-keqv";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  io::save_safetensors((dir / "in.safetensors").string(), {{"input_ids", ref.get("input_ids").clone()},
                                                           {"attention_mask", ref.get("attention_mask").clone()},
                                                           {"labels", ref.get("labels").clone()}});
  const ProcessResult r = run("forward " + fixture + " --inputs " + (dir / "in.safetensors").string() + " --out " +
                       (dir / "out.safetensors").string() + " --grads");
  ASSERT_EQ(r.code, 0) << r.output;
  const io::SafetensorsReader out = io::SafetensorsReader::open((dir / "out.safetensors").string());
  EXPECT_NEAR(out.get_f32("loss", {1}).data<float>()[0], ref.get_f32("loss", {1}).data<float>()[0], 1e-5);
  EXPECT_TRUE(out.has("logits"));
  EXPECT_TRUE(out.has("grad.model.layers.2.self_attn.k_proj.weight"));
  EXPECT_FALSE(out.has("grad.model.layers.2.self_attn.v_proj.weight"));  // K=V layer: no v_proj
  fs::remove_all(dir);
}

TEST(Cli, GenerateIsGreedyByDefault) {
  const std::string fixture = kData + "/hf-gemma4/tiny-moe";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const Tensor prompt = ref.get("generate.prompt"), want = ref.get("generate.output");
  const std::string ids = join_ids(prompt, 0, prompt.numel());
  const std::string expected = join_ids(want, prompt.numel(), want.numel());
  const ProcessResult r = run("generate " + fixture + " --prompt-ids " + ids + " --max-new-tokens 10");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, expected + "\n");
}

TEST(Cli, SamplingIsReproducibleBySeed) {
  const std::string fixture = kData + "/hf-gemma4/tiny-dense-ple";
  const std::string args = "generate " + fixture + " --prompt-ids 5,6,7 --max-new-tokens 6 --temperature 1.0 --top-p 0.9";
  const ProcessResult a = run(args + " --seed 7"), b = run(args + " --seed 7");
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
}

TEST(Cli, ConvertRoundTrips) {
  const fs::path dir = temp_dir("convert");
  const std::string fixture = kData + "/hf-gemma4/tiny-moe";
  const ProcessResult r = run("convert " + fixture + " " + (dir / "out").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "out" / "config.json"));
  EXPECT_TRUE(fs::exists(dir / "out" / "generation_config.json"));
  const ProcessResult g1 = run("generate " + fixture + " --prompt-ids 9,8,7,6 --max-new-tokens 5");
  const ProcessResult g2 = run("generate " + (dir / "out").string() + " --prompt-ids 9,8,7,6 --max-new-tokens 5");
  EXPECT_EQ(g1.output, g2.output);
  fs::remove_all(dir);
}

TEST(Cli, BadInputsGiveClearErrors) {
  const std::string fixture = kData + "/hf-gemma4/tiny-moe";
  ProcessResult r = run("generate " + fixture + " --prompt-ids 5,300 --max-new-tokens 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("300"), std::string::npos) << r.output;
  r = run("generate " + fixture + " --prompt-ids 5,x --max-new-tokens 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("'x'"), std::string::npos) << r.output;
  r = run("inspect /nonexistent/model");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/model"), std::string::npos) << r.output;
  r = run("forward " + fixture + " --inputs /nonexistent/in.safetensors --out /tmp/x.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/in.safetensors"), std::string::npos) << r.output;
}

// Exit code 1 and a message holding every one of `parts`.
void expect_error(const ProcessResult& r, std::initializer_list<std::string> parts) {
  EXPECT_EQ(r.code, 1) << r.output;
  for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << p << " in: " << r.output;
}

TEST(Cli, GenerationOptionsOutOfRangeNameTheOption) {
  const std::string gen = "generate " + kData + "/hf-gemma4/tiny-moe --prompt-ids 5,6,7 ";
  expect_error(run(gen + "--max-new-tokens 1000000000"),
               {"--max-new-tokens 1000000000", "max_position_embeddings 4096", "at most 4093 new tokens"});
  expect_error(run(gen + "--max-new-tokens 4094"), {"--max-new-tokens 4094", "max_position_embeddings 4096"});
  expect_error(run(gen + "--max-new-tokens -5"), {"--max-new-tokens must be >= 0, got -5"});
  for (const char* t : {"nan", "-1", "inf"})
    expect_error(run(gen + "--max-new-tokens 2 --temperature " + t), {"--temperature must be a finite number >= 0"});
  expect_error(run(gen + "--max-new-tokens 2 --top-k -3"), {"--top-k must be >= 0", "-3"});
  for (const char* p : {"0", "1.5", "nan"})
    expect_error(run(gen + "--max-new-tokens 2 --top-p " + p), {"--top-p must be in (0, 1]"});
  // The boundary itself fits: prompt + new tokens = the context length is allowed (only checked,
  // not run: 4093 tokens take long), and temperature 0 is argmax.
  const ProcessResult ok = run(gen + "--max-new-tokens 2 --temperature 0 --top-k 0 --top-p 1");
  EXPECT_EQ(ok.code, 0) << ok.output;
}

TEST(Cli, SequenceLengthsPastTheContextAreRefused) {
  const fs::path dir = temp_dir("seq_len");
  const std::string recipe = test::write_train_recipe(dir);
  expect_error(run("train " + recipe + " data.seq_len=4097"),
               {"data.seq_len 4097", "max_position_embeddings 4096", "recipe.yaml"});
  EXPECT_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
  expect_error(run("eval " + kData + "/hf-gemma4/tiny-moe --data " + kData + "/text/genesis.txt --seq-len 4097"),
               {"--seq-len 4097", "max_position_embeddings 4096"});
  fs::remove_all(dir);
}

// Found by tools/probe_misc.py: `g4 launch -n 1000000` handed a million ranks to mpirun
// --oversubscribe (a fork bomb); the count is now at most kMaxLocalRanks, checked as the flag.
TEST(Cli, LaunchRefusesMoreRanksThanAMachineRuns) {
  const ProcessResult r = run("launch -n 1000000 inspect " + kData + "/hf-gemma4/tiny-moe");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("-n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("256"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[rank"), std::string::npos) << r.output;  // no rank started
}

// Found by tools/probe_misc.py: "g4 frobnicate" and "g4 bench trian" read only "A subcommand is
// required", and `g4 launch -n N frobnicate` started N ranks to print it N times.
TEST(Cli, UnknownCommandsAreNamedWithTheChoices) {
  ProcessResult r = run("frobnicate x");
  EXPECT_EQ(r.code, 109) << r.output;  // CLI11's code for arguments it did not expect
  EXPECT_NE(r.output.find("'frobnicate' is not a command"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("inspect, forward"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("launch-rank"), std::string::npos) << r.output;  // hidden
  r = run("bench trian --device cpu");
  EXPECT_NE(r.output.find("g4 bench: 'trian' is not a command (train, generate, rl)"), std::string::npos) << r.output;
  r = run("launch -n 2 frobnicate");
  expect_error(r, {"g4 launch", "'frobnicate' is not a command"});
  EXPECT_EQ(r.output.find("[rank"), std::string::npos) << r.output;
  // A command's own positional arguments are not commands.
  EXPECT_EQ(run("inspect " + kData + "/hf-gemma4/tiny-moe").code, 0);
}

// Found by tools/probe_misc.py: CLI11 2.1 reads integers with strtoll / strtoull and no range
// check, so --seed -1 and --seed 2^64 both ran as seed 2^64 - 1, and 2^66 as 2^63 - 1; its lists
// dropped the empty item of "1,,2".
TEST(Cli, IntegerFlagsAreDecimalAndInRange) {
  const fs::path dir = temp_dir("integers");
  const std::string out = (dir / "t.jsonl").string();
  for (const char* seed : {"-1", "18446744073709551616", "0x10", "1.5", "010"}) {
    const ProcessResult r = run("task arithmetic --count 1 --out " + out + " --seed=" + seed);
    EXPECT_NE(r.code, 0) << seed;
    EXPECT_NE(r.output.find("--seed"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out)) << seed;
  }
  ASSERT_EQ(run("task arithmetic --count 1 --out " + out + " --seed 18446744073709551615").code, 0);
  const ProcessResult big = run("eval " + kData + "/hf-gemma4/tiny-moe --data x --batch-size 99999999999999999999");
  EXPECT_NE(big.code, 0);
  EXPECT_NE(big.output.find("--batch-size: '99999999999999999999' is out of range"), std::string::npos) << big.output;
  // generate's --max-new-tokens too (usage errors, CLI11's exit code): 18446744073709551615 was
  // clamped to 2^63 - 1, which the diffusion sampler turned into no block at all, and "010" was 8.
  for (const char* model : {"/hf-gemma4/tiny-dense-ple", "/hf-diffusion-gemma/tiny-dg-a"}) {
    const std::string gen = "generate " + kData + model + " --prompt-ids 5,6 --max-new-tokens ";
    for (const auto& [value, says] : {std::pair<std::string, std::string>{"18446744073709551615", "is out of range"},
                                      {"010", "has a leading zero (it would be read as octal; write 10)"}}) {
      const ProcessResult r = run(gen + value);
      EXPECT_NE(r.code, 0) << model << " " << value;
      EXPECT_NE(r.output.find("--max-new-tokens: '" + value + "' " + says), std::string::npos) << r.output;
    }
  }
  const std::string gen = "generate " + kData + "/hf-gemma4/tiny-dense-ple --prompt-ids 5,6 --max-new-tokens 2 ";
  for (const char* flags :
       {"--top-k 010", "--seed=-1", "--seed 0x10", "--stop-ids 1,010", "--stop-ids 1,99999999999999999999"}) {
    const ProcessResult r = run(gen + flags);
    EXPECT_NE(r.code, 0) << flags;
    EXPECT_NE(r.output.find(std::string(flags).substr(0, std::string(flags).find_first_of(" ="))), std::string::npos)
        << r.output;
  }
  EXPECT_EQ(run(gen + "--seed 18446744073709551615 --top-k 3 --stop-ids 1,2").code, 0);
  // The video flags (parsed before any model or frame is read): CLI::PositiveNumber took "010"
  // frames as octal 8 and printed inf's bound as a 300-digit number.
  const std::string video = "generate /nonexistent/model --prompt x --video /nonexistent/frames ";
  for (const auto& [flags, says] :
       {std::pair<std::string, std::string>{"--video-frames 010", "--video-frames: '010' has a leading zero"},
        {"--video-frames 99999999999999999999", "--video-frames: '99999999999999999999' is out of range"},
        {"--video-fps inf", "--video-fps: must be a number in (0, 1.79769e+308], got inf"},
        {"--video-fps nan", "--video-fps: must be a number in (0, 1.79769e+308], got nan"}}) {
    const ProcessResult r = run(video + flags);
    EXPECT_NE(r.code, 0) << flags;
    EXPECT_NE(r.output.find(says), std::string::npos) << r.output;
  }
  // The engine's and the server's integers (CLI::PositiveNumber and CLI::Range before: --port 010
  // listened on port 8).
  for (const auto& [command, says] :
       {std::pair<std::string, std::string>{"generate /nonexistent/model --prompt-ids 5 --page-size 010",
                                            "--page-size: '010' has a leading zero"},
        {"serve /nonexistent/model --port 010", "--port: '010' has a leading zero"},
        {"convert /nonexistent/in /nonexistent/out --to-diffusion --canvas-length 010",
         "--canvas-length: '010' has a leading zero"},
        {"serve /nonexistent/model --port 70000", "--port: must be in [0, 65535], got 70000"},
        {"serve /nonexistent/model --max-running 99999999999999999999",
         "--max-running: '99999999999999999999' is out"}}) {
    const ProcessResult r = run(command);
    EXPECT_NE(r.code, 0) << command;
    EXPECT_NE(r.output.find(says), std::string::npos) << r.output;
  }
  for (const char* list : {"1,,2", "1,", "0", "x"}) {
    expect_error(run(std::string("bench generate --batch ") + list), {"--batch"});
    expect_error(run(std::string("bench train --device cpu --ranks ") + list), {"--ranks"});
  }
  fs::remove_all(dir);
}

TEST(Cli, ForwardNeverOverwritesAModelFileUnasked) {
  const fs::path dir = temp_dir("forward_overwrite");
  const std::string fixture = kData + "/hf-gemma4/tiny-dense-keqv";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const std::string in = (dir / "in.safetensors").string();
  io::save_safetensors(in, {{"input_ids", ref.get("input_ids").clone()}});
  ASSERT_EQ(run("convert " + fixture + " " + (dir / "other").string()).code, 0);
  const fs::path weights = dir / "other" / "model.safetensors";
  const auto size = fs::file_size(weights);

  const std::string forward = "forward " + fixture + " --inputs " + in + " --out ";
  expect_error(run(forward + weights.string()), {"--out", weights.string(), "--overwrite"});
  expect_error(run(forward + (dir / "other" / "config.json").string()), {"--out", "config.json", "--overwrite"});
  EXPECT_EQ(fs::file_size(weights), size);
  // The input model's own files: not even with --overwrite.
  expect_error(run(forward + fixture + "/model.safetensors --overwrite"), {"--out", "input model", "even with"});
  // Asked for: replaced. A new file, or an existing one outside a model directory: written as before.
  ProcessResult r = run(forward + weights.string() + " --overwrite");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(io::SafetensorsReader::open(weights.string()).has("logits"));
  r = run(forward + (dir / "out.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.output;
  r = run(forward + (dir / "out.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.output;
  fs::remove_all(dir);
}

TEST(Cli, ConvertNeverOverwritesAModelUnasked) {
  const fs::path dir = temp_dir("convert_overwrite");
  const std::string moe = kData + "/hf-gemma4/tiny-moe", dense = kData + "/hf-gemma4/tiny-dense-ple";
  const std::string out = (dir / "out").string();
  ASSERT_EQ(run("convert " + moe + " " + out).code, 0);
  expect_error(run("convert " + dense + " " + out), {"OUT_DIR", out, "already holds a model", "--overwrite"});
  // Weights alone (no config.json) are a model too.
  const fs::path bare = dir / "bare";
  fs::create_directories(bare);
  fs::copy_file(dir / "out" / "model.safetensors", bare / "model.safetensors");
  expect_error(run("convert " + dense + " " + bare.string()), {"model.safetensors", "--overwrite"});
  // An existing empty directory, or one without a model, is fine.
  fs::create_directories(dir / "empty");
  EXPECT_EQ(run("convert " + dense + " " + (dir / "empty").string()).code, 0);
  // The input itself: never, even by another spelling of its path and with --overwrite.
  expect_error(run("convert " + out + " " + out + "/../out --overwrite"), {"input model directory", "even with"});
  // Asked for: the old model is replaced, and the result is the new model, with nothing of the
  // old one (a shard, an index, a tokenizer the new model's input lacks) left to mix in.
  for (const char* stale : {"model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"})
    std::ofstream(dir / "out" / stale) << "{}";
  const ProcessResult r = run("convert " + dense + " " + out + " --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* stale : {"model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"})
    EXPECT_FALSE(fs::exists(dir / "out" / stale)) << stale;
  const std::string prompt = " --prompt-ids 9,8,7,6 --max-new-tokens 5";
  EXPECT_EQ(run("generate " + out + prompt).output, run("generate " + dense + prompt).output);
  // A write that fails (a file size limit, as a full disk) leaves the old model whole: the new one is written
  // beside it first. Probed (session 39): the old model was removed first, and neither was left.
  const ProcessResult full = run("convert " + moe + " " + out + " --overwrite", "trap '' XFSZ; ulimit -f 1000;");
  expect_error(full, {".g4-convert.", "model.safetensors", "File too large"});
  EXPECT_EQ(run("generate " + out + prompt).output, run("generate " + dense + prompt).output);
  std::vector<std::string> left;
  for (const fs::directory_entry& e : fs::directory_iterator(out)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
  // A user's own tokenizer or generation config is not replaced unasked either.
  fs::create_directories(dir / "mine");
  write_text(dir / "mine" / "generation_config.json", "{\"eos_token_id\": 99}");
  expect_error(run("convert " + dense + " " + (dir / "mine").string()),
               {"already holds a model (generation_config.json)", "--overwrite"});
  EXPECT_EQ(read_text(dir / "mine" / "generation_config.json"), "{\"eos_token_id\": 99}");
  // An input tokenizer that is no file is found before anything is written; an OUT_DIR that cannot
  // be made is named in g4's words.
  const fs::path fifo_in = dir / "fifo_in";
  fs::create_directories(fifo_in);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(fs::path(dense) / f, fifo_in / f);
  ASSERT_EQ(::mkfifo((fifo_in / "tokenizer.json").c_str(), 0600), 0);
  expect_error(run("convert " + fifo_in.string() + " " + (dir / "from_fifo").string()),
               {"IN_DIR's tokenizer.json", "is not a regular file"});
  EXPECT_FALSE(fs::exists(dir / "from_fifo"));
  const ProcessResult bad_out = run("convert " + dense + " " + (dir / "mine" / "generation_config.json" / "x").string());
  expect_error(bad_out, {"convert: OUT_DIR", "cannot make the folder: Not a directory"});
  EXPECT_EQ(bad_out.output.find("filesystem error"), std::string::npos) << bad_out.output;
  fs::remove_all(dir);
}

using test::max_diff;

// Images and audio from the processors' outputs: logits, loss and every gradient transformers
// recorded (text, vision tower, audio tower) through `g4 forward --grads`.
TEST(Cli, ForwardOnAMultimodalModelMatchesTransformers) {
  const fs::path dir = temp_dir("forward_mm");
  for (const std::string name : {"tiny-mm-bidir", "tiny-mm-e"}) {
    SCOPED_TRACE(name);
    const std::string fixture = kData + "/hf-gemma4-mm/" + name;
    const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
    std::vector<std::pair<std::string, Tensor>> inputs;
    for (const char* key : {"input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values",
                            "image_position_ids", "input_features", "input_features_mask"})
      inputs.emplace_back(key, ref.get(key).clone());
    const std::string in = (dir / "in.safetensors").string(), out = (dir / (name + ".safetensors")).string();
    io::save_safetensors(in, inputs);
    const ProcessResult r = run("forward " + fixture + " --inputs " + in + " --out " + out + " --grads --overwrite");
    ASSERT_EQ(r.code, 0) << r.output;
    const io::SafetensorsReader o = io::SafetensorsReader::open(out);
    const Tensor logits = o.get("logits").clone();
    // The bounds of VisionFixture.LogitsLossAndGradientsMatchTransformers (test_model), which says why.
    EXPECT_LT(max_diff(logits, ref.get_f32("logits", logits.shape()), ref.get("attention_mask")), 1.5e-4);
    EXPECT_NEAR(o.get_f32("loss", {1}).item(), ref.get_f32("loss", {1}).item(), 1e-5);
    // tiny-mm-e's recorded fp32 gradients are noisier (docs/multimodal.md): 2e-4 of the norm there.
    const double tol = name == "tiny-mm-e" ? 2e-4 : 1.5e-4;
    int64_t recorded = 0, audio = 0, vision = 0;
    for (const std::string& key : ref.names()) {
      if (key.rfind("grad.", 0) != 0) continue;
      ++recorded;
      ASSERT_TRUE(o.has(key)) << "g4 forward wrote no " << key;
      const Tensor g = o.get("grad." + key.substr(5)).clone();
      const test::L2Error e = test::l2_error(g, ref.get_f32(key, g.shape()));
      EXPECT_LE(e.diff, std::max(tol * e.norm, 1e-7)) << key;
      audio += key.find("audio") != std::string::npos;
      vision += key.find("vision") != std::string::npos;
    }
    EXPECT_GT(audio, 0);
    EXPECT_GT(vision, 0);
    int64_t written = 0;
    for (const std::string& key : o.names()) written += key.rfind("grad.", 0) == 0;
    EXPECT_EQ(written, recorded);
  }
  fs::remove_all(dir);
}

TEST(Cli, ForwardOnADiffusionModelMatchesTransformers) {
  const fs::path dir = temp_dir("forward_diffusion");
  const std::string fixture = kData + "/hf-diffusion-gemma/tiny-dg-a";
  const io::SafetensorsReader ref = io::SafetensorsReader::open(fixture + "/reference.safetensors");
  const std::string in = (dir / "in.safetensors").string(), out = (dir / "out.safetensors").string();
  const Tensor ids = ref.get("fwd.input_ids").clone();
  io::save_safetensors(in, {{"input_ids", ids},
                            {"canvas_ids", ref.get("fwd.canvas_ids").clone()},
                            {"self_conditioning_logits", ref.get("fwd.sc_logits").clone()},
                            {"self_conditioning_mask", ref.get("fwd.sc_mask").clone()},
                            {"labels", ids}});
  ProcessResult r = run("forward " + fixture + " --inputs " + in + " --out " + out + " --grads");
  ASSERT_EQ(r.code, 0) << r.output;
  {
    const io::SafetensorsReader o = io::SafetensorsReader::open(out);
    const Tensor logits = o.get_f32("logits", {2, 8, 256}), enc = o.get_f32("encoder_logits", {2, 13, 256});
    EXPECT_LT(max_diff(logits, ref.get_f32("fwd.logits_sc_masked", logits.shape())), 1e-4);
    EXPECT_LT(max_diff(enc, ref.get_f32("fwd.encoder_logits", enc.shape())), 1e-4);
    // encoder_loss: the mean next-token cross-entropy of transformers' encoder logits.
    const Tensor want = ref.get_f32("fwd.encoder_logits", enc.shape());
    double sum = 0;
    int64_t n = 0;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t t = 0; t + 1 < 13; ++t, ++n) {
        const float* row = want.data<float>() + (b * 13 + t) * 256;
        double mx = row[0], z = 0;
        for (int64_t v = 0; v < 256; ++v) mx = std::max(mx, double(row[v]));
        for (int64_t v = 0; v < 256; ++v) z += std::exp(double(row[v]) - mx);
        sum += mx + std::log(z) - row[element_as_int(ids, b * 13 + t + 1)];
      }
    EXPECT_NEAR(o.get_f32("encoder_loss", {1}).item(), sum / double(n), 1e-5);
    EXPECT_TRUE(o.has("grad.model.decoder.layers.0.self_attn.q_proj.weight"));
    EXPECT_TRUE(o.has("grad.model.decoder.layers.4.experts.down_proj"));
    EXPECT_FALSE(o.has("grad.model.decoder.layers.4.self_attn.v_proj.weight"));
  }

  // Left padding: the encoder's mask, and the decoder's over [context ; canvas].
  io::save_safetensors(in, {{"input_ids", ref.get("fwdpad.input_ids").clone()},
                            {"canvas_ids", ref.get("fwd.canvas_ids").clone()},
                            {"attention_mask", ref.get("fwdpad.attention_mask").clone()},
                            {"decoder_attention_mask", ref.get("fwdpad.decoder_attention_mask").clone()}});
  r = run("forward " + fixture + " --inputs " + in + " --out " + out + " --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  {
    const io::SafetensorsReader o = io::SafetensorsReader::open(out);
    const Tensor logits = o.get_f32("logits", {2, 8, 256}), enc = o.get_f32("encoder_logits", {2, 13, 256});
    EXPECT_LT(max_diff(logits, ref.get_f32("fwdpad.logits", logits.shape())), 1e-4);
    EXPECT_LT(max_diff(enc, ref.get_f32("fwdpad.encoder_logits", enc.shape()), ref.get("fwdpad.attention_mask")),
              1e-4);
    EXPECT_FALSE(o.has("encoder_loss"));
  }

  // What it needs, and what it refuses.
  io::save_safetensors(in, {{"input_ids", ids}});
  expect_error(run("forward " + fixture + " --inputs " + in + " --out " + out), {"canvas_ids", in});
  io::save_safetensors(in, {{"input_ids", ids}, {"canvas_ids", ref.get("fwd.canvas_ids").clone()}});
  expect_error(run("forward " + fixture + " --inputs " + in + " --out " + out + " --grads"), {"--grads", "labels"});
  fs::remove_all(dir);
}

TEST(Cli, DiffusionForwardMasksTheDecoderAsTransformersDoes) {
  // Found by tools/probe_diffusion_vs_transformers.py, recorded by tools/record_diffusion_probe_cases.py:
  // transformers' forward takes the decoder's mask apart from the encoder's. Without a
  // decoder_attention_mask the canvas attends to every cached key, padding included (g4 masked
  // the padding, moving the padded row's logits by 9.5); with one, its first S columns mask
  // context keys whatever attention_mask was (g4 refused any that differed).
  const fs::path dir = temp_dir("forward_diffusion_masks");
  const std::string fixture = kData + "/hf-diffusion-gemma/tiny-dg-a";
  const io::SafetensorsReader ref =
      io::SafetensorsReader::open(kData + "/hf-diffusion-gemma/probe/forward_masks.safetensors");
  const std::string in = (dir / "in.safetensors").string(), out = (dir / "out.safetensors").string();
  const Tensor ids = ref.get("nomask.input_ids").clone(), canvas = ref.get("canvas_ids").clone();
  const struct {
    const char* name;
    std::vector<std::pair<std::string, Tensor>> inputs;
  } cases[] = {
      {"nomask", {{"input_ids", ids}, {"decoder_input_ids", canvas},
                  {"attention_mask", ref.get("nomask.attention_mask").clone()}}},
      {"decmask", {{"input_ids", ids}, {"decoder_input_ids", canvas},
                   {"decoder_attention_mask", ref.get("decmask.decoder_attention_mask").clone()}}},
  };
  for (const auto& c : cases) {
    io::save_safetensors(in, c.inputs);
    const ProcessResult r = run("forward " + fixture + " --inputs " + in + " --out " + out + " --overwrite");
    ASSERT_EQ(r.code, 0) << c.name << ": " << r.output;
    const io::SafetensorsReader o = io::SafetensorsReader::open(out);
    const Tensor logits = o.get_f32("logits", {2, 8, 256});
    const std::string key = std::string(c.name) + ".logits";
    EXPECT_LT(max_diff(logits, ref.get_f32(key, logits.shape())), 1e-4) << key;
  }
  fs::remove_all(dir);
}

TEST(Cli, InspectAndConvertKnowDiffusionModels) {
  const fs::path dir = temp_dir("convert_diffusion");
  const std::string fixture = kData + "/hf-diffusion-gemma/tiny-dg-b";
  ProcessResult r = run("inspect " + fixture);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* part : {"block diffusion", "canvas 6 tokens", "6 experts", "vision", "kept as read"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << " in: " << r.output;

  const std::string out = (dir / "out").string();
  r = run("convert " + fixture + " " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(test::run_shell("cmp " + fixture + "/generation_config.json " + out + "/generation_config.json").code, 0);
  r = run("inspect " + out);
  EXPECT_NE(r.output.find("kept as read"), std::string::npos) << r.output;  // the vision tower came along

  // An autoregressive MoE adapted: a diffusion model that forward runs.
  const std::string adapted = (dir / "adapted").string();
  r = run("convert " + kData + "/hf-gemma4/tiny-moe " + adapted + " --to-diffusion --canvas-length 4");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("inspect " + adapted);
  EXPECT_NE(r.output.find("canvas 4 tokens"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir / "adapted" / "generation_config.json"));
  const std::string in = (dir / "in.safetensors").string();
  io::save_safetensors(in, {{"input_ids", randint({1, 5}, 3, 1, 256)}, {"canvas_ids", randint({1, 4}, 4, 1, 256)}});
  r = run("forward " + adapted + " --inputs " + in + " --out " + (dir / "o.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.output;
  expect_error(run("convert " + kData + "/hf-gemma4/tiny-dense-ple " + (dir / "x").string() + " --to-diffusion"),
               {"cannot adapt", "routed experts"});
  expect_error(run("convert " + fixture + " " + (dir / "y").string() + " --canvas-length 4"),
               {"--canvas-length", "--to-diffusion"});
  fs::remove_all(dir);
}

// tools/probe_cli.py's findings (docs/reliability.md, "Probed: tools/probe_cli.py").

TEST(Cli, NoCommandWritesItsOutputOverItsInput) {
  const fs::path dir = temp_dir("out_is_input");
  const std::string line = "{\"prompt_ids\": [5, 6]}\n";
  const fs::path in = dir / "in.jsonl";
  write_text(in, line);
  fs::create_directories(dir / "sub");
  fs::create_symlink(in, dir / "link.jsonl");
  // --overwrite replaces an existing OUT, never the prompts being read: by its own name, through
  // "sub/..", or through a symlink; autoregressive and diffusion models alike.
  for (const std::string& model : {kData + "/hf-gemma4/tiny-dense-ple", kData + "/hf-diffusion-gemma/tiny-dg-a"}) {
    for (const fs::path& out : {in, dir / "sub" / ".." / "in.jsonl", dir / "link.jsonl"})
      expect_error(run("generate " + model + " --prompts " + in.string() + " --out " + out.string() +
                       " --overwrite --max-new-tokens 8"),
                   {"--out", "is the --prompts file", "even with --overwrite"});
    EXPECT_EQ(read_text(in), line);
  }
  const std::string inputs = (dir / "in.safetensors").string();
  io::save_safetensors(inputs, {{"input_ids", Tensor::from_vector(std::vector<int64_t>{5, 6}, {1, 2})}});
  const std::string before = read_text(inputs);
  expect_error(
      run("forward " + kData + "/hf-gemma4/tiny-dense-ple --inputs " + inputs + " --out " + inputs + " --overwrite"),
      {"--out", "is the --inputs file", "even with --overwrite"});
  EXPECT_EQ(read_text(inputs), before);
  fs::remove_all(dir);
}

// The renamed temporary file replaced whatever --out named: a FIFO or device became a regular file,
// and a symlink lost its link while its target kept the old text.
TEST(Cli, OutputsGoThroughSymlinksAndNeverReplaceDevicesOrInputs) {
  const fs::path dir = temp_dir("out_kinds");
  const fs::path fifo = dir / "fifo.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error(run("task arithmetic --count 2 --overwrite --out " + fifo.string()),
               {"--out", "fifo.jsonl is not a regular file"});
  EXPECT_TRUE(fs::is_fifo(fifo));
  write_text(dir / "target.jsonl", "old\n");
  fs::create_symlink("target.jsonl", dir / "link.jsonl");
  ASSERT_EQ(run("task arithmetic --count 2 --overwrite --out " + (dir / "link.jsonl").string()).code, 0);
  EXPECT_TRUE(fs::is_symlink(dir / "link.jsonl"));
  EXPECT_NE(read_text(dir / "target.jsonl").find("\"prompt\""), std::string::npos);
  // A folder no file can be made in (even by root) is found before the run, not after it.
  expect_error(run("task arithmetic --count 2 --out /proc/g4-out.jsonl"), {"cannot create files in the folder /proc"});
  // --tokenizer is an input too, as a file or as a folder.
  const std::string model = kData + "/hf-gemma4/tiny-dense-ple";
  fs::create_directories(dir / "tok");
  fs::copy_file(kData + "/tokenizers/plain.json", dir / "tok" / "tokenizer.json");
  write_text(dir / "in.jsonl", "{\"prompt_ids\": [5, 6]}\n");
  const std::string gen = "generate " + model + " --prompts " + (dir / "in.jsonl").string() + " --overwrite --out ";
  const std::string tok_before = read_text(dir / "tok" / "tokenizer.json");
  for (const fs::path& tok : {dir / "tok", dir / "tok" / "tokenizer.json"})
    expect_error(run(gen + (dir / "tok" / "tokenizer.json").string() + " --tokenizer " + tok.string()),
                 {"--out", "--tokenizer", "even with --overwrite"});
  EXPECT_EQ(read_text(dir / "tok" / "tokenizer.json"), tok_before);
  fs::remove_all(dir);
}

// The JSON parser took a NUL for the end of the text and dropped the rest of the line unread.
TEST(Cli, ANulByteInAJsonLineIsAnError) {
  const fs::path dir = temp_dir("nul_json");
  write_text(dir / "in.jsonl", std::string("{\"prompt_ids\": [5]}\0{\"prompt_ids\": [6]}\n", 37));
  expect_error(run("generate " + kData + "/hf-gemma4/tiny-dense-ple --prompts " + (dir / "in.jsonl").string() +
                   " --out " + (dir / "out.jsonl").string()),
               {"in.jsonl:1", "a NUL byte at byte 19"});
  fs::remove_all(dir);
}

// Without <|turn> as a token of its own the template is read character by character: transformers does
// the same, so generation goes on, but says so (training data refuses it: ChatDocument.NeedsAGemma4Tokenizer).
TEST(Cli, ChatWithATokenizerWithoutTheTurnTokensSaysSo) {
  const std::string model = kData + "/hf-gemma4/tiny-dense-ple --tokenizer " + kData + "/tokenizers/plain.json";
  const std::string warning = "warning: the tokenizer of --chat has no '<|turn>' token";
  ProcessResult r = run("generate " + model + " --chat --prompt hi --max-new-tokens 1");
  EXPECT_NE(r.output.find(warning), std::string::npos) << r.output;
  const fs::path dir = temp_dir("chat_tokenizer");
  write_text(dir / "in.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  r = run("generate " + model + " --chat --prompts " + (dir / "in.jsonl").string() + " --max-new-tokens 1 --out " +
          (dir / "out.jsonl").string());
  EXPECT_NE(r.output.find(warning), std::string::npos) << r.output;
  // A tokenizer with the turn tokens: no warning.
  r = run("generate " + kData + "/hf-gemma4/tiny-dense-ple --tokenizer " + kData +
          "/../../recipes/data/kjv-chat-tokenizer --chat --prompt hi --max-new-tokens 1");
  EXPECT_EQ(r.output.find("warning:"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(Cli, GenerateRefusesAnUnwritableOutBeforeRunning) {
  const fs::path dir = temp_dir("out_unwritable");
  const fs::path in = dir / "in.jsonl";
  write_text(in, "{\"prompt_ids\": [5, 6]}\n");
  fs::create_directories(dir / "adir");
  for (const std::string& model : {kData + "/hf-gemma4/tiny-dense-ple", kData + "/hf-diffusion-gemma/tiny-dg-a"}) {
    const std::string gen = "generate " + model + " --prompts " + in.string() + " --max-new-tokens 8 --out ";
    // Before the fix both came after the whole batch had run, naming OUT.tmp.
    ProcessResult r = run(gen + (dir / "no" / "out.jsonl").string());
    expect_error(r, {"--out", (dir / "no").string() + " does not exist"});
    EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
    r = run(gen + (dir / "adir").string() + " --overwrite");
    expect_error(r, {"--out", "adir is a directory"});
    EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
  }
  EXPECT_TRUE(fs::is_empty(dir / "adir"));
  fs::remove_all(dir);
}

TEST(Cli, InputFilesAreCheckedBeforeTheModelLoads) {
  // Models whose weights cannot load: an error about them means the input file was looked at late
  // (after minutes of loading, for a large model).
  const fs::path dir = temp_dir("inputs_first");
  for (const std::string& name :
       {std::string("hf-gemma4/tiny-dense-ple"), std::string("hf-diffusion-gemma/tiny-dg-a")}) {
    const fs::path model = dir / fs::path(name).filename();
    fs::create_directories(model);
    fs::copy_file(kData + "/" + name + "/config.json", model / "config.json");
    write_text(model / "model.safetensors", "");
    const std::string missing = (dir / "missing.jsonl").string();
    ProcessResult r = run("generate " + model.string() + " --prompts " + missing + " --out " +
                          (dir / "out.jsonl").string() + " --max-new-tokens 8");
    expect_error(r, {"cannot open prompts file " + missing});
    EXPECT_EQ(r.output.find("model.safetensors"), std::string::npos) << r.output;
    r = run("generate " + model.string() + " --prompts " + dir.string() + " --out " + (dir / "out.jsonl").string() +
            " --max-new-tokens 8");
    expect_error(r, {"prompts file " + dir.string() + " is a directory"});
  }
  const ProcessResult r = run("forward " + (dir / "tiny-dense-ple").string() + " --inputs " +
                              (dir / "missing.safetensors").string() + " --out " + (dir / "o.safetensors").string());
  expect_error(r, {"cannot open --inputs file " + (dir / "missing.safetensors").string()});
  fs::remove_all(dir);
}

TEST(Cli, PromptsFileFlagsHaveTheLinesBounds) {
  const fs::path dir = temp_dir("prompts_flags");
  const fs::path in = dir / "in.jsonl";
  write_text(in, "{\"prompt_ids\": [5]}\n");
  const std::string gen = "generate " + kData + "/hf-gemma4/tiny-dense-ple --prompts " + in.string() + " --out " +
                          (dir / "out.jsonl").string() + " --max-new-tokens 2 ";
  // --logprobs 50 ran (a line may ask for 20 at most) and --n 200 ran 200 samples (a line: 128);
  // --n 1000 and a bad --stop-ids were blamed on line 1 of the prompts file.
  expect_error(run(gen + "--logprobs 50"), {"--logprobs must be in [-1, 20]"});
  for (const char* n : {"200", "1000", "0"}) expect_error(run(gen + "--n " + n), {"--n must be in [1, 128]"});
  for (const char* id : {"999", "-1"}) {
    const ProcessResult r = run(gen + "--stop-ids=" + id);
    expect_error(r, {"--stop-ids: token id " + std::string(id), "[0, 256)"});
    EXPECT_EQ(r.output.find("in.jsonl:1"), std::string::npos) << r.output;
  }
  expect_error(run("generate " + kData + "/hf-gemma4/tiny-dense-ple --prompt-ids 5 --stop-ids 999"),
               {"--stop-ids: token id 999"});
  EXPECT_FALSE(fs::exists(dir / "out.jsonl"));
  fs::remove_all(dir);
}

// plain.json cut to its first `n` ids: a tokenizer smaller than the tiny models' 256-id vocabulary.
std::string small_tokenizer(const fs::path& dir, int64_t n) {
  nlohmann::json t = nlohmann::json::parse(read_text(kData + "/tokenizers/plain.json"));
  nlohmann::json& m = t["model"];
  nlohmann::json vocab = nlohmann::json::object(), merges = nlohmann::json::array(), added = nlohmann::json::array();
  for (const auto& [piece, id] : m["vocab"].items())
    if (id.get<int64_t>() < n) vocab[piece] = id;
  for (const nlohmann::json& mg : m["merges"]) {
    const std::string a = mg[0], b = mg[1];
    if (vocab.contains(a) && vocab.contains(b) && vocab.contains(a + b)) merges.push_back(mg);
  }
  for (const nlohmann::json& a : t["added_tokens"])
    if (a["id"].get<int64_t>() < n) added.push_back(a);
  m["vocab"] = vocab;
  m["merges"] = merges;
  t["added_tokens"] = added;
  const std::string path = (dir / "small-tokenizer.json").string();
  write_text(path, t.dump());
  return path;
}

// Found by tools/probe_misc.py: --batch-size was accepted and ignored (every forward took one row);
// a tokenizer with ids past the model's vocabulary was only found in the embedding lookup, after the
// weights had loaded.
TEST(Cli, EvalBatchesRowsAndChecksItsInputsFirst) {
  const fs::path dir = temp_dir("eval");
  const std::string eval = "eval " + kData + "/hf-gemma4/tiny-moe --data " + kData + "/text/genesis.txt --seq-len 32 ";
  // The tiny fixture has no tokenizer of its own: plain.json cut to its 256-id vocabulary.
  const std::string tok = " --tokenizer " + small_tokenizer(dir, 256);
  // The same rows, tokens and loss (to 4 places) for every batch size. The perplexity's sixth digit
  // may move: OpenBLAS's AVX2 kernels round products of 1 and 3 rows differently (276.409 / 276.411).
  const auto split = [](const std::string& output) {
    std::string line = output.substr(output.find("loss "));
    const size_t at = line.find("perplexity ") + 11, end = line.find(' ', at);
    const double perplexity = std::stod(line.substr(at, end - at));
    return std::make_pair(line.erase(at, end - at), perplexity);
  };
  std::pair<std::string, double> first;
  for (const char* b : {"1", "3", "1000"}) {
    const ProcessResult r = run(eval + tok + " --batch-size " + b);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto [line, perplexity] = split(r.output);
    if (first.first.empty()) first = {line, perplexity};
    EXPECT_EQ(line, first.first) << "--batch-size " << b;
    EXPECT_NEAR(perplexity, first.second, 1e-5 * first.second) << "--batch-size " << b;
  }
  for (const char* b : {"0", "-2"}) {
    const ProcessResult r = run(eval + tok + " --batch-size=" + b);  // a usage error: CLI11's exit code
    EXPECT_NE(r.code, 0) << b;
    EXPECT_NE(r.output.find("--batch-size: must be in [1, "), std::string::npos) << r.output;
  }
  expect_error(run(eval + "--tokenizer " + kData + "/tokenizers/plain.json"),
               {"tokenizer " + kData + "/tokenizers/plain.json", "the model's vocabulary is 256"});
  std::ofstream(dir / "user_only.jsonl") << R"({"messages": [{"role": "user", "content": "In the beginning"}]})"
                                         << "\n";
  // The data layer refuses it by name (g4 eval also refuses a loss over no tokens, rather than call it
  // a model whose outputs are not finite).
  expect_error(run("eval " + kData + "/hf-gemma4/tiny-moe --format chat --data " + (dir / "user_only.jsonl").string() +
                   tok),
               {"no documents in " + (dir / "user_only.jsonl").string()});
  fs::remove_all(dir);
}

// Found by probing `g4 eval` on media rows: a multimodal conversation longer than --seq-len was refused
// with advice to raise data.seq_len or lower data.max_soft_tokens, recipe keys eval does not read.
TEST(Cli, EvalErrorsNameItsOwnFlags) {
  const fs::path dir = temp_dir("eval_media");
  const std::string image = kData + "/hf-gemma4-mm/processor/scene_333x517.png";
  std::ofstream(dir / "rows.jsonl")
      << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": ")" << image
      << R"("}, {"type": "text", "text": "What is this?"}]}, {"role": "assistant", "content": "A scene."}]})" << "\n";
  // The multimodal example's tokenizer: the fixture's vocabulary of 320 ids, with the media markers.
  const ProcessResult r = run("eval " + kData + "/hf-gemma4-mm/tiny-mm-e --tokenizer " + test::source_dir() +
                              "/recipes/multimodal/data/tokenizer.json --seq-len 16 --data " +
                              (dir / "rows.jsonl").string());
  expect_error(r, {"multimodal document of", "longer than seq_len 16", "raise --seq-len"});
  EXPECT_EQ(r.output.find("data.seq_len"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("max_soft_tokens"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// Found with tools/probe_misc.py: under `g4 launch -n 2` every rank ran `convert`, and the one that
// came second always failed, refusing the model the first had just written ("OUT_DIR already holds a
// model"); with --overwrite both wrote the same directory at once. Only rank 0 writes now (the task
// command's test covers `task`).
TEST(Cli, OneProcessCommandsWriteFromRankZeroOnly) {
  const fs::path dir = temp_dir("rank_one");
  const std::string model = kData + "/hf-gemma4/tiny-dense-ple", rank1 = "RANK=1 WORLD_SIZE=2";
  const std::string prompts = (dir / "in.jsonl").string();
  write_text(prompts, "{\"prompt_ids\": [5, 6]}\n");
  const fs::path converted = dir / "converted", generated = dir / "out.jsonl", logits = dir / "f.safetensors";
  for (const std::string& cmd :
       {"convert " + model + " " + converted.string(),
        "generate " + model + " --max-new-tokens 2 --prompts " + prompts + " --out " + generated.string(),
        "forward " + model + " --prompt hello --out " + logits.string()}) {
    const ProcessResult r = run(cmd, rank1);
    ASSERT_EQ(r.code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("rank 0 of the 2 ranks does the work"), std::string::npos) << cmd << ": " << r.output;
  }
  EXPECT_FALSE(fs::exists(converted));
  EXPECT_FALSE(fs::exists(generated));
  EXPECT_FALSE(fs::exists(logits));
  fs::remove_all(dir);
}

// Found by probing: cpp-httplib binds with SO_REUSEPORT, so a g4 serve on a port another server
// listens on bound it as well, printed that it was serving, and the kernel split the connections
// between the two (two different models could answer at one address). It must refuse the port.
TEST(Cli, ServeRefusesAPortInUse) {
  const int sock = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(sock, 0);
  const int yes = 1;  // as another server that allows port sharing would
  ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  ::setsockopt(sock, SOL_SOCKET, SO_REUSEPORT, &yes, sizeof yes);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(sock, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  // Bounded: a server that wrongly takes the port would run until stopped.
  const ProcessResult r = run("serve " + kData + "/hf-gemma4/tiny-moe --port " + port, "timeout 60");
  ::close(sock);
  expect_error(r, {"cannot listen on 127.0.0.1:" + port, "in use"});
}

TEST(Cli, GeneratedIdsPastTheTokenizerHaveNoText) {
  const fs::path dir = temp_dir("small_tokenizer");
  const std::string tok = small_tokenizer(dir, 100);
  const fs::path in = dir / "in.jsonl", out = dir / "out.jsonl";
  write_text(in, "{\"prompt_ids\": [5, 6]}\n");
  // The diffusion command decoded every id and failed after sampling ("token id 220 is not in the
  // vocabulary (100 ids)"), losing the whole --out; the autoregressive one left such ids out.
  for (const std::string& model : {kData + "/hf-gemma4/tiny-dense-ple", kData + "/hf-diffusion-gemma/tiny-dg-a"}) {
    const std::string gen = "generate " + model + " --max-new-tokens 8 --tokenizer " + tok;
    const ProcessResult one = run(gen + " --prompt-ids 5,6");
    EXPECT_EQ(one.code, 0) << one.output;
    fs::remove(out);
    const ProcessResult file = run(gen + " --prompts " + in.string() + " --out " + out.string());
    ASSERT_EQ(file.code, 0) << file.output;
    const nlohmann::json line = nlohmann::json::parse(read_text(out));
    EXPECT_TRUE(line["text"].is_string()) << line.dump();
  }
  // A tokenizer of more ids than the model: a --prompt id past the model is the tokenizer's.
  expect_error(run("generate " + kData + "/hf-gemma4/tiny-dense-ple --max-new-tokens 2 --tokenizer " + kData +
                   "/tokenizers/plain.json --prompt 'your God have'"),
               {"--prompt: the tokenizer gave token id", "outside the model's vocabulary [0, 256)"});
  fs::remove_all(dir);
}

TEST(Cli, PromptIdListsRefuseEmptyItems) {
  for (const std::string& model : {kData + "/hf-gemma4/tiny-dense-ple", kData + "/hf-diffusion-gemma/tiny-dg-a"}) {
    const std::string gen = "generate " + model + " --max-new-tokens 8 --prompt-ids ";
    // "5," ran as "5" (std::getline drops a last empty item): a list cut short must not run.
    for (const char* bad : {"5,", "5,,7", ",5", "'5;6'", "'5 6'", "0x10"})
      expect_error(run(gen + bad), {"--prompt-ids", "is not an integer token id"});
    const ProcessResult spaced = run(gen + "'5, 6'"), plain = run(gen + "5,6");
    ASSERT_EQ(spaced.code, 0) << spaced.output;
    EXPECT_EQ(spaced.output, plain.output);
  }
}

TEST(Cli, DiffusionEosAndPadIdsMustBeInTheVocabulary) {
  const std::string gen = "generate " + kData + "/hf-diffusion-gemma/tiny-dg-a --prompt-ids 5,6 --max-new-tokens 8 ";
  // An EOS past the vocabulary never stopped a row; a pad past it was written into the output.
  expect_error(run(gen + "--eos-token-id 1,999"), {"eos_token_id 999", "--eos-token-id", "[0, 256)"});
  expect_error(run(gen + "--pad-token-id 256"), {"pad_token_id 256", "--pad-token-id", "[0, 256)"});
  EXPECT_EQ(run(gen + "--eos-token-id 1,255 --pad-token-id 0").code, 0);
}

TEST(Cli, DiffusionPromptFileIdsAreNamedAsWritten) {
  // An id past int64 in a diffusion prompts file was reported as the -1 it wraps to, without its line.
  const fs::path dir = temp_dir("diffusion_prompt_ids");
  std::ofstream(dir / "p.jsonl") << "{\"prompt_ids\": [5, 6]}\n{\"prompt_ids\": [5, 18446744073709551615]}\n";
  expect_error(run("generate " + kData + "/hf-diffusion-gemma/tiny-dg-a --prompts " + (dir / "p.jsonl").string() +
                   " --out " + (dir / "o.jsonl").string()),
               {"p.jsonl line 2", "prompt token id 18446744073709551615 is outside the vocabulary [0, 256)"});
  EXPECT_FALSE(fs::exists(dir / "o.jsonl"));
  fs::remove_all(dir);
}

TEST(Cli, DiffusionRunsPastTheContextAreRefused) {
  // tiny-dg-a: context 1024, canvas 8. --max-new-tokens 10^9 ran unbounded (every block a whole
  // canvas); the autoregressive sampler refused it already.
  const std::string gen =
      "generate " + kData + "/hf-diffusion-gemma/tiny-dg-a --prompt-ids 5,6 --max-denoising-steps 1 ";
  expect_error(run(gen + "--max-new-tokens 1000000000"),
               {"max_new_tokens 1000000000", "max_position_embeddings 1024", "at most 1016 new tokens fit"});
  // 2 + 128 blocks of 8 = 1026 positions: one block too many; 1016 new tokens (127 blocks) fit.
  expect_error(run(gen + "--max-new-tokens 1017"), {"1026 positions", "max_position_embeddings 1024"});
  // A canvas as long as the context leaves no room for a prompt.
  const fs::path dir = temp_dir("canvas_past_context");
  expect_error(
      run("convert " + kData + "/hf-gemma4/tiny-moe " + (dir / "o").string() + " --to-diffusion --canvas-length 4096"),
      {"--canvas-length 4096", "max_position_embeddings 4096"});
  EXPECT_FALSE(fs::exists(dir / "o" / "config.json"));
  fs::remove_all(dir);
}

TEST(Cli, ForwardNamesIdsOutsideTheVocabulary) {
  const fs::path dir = temp_dir("forward_labels");
  const std::string in = (dir / "in.safetensors").string(), out = (dir / "out.safetensors").string();
  io::save_safetensors(in, {{"input_ids", Tensor::from_vector(std::vector<int64_t>{5, 6, 7}, {1, 3})},
                            {"labels", Tensor::from_vector(std::vector<int64_t>{6, -100, 300}, {1, 3})}});
  expect_error(run("forward " + kData + "/hf-gemma4/tiny-dense-ple --inputs " + in + " --out " + out),
               {"labels in " + in, "300", "[0, 256)"});
  EXPECT_FALSE(fs::exists(out));
  // A diffusion model: the encoder's labels, and Automodel's corrupted rows (named canvas_ids, a
  // tensor the file does not hold, before).
  const std::string dg = kData + "/hf-diffusion-gemma/tiny-dg-a";
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>(16, 5), {1, 16});
  io::save_safetensors(in, {{"input_ids", ids},
                            {"decoder_input_ids", Tensor::from_vector(std::vector<int64_t>(8, 1), {1, 8})},
                            {"labels", Tensor::from_vector(std::vector<int64_t>(16, 300), {1, 16})}});
  expect_error(run("forward " + dg + " --inputs " + in + " --out " + out), {"labels in " + in, "300"});
  std::vector<int64_t> loss_mask(16, 0), noisy(16, 5);
  std::fill(loss_mask.begin() + 8, loss_mask.end(), 1);
  noisy[12] = 999;
  io::save_safetensors(in, {{"input_ids", ids},
                            {"loss_mask", Tensor::from_vector(loss_mask, {1, 16})},
                            {"noisy_input_ids", Tensor::from_vector(noisy, {1, 16})},
                            {"selected_block", Tensor::from_vector(std::vector<int64_t>{0}, {1})}});
  expect_error(run("forward " + dg + " --inputs " + in + " --out " + out),
               {"noisy_input_ids in " + in + " holds 999 at flat position 12", "[0, 256)"});
  EXPECT_FALSE(fs::exists(out));
  fs::remove_all(dir);
}

TEST(Cli, ConvertMaxShardGbMustBeAPositiveNumber) {
  const fs::path dir = temp_dir("max_shard");
  // NaN passed CLI::PositiveNumber and was cast to size_t (undefined behaviour); 1e30 overflowed it.
  for (const char* bad : {"nan", "0", "-1", "1e30", "x"}) {
    const ProcessResult r =
        run("convert " + kData + "/hf-gemma4/tiny-dense-ple " + (dir / "o").string() + " --max-shard-gb=" + bad);
    EXPECT_NE(r.code, 0) << bad;
    EXPECT_NE(r.output.find("--max-shard-gb"), std::string::npos) << r.output;
    EXPECT_LT(r.output.size(), 300u) << r.output;  // not CLI11's 300-digit range
    EXPECT_FALSE(fs::exists(dir / "o" / "config.json")) << bad;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

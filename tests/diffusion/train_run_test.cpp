// `g4 train` on a block-diffusion recipe: a few CPU steps of a tiny random diffusion_gemma on
// Genesis continuations (the loss falls, checkpoints are diffusion checkpoints, a killed run
// resumes to the same curve), the recipe's key scoping, and the shipped diffusion recipes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/device_memory.h"
#include "diffusion/training.h"
#include "io/hf_config.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"
#include "train/recipe.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

// One thread per run: the runs are tiny, and threads only contend on a busy machine.
const char* kEnv = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1";

// tiny-dg-a's shape with the KJV tokenizer's 2048 tokens, randomly initialised.
std::string write_model(const fs::path& dir) {
  std::ifstream f(test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a/config.json");
  nlohmann::json j = nlohmann::json::parse(f);
  j["text_config"]["vocab_size"] = 2048;
  model::Gemma4 m(io::parse_model_config(j, "tiny diffusion config"));
  m.init_weights(7);
  const fs::path out = dir / "model";
  model::save_hf_checkpoint(m, out.string());
  return out.string();
}

std::string write_recipe(const fs::path& dir) {
  const fs::path path = dir / "recipe.yaml";
  std::ofstream f(path);
  f << "model: {path: " << write_model(dir) << "}\n"
    << "tokenizer: " << test::source_dir() << "/recipes/data/kjv-tokenizer\n"
    << "data:\n  train: [" << test::data_dir() << "/text/genesis.txt]\n  seq_len: 32\n  prompt_tokens: 12\n"
    << "  continuation_tokens: 12\n  validation_fraction: 0.2\n"
    << "dllm: {mode: block_diffusion}\n"
    << "optimizer: {lr: 3.0e-3, weight_decay: 0.01}\n"
    << "schedule: {kind: cosine, warmup_steps: 2}\n"
    << "train: {steps: 8, batch_size: 2}\n"
    << "checkpoint: {dir: " << (dir / "run").string() << ", every: 4, keep: 3}\n"
    << "log: {validation_every: 4, validation_batches: 2}\n";
  return path.string();
}

std::vector<std::string> loss_lines(const fs::path& run_dir) {
  std::vector<std::string> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss"))
      lines.push_back(std::to_string(j["step"].get<int>()) + " " + j["loss"].dump() + " " + j["diffusion_loss"].dump() +
                      " " + j["ar_loss"].dump() + " " + j["grad_norm"].dump());
    if (j.contains("validation_loss")) lines.push_back("val " + j["validation_loss"].dump());
  }
  return lines;
}

std::vector<double> step_losses(const fs::path& run_dir) {
  std::vector<double> loss;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (const auto j = nlohmann::json::parse(line); j.contains("loss")) loss.push_back(j["loss"].get<double>());
  return loss;
}

TEST(DiffusionTrainRun, LossFallsCheckpointsAreDiffusionAndResumeIsExact) {
  const fs::path dir = test::scratch_dir("dllm_run");
  const std::string recipe = write_recipe(dir);
  const test::ProcessResult full =
      test::run_g4("train " + recipe + " train.steps=16 checkpoint.dir=" + (dir / "full").string());
  ASSERT_EQ(full.code, 0) << full.output;
  EXPECT_NE(full.output.find("block diffusion, blocks of 8"), std::string::npos) << full.output;
  const std::vector<double> loss = step_losses(dir / "full");
  ASSERT_EQ(loss.size(), 16u);
  EXPECT_LT(loss.back(), loss.front() - 1.0);
  const auto m = model::load_hf_model((dir / "full" / "checkpoints" / "step-00000016").string());
  EXPECT_TRUE(m->config().diffusion);

  const std::string straight = "train " + recipe + " checkpoint.dir=" + (dir / "straight").string();
  ASSERT_EQ(test::run_g4(straight, kEnv).code, 0);
  const std::vector<std::string> want = loss_lines(dir / "straight");
  ASSERT_EQ(want.size(), 8u + 2u);
  const std::string killed = "train " + recipe + " checkpoint.dir=" + (dir / "killed").string();
  test::ProcessResult r = test::run_g4(killed, std::string(kEnv) + " G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = test::run_g4(killed + " --resume", kEnv);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), want);
  fs::remove_all(dir);
}

// Two data-parallel ranks of one example each train as one rank of two: the same samples and
// corruption (seeded by the global sample index), the step's denominators summed over the ranks.
// One-block continuations and no self-conditioning leave the per-micro-batch block-selection and
// coin draws (which differ between the layouts, as in Automodel) without effect. Sharded ranks
// (parallel.fsdp) train as replicated ones: the step gathers the whole model for the objective's
// passes, and the optimizer state and gradients stay sharded; validation and checkpoints gather
// as well.
TEST(DiffusionTrainRun, DataParallelRanksTrainLikeOneRank) {
  const fs::path dir = test::scratch_dir("dllm_dp");
  const std::string recipe = write_recipe(dir) +
                             " data.continuation_tokens=8 dllm.self_conditioning_p=0 "
                             "train.steps=4 log.validation_every=2 checkpoint.every=0";
  const test::ProcessResult one = test::run_g4("train " + recipe + " checkpoint.dir=" + (dir / "one").string(), kEnv);
  ASSERT_EQ(one.code, 0) << one.output;
  auto two_ranks = [&](const std::string& name, const std::string& extra) {
    const test::ProcessResult r = test::run_shell(
        std::string(kEnv) + " mpirun --oversubscribe --allow-run-as-root -np 2 " + test::g4_binary() + " train " +
        recipe + " train.batch_size=1 " + extra + " checkpoint.dir=" + (dir / name).string() + " 2>&1");
    EXPECT_EQ(r.code, 0) << r.output;
    return loss_lines(dir / name);
  };
  const std::vector<std::string> replicated = two_ranks("two", ""),
                                 sharded = two_ranks("sharded", "parallel.fsdp=true");
  const std::vector<double> a = step_losses(dir / "one"), b = step_losses(dir / "two");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-5 * a[i]) << "step " << i + 1;

  ASSERT_EQ(replicated.size(), 4u + 2u);
  EXPECT_EQ(sharded, replicated) << "the same sums of the same gradients, printed alike";
  const auto wa = model::load_hf_model((dir / "two" / "checkpoints" / "step-00000004").string());
  const auto wb = model::load_hf_model((dir / "sharded" / "checkpoints" / "step-00000004").string());
  for (const std::string& n : wa->params().order)
    EXPECT_LT(test::max_diff(wa->params().at(n).value(), wb->params().at(n).value()), 1e-6) << n;
  fs::remove_all(dir);
}

// What tools/probe_train_media.py found: a block longer than the rows trained (its gradient norm
// reached 4e5 by the second step), an SFT recipe trained a diffusion checkpoint's encoder alone as
// a causal LM, conversations whose prompts fill the rows were reported as too-short plain text,
// and convert's --canvas-length 0 printed CLI11's 300-digit range.
TEST(DiffusionTrainRun, ProbedRecipesAreClearErrors) {
  const fs::path dir = test::scratch_dir("dllm_probed");
  const std::string recipe = write_recipe(dir);
  test::ProcessResult r = test::run_g4("train " + recipe + " dllm.block_size=64", kEnv);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("recipe.yaml: dllm.block_size 64 exceeds data.seq_len 32: a block must fit in a row"),
            std::string::npos)
      << r.output;
  r = test::run_g4("train " + recipe + " dllm.pad_block_size=40", kEnv);
  EXPECT_NE(r.output.find("dllm.pad_block_size 40 exceeds data.seq_len 32"), std::string::npos) << r.output;

  const fs::path sft = dir / "sft.yaml";
  std::ofstream(sft) << "model: {path: " << (dir / "model").string() << "}\n"
                     << "tokenizer: " << test::source_dir() << "/recipes/data/kjv-tokenizer\n"
                     << "data: {train: [" << test::data_dir() << "/text/genesis.txt], seq_len: 32}\n"
                     << "train: {steps: 1, batch_size: 1}\ncheckpoint: {dir: " << (dir / "sft-run").string() << "}\n";
  r = test::run_g4("train " + sft.string(), kEnv);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "model").string() + " is a diffusion_gemma checkpoint: train it with a "
                          "block-diffusion recipe"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "sft-run" / "checkpoints")) << "refused before anything ran";

  const fs::path chat = dir / "long.jsonl";
  std::string words;
  for (int i = 0; i < 60; ++i) words += "word ";
  std::ofstream(chat) << nlohmann::json{{"messages",
                                         {{{"role", "user"}, {"content", words}},
                                          {{"role", "assistant"}, {"content", "yes"}}}}}
                             .dump()
                      << "\n";
  r = test::run_g4("train " + recipe + " data.train=" + chat.string() + " data.validation_fraction=0 tokenizer=" +
                       test::source_dir() + "/recipes/data/kjv-chat-tokenizer",
                   kEnv);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("a conversation a prompt shorter than data.seq_len 32; 1 example(s) had no response "
                          "token within it"),
            std::string::npos)
      << r.output;

  r = test::run_g4("convert " + (dir / "model").string() + " " + (dir / "c0").string() +
                   " --to-diffusion --canvas-length 0");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("convert: --canvas-length must be > 0, got 0"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(DiffusionRecipe, KeysAreScopedToBlockDiffusion) {
  const std::string base =
      "model: {path: m}\ndata: {train: [a.txt]}\ndllm: {mode: block_diffusion, block_size: 16, eps: 0.01}\n";
  const train::Recipe r = train::recipe_from_yaml(base, "d.yaml");
  EXPECT_EQ(r.command, train::Command::kDiffusion);
  EXPECT_EQ(r.dllm.block_size, 16);
  EXPECT_EQ(r.dllm.eps, 0.01);
  EXPECT_EQ(r.dllm.seed, 42u);
  EXPECT_NE(std::find(r.freeze.begin(), r.freeze.end(), "router"), r.freeze.end()) << "the router is frozen";
  std::string e = test::error_of([&] { train::recipe_from_yaml(base + "log: {samples: 2}\n", "d.yaml"); });
  EXPECT_NE(e.find("d.yaml: recipe key 'log.samples' is for g4 train, not a block-diffusion recipe"), std::string::npos)
      << e;
  e = test::error_of([&] { train::recipe_from_yaml(base + "train: {recompute: true}\n", "d.yaml"); });
  EXPECT_NE(e.find("'train.recompute' is for g4 train, not a block-diffusion recipe"), std::string::npos) << e;
  // Block diffusion trains with data parallelism (replicated or sharded) only: expert and context
  // parallelism are refused by key.
  for (const char* key : {"parallel.expert_parallel=2", "parallel.context_parallel=2"}) {
    const std::string name = std::string(key).substr(0, std::string(key).find('='));
    e = test::error_of([&] { train::recipe_from_yaml(base, "d.yaml", {key}); });
    EXPECT_NE(e.find("'" + name + "' is for g4 train, not a block-diffusion recipe"), std::string::npos) << e;
  }
  e = test::error_of([&] { train::recipe_from_yaml(base, "d.yaml", {"dllm.eps=1.5"}); });
  EXPECT_NE(e.find("'dllm.eps' must be in [0, 1)"), std::string::npos) << e;
  e = test::error_of(
      [&] { train::recipe_from_yaml("model: {path: m}\ndata: {train: [a.txt], prompt_tokens: 8}\n", "s.yaml"); });
  EXPECT_NE(e.find("s.yaml: recipe key 'data.prompt_tokens' is for a block-diffusion recipe (dllm.mode: "
                   "block_diffusion), not g4 train"),
            std::string::npos)
      << e;
  // An override makes an SFT recipe a diffusion one.
  EXPECT_EQ(
      train::recipe_from_yaml("model: {path: m}\ndata: {train: [a.txt]}\n", "s.yaml", {"dllm.mode=block_diffusion"})
          .command,
      train::Command::kDiffusion);
}

TEST(DiffusionRecipe, ShippedRecipesLoadAndTheDocsListTheKeys) {
  int loaded = 0;
  for (const auto& entry : fs::directory_iterator(test::source_dir() + "/recipes/diffusion")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const std::vector<std::string> overrides =
        cuda_available() ? std::vector<std::string>{} : std::vector<std::string>{"train.device=cpu"};
    EXPECT_EQ(train::load_recipe(entry.path().string(), overrides).command, train::Command::kDiffusion);
    ++loaded;
  }
  EXPECT_GE(loaded, 2);
  std::ifstream f(test::source_dir() + "/docs/diffusion.md");
  const std::string docs((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream listing(train::recipe_key_listing(train::Command::kDiffusion));
  for (std::string line; std::getline(listing, line);)
    EXPECT_NE(docs.find(line), std::string::npos) << "docs/diffusion.md lacks: " << line;
}

TEST(DiffusionData, ChatRepliesAndTextWindowsBecomeExamples) {
  const fs::path dir = test::scratch_dir("dllm_data");
  const auto tok = io::load_tokenizer(test::source_dir() + "/recipes/data/kjv-tokenizer");
  data::DataOptions d;
  d.files = {test::data_dir() + "/text/genesis.txt"};
  d.seq_len = 64;
  d.add_eos = false;
  d.validation_fraction = 0;
  const diffusion::DllmExamples text = diffusion::load_examples(d, *tok, 10, 6);
  ASSERT_FALSE(text.train.empty());
  for (const diffusion::DllmExample& e : text.train) {
    EXPECT_EQ(e.ids.size(), 16u);
    EXPECT_EQ(e.prompt, 10);
  }
  std::ofstream(dir / "chat.jsonl")
      << R"({"messages": [{"role": "user", "content": "Who made the light?"}, {"role": "assistant", "content": "God."}]})"
      << "\n";
  const auto chat_tok = io::load_tokenizer(test::source_dir() + "/recipes/data/kjv-chat-tokenizer");
  d.files = {(dir / "chat.jsonl").string()};
  d.format = "chat";
  const diffusion::DllmExamples chat = diffusion::load_examples(d, *chat_tok, 10, 6);
  ASSERT_EQ(chat.train.size(), 1u);
  const diffusion::DllmExample& e = chat.train[0];
  EXPECT_GT(e.prompt, 0);
  EXPECT_LT(e.prompt, static_cast<int64_t>(e.ids.size()));
  // The response ends with the reply's closing <turn|>.
  EXPECT_EQ(e.ids.back(), *chat_tok->token_to_id("<turn|>"));
  std::ofstream(dir / "two.jsonl")
      << R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, )"
      << R"({"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})"
      << "\n";
  d.files = {(dir / "two.jsonl").string()};
  const std::string err = test::error_of([&] { diffusion::load_examples(d, *chat_tok, 10, 6); });
  EXPECT_NE(err.find("two.jsonl:1: block-diffusion training takes single-turn conversations"), std::string::npos)
      << err;
  // Conversations with images: the denoiser has no soft-token merge, so they are refused by line.
  std::ofstream(dir / "image.jsonl")
      << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": ")"
      << test::data_dir() + "/hf-gemma4-mm/processor/rgba_97x150.png"
      << R"("}, {"type": "text", "text": "What?"}]}, {"role": "assistant", "content": "a"}]})" << "\n";
  d.files = {(dir / "image.jsonl").string()};
  d.image_processor.patch_size = 6;
  d.image_processor.max_soft_tokens = 70;
  const auto mm_tok = io::load_tokenizer(test::source_dir() + "/recipes/multimodal/data/tokenizer.json");
  const std::string mm_err = test::error_of([&] { diffusion::load_examples(d, *mm_tok, 10, 6); });
  EXPECT_NE(mm_err.find("image.jsonl:1: images and audio are not supported in block-diffusion training data"),
            std::string::npos)
      << mm_err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

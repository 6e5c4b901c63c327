// `g4 task`: the built-in RL tasks written as prompt files and as SFT chat data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "data_pipeline/test_tokenizer.h"
#include "rl/prompts.h"
#include "support/g4_process.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<json> read_lines(const fs::path& p) {
  std::ifstream f(p);
  std::vector<json> lines;
  for (std::string l; std::getline(f, l);) lines.push_back(json::parse(l));
  return lines;
}

TEST(CliTask, WritesPromptsAndSftData) {
  const fs::path dir = test::scratch_dir("cli_task");
  const std::string prompts = (dir / "countdown.jsonl").string();
  test::ProcessResult r = test::run_g4("task countdown --count 7 --begin 3 --seed 11 --difficulty 1 --out " + prompts);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote 7 prompts"), std::string::npos) << r.output;
  const std::vector<json> lines = read_lines(prompts);
  const std::vector<rl::PromptExample> want = rl::task_problems({"countdown", 1, 11}, 3, 7);
  ASSERT_EQ(lines.size(), want.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["prompt"], want[i].prompt);
    EXPECT_EQ(lines[i]["answer"], want[i].answer);
    EXPECT_EQ(lines[i]["numbers"], want[i].extra["numbers"]);
    EXPECT_EQ(lines[i]["target"], want[i].extra["target"]);
    EXPECT_EQ(lines[i]["task"], "countdown");
  }

  // An existing file is replaced only with --overwrite.
  r = test::run_g4("task arithmetic --count 2 --out " + prompts);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
  EXPECT_EQ(read_lines(prompts).size(), 7u);

  r = test::run_g4("task arithmetic --count 4 --sft --overwrite --out " + prompts);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<json> sft = read_lines(prompts);
  const std::vector<rl::PromptExample> problems = rl::task_problems({"arithmetic", 2, 0}, 0, 4);
  ASSERT_EQ(sft.size(), 4u);
  for (size_t i = 0; i < sft.size(); ++i) {
    EXPECT_EQ(sft[i], (json{{"messages",
                             {{{"role", "user"}, {"content", problems[i].prompt}},
                              {{"role", "assistant"}, {"content", rl::task_reference_response(problems[i])}}}}}));
  }
  for (const auto& entry : fs::directory_iterator(fs::path(prompts).parent_path()))  // no temporary file is left
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  // g4 train reads it as chat data: the replies are trained.
  data::DataOptions d;
  d.files = {prompts};
  d.format = "chat";
  const std::vector<data::Document> docs = data::load_documents(d, test::ByteTokenizer());
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_GT(std::count(docs[0].trained.begin(), docs[0].trained.end(), 1), 10);

  // --answer-line-fraction: the chosen responses lack the answer line, the others are whole.
  r = test::run_g4("task arithmetic --count 40 --sft --answer-line-fraction 0.5 --overwrite --out " + prompts);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<json> partial = read_lines(prompts);
  const std::vector<rl::PromptExample> forty = rl::task_problems({"arithmetic", 2, 0}, 0, 40);
  ASSERT_EQ(partial.size(), 40u);
  int without = 0;
  for (size_t i = 0; i < partial.size(); ++i) {
    const bool kept = rl::sft_keeps_answer_line(0, static_cast<int64_t>(i), 0.5);
    without += !kept;
    EXPECT_EQ(partial[i]["messages"][1]["content"], rl::task_reference_response(forty[i], kept));
  }
  EXPECT_GT(without, 5);
  EXPECT_LT(without, 35);
  r = test::run_g4("task arithmetic --count 4 --answer-line-fraction 0.5 --overwrite --out " + prompts);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--sft data only"), std::string::npos) << r.output;

  r = test::run_g4("task sudoku --out " + (dir / "x.jsonl").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("task 'sudoku'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "x.jsonl"));
}

// Found by tools/probe_misc.py: --count 10^12 reserved a vector no memory holds (std::length_error's
// text, or an allocation until the machine gave up), --begin near 2^63 overflowed begin + count,
// --answer-line-fraction nan passed CLI::Range (NaN compares false) and dropped every answer line,
// and an --out in a missing folder or naming a directory was found by the writer only after the
// problems were made.
TEST(CliTask, FlagsOutOfRangeAreRefusedBeforeAnythingIsWritten) {
  const fs::path dir = test::scratch_dir("cli_task_flags");
  const std::string out = (dir / "o.jsonl").string();
  const auto refused = [&](const std::string& args, const std::string& want) {
    const test::ProcessResult r = test::run_g4("task arithmetic " + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.output.find(want), std::string::npos) << args << ": " << r.output;
    EXPECT_EQ(r.output.find("what()"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out)) << args;
  };
  refused("--count 1000000000000 --out " + out, "--count");
  refused("--count 1000001 --out " + out, "--count");
  refused("--begin 9223372036854775806 --count 5 --out " + out, "--begin 9223372036854775806 + --count 5");
  refused("--sft --answer-line-fraction nan --out " + out, "--answer-line-fraction");
  refused("--count 2 --out " + (dir / "no" / "o.jsonl").string(), "does not exist");
  const test::ProcessResult d = test::run_g4("task arithmetic --count 2 --overwrite --out " + dir.string());
  EXPECT_NE(d.code, 0);
  EXPECT_NE(d.output.find("is a directory"), std::string::npos) << d.output;
  EXPECT_TRUE(fs::is_directory(dir));
  // The library refuses the overflow too (g4 rl's prompt stream calls it).
  EXPECT_THROW(rl::task_problems({"arithmetic", 2, 0}, INT64_MAX - 1, 5), Error);
  fs::remove_all(dir);
}

// Under `g4 launch -n 2` both ranks run the command. Only rank 0 writes --out: rank 1 leaves a
// user's existing file alone (rank 0 refuses it without --overwrite) and does not race rank 0's new one
// (it used to refuse the file rank 0 had just written, now and then).
TEST(CliTask, OnlyRankZeroOfALaunchWritesTheFile) {
  const fs::path dir = test::scratch_dir("cli_task_ranks");
  const std::string out = (dir / "t.jsonl").string();
  test::ProcessResult r = test::run_g4("task arithmetic --count 3 --out " + out, "RANK=1 WORLD_SIZE=2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 0 of the 2 ranks"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  { std::ofstream(out) << "mine\n"; }
  r = test::run_g4("task arithmetic --count 3 --out " + out, "RANK=1 WORLD_SIZE=2");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream f(out);
  std::string kept;
  std::getline(f, kept);
  EXPECT_EQ(kept, "mine");
  r = test::run_g4("task arithmetic --count 3 --out " + out, "RANK=0 WORLD_SIZE=2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace g4

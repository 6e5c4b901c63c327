// `g4 task`: the built-in RL tasks written as prompt files and as SFT chat data.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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
  EXPECT_FALSE(fs::exists(prompts + ".tmp"));
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

}  // namespace
}  // namespace g4

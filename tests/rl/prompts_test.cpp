// Prompt sets: both JSONL layouts and their errors, the chat rendering of prompts, and the built-in
// tasks (determinism, answers checked by an independent evaluation, reference responses).
#include "rl/prompts.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data_pipeline/test_tokenizer.h"
#include "rl/prompt_stream.h"
#include "rl/rewards.h"
#include "train/recipe.h"
#include "support/error_message.h"
#include "support/g4_process.h"

namespace g4::rl {
namespace {

namespace fs = std::filesystem;
using test::error_of;

std::string write_file(const std::string& name, const std::string& text) {
  static const fs::path dir = test::scratch_dir("rl_prompts");
  const fs::path p = dir / name;
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

std::string decode(const std::vector<int64_t>& ids, const io::Tokenizer& tok) {
  return tok.decode(std::vector<int32_t>(ids.begin(), ids.end()));
}

TEST(Prompts, ChatPromptIdsRenderTheTemplateWithBosFirst) {
  const test::ByteTokenizer tok;
  const std::vector<int64_t> ids = chat_prompt_ids("Hi there", "", tok);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok.bos_id);
  EXPECT_EQ(decode(ids, tok), "<bos><|turn>user\nHi there<turn|>\n<|turn>model\n");
  EXPECT_EQ(decode(chat_prompt_ids("Hi", "Be brief.", tok), tok),
            "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n");
  EXPECT_EQ(decode(chat_prompt_ids("Hi", "", tok, data::ChatVariant::Large), tok),
            "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>");
}

TEST(Prompts, LoadsBothLayouts) {
  const test::ByteTokenizer tok;
  const std::string path = write_file(
      "both.jsonl",
      R"({"data_source": "math_dapo", "prompt": [{"role": "user", "content": "Solve 1+1.\n\nRemember to put your answer on its own line after \"Answer:\"."}], "ability": "MATH", "reward_model": {"ground_truth": "2", "style": "rule-math-reasoning"}, "extra_info": {"index": "a1"}})"
      "\n\n   \n"
      R"({"prompt": "What is 6*7?", "answer": "42", "id": 7})"
      "\r\n"
      R"({"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}], "ground_truth": 5})"
      "\n"
      R"({"prompt": "no answer"})");
  const std::vector<PromptExample> p = load_prompts(path, tok, "Think.");
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0].prompt, "Solve 1+1.\n\nRemember to put your answer on its own line after \"Answer:\".");
  EXPECT_EQ(p[0].answer, "2");
  EXPECT_EQ(p[0].extra,
            (nlohmann::json{{"data_source", "math_dapo"}, {"ability", "MATH"}, {"extra_info", {{"index", "a1"}}}}));
  EXPECT_EQ(decode(p[0].ids, tok),
            "<bos><|turn>system\nThink.<turn|>\n<|turn>user\n" + p[0].prompt + "<turn|>\n<|turn>model\n");
  EXPECT_EQ(p[1].prompt, "What is 6*7?");
  EXPECT_EQ(p[1].answer, "42");
  EXPECT_EQ(p[1].extra, (nlohmann::json{{"id", 7}}));
  // The line's own system turn stays; the last user message is the prompt; a number answer is text.
  EXPECT_EQ(p[2].prompt, "second");
  EXPECT_EQ(p[2].answer, "5");
  EXPECT_EQ(decode(p[2].ids, tok),
            "<bos><|turn>system\nTerse.<turn|>\n<|turn>user\nfirst<turn|>\n<|turn>model\nok<turn|>\n"
            "<|turn>user\nsecond<turn|>\n<|turn>model\n");
  EXPECT_EQ(p[3].answer, "");
  EXPECT_EQ(p[3].ids[0], tok.bos_id);
  // Whether a line gave a ground truth, and where it came from (for errors).
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(p[i].has_answer) << i;
  EXPECT_FALSE(p[3].has_answer);
  EXPECT_EQ(p[0].where, path + ":1");
  EXPECT_EQ(p[1].where, path + ":4");
}

TEST(Prompts, BadLinesNameTheFileLineAndKey) {
  const test::ByteTokenizer tok;
  const auto error = [&](const std::string& second_line) {
    const std::string path = write_file("bad.jsonl", R"({"prompt": "fine", "answer": "1"})"
                                                     "\n" +
                                                         second_line + "\n");
    const std::string e = error_of([&] { load_prompts(path, tok); });
    EXPECT_NE(e.find(path + ":2"), std::string::npos) << e;
    return e;
  };
  EXPECT_NE(error("{\"prompt\": ").find("JSON"), std::string::npos);
  EXPECT_NE(error("[1, 2]").find("JSON object"), std::string::npos);
  EXPECT_NE(error(R"({"answer": "1"})").find("missing 'prompt'"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": "a", "messages": []})").find("not both"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": 5})").find("'prompt'"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": [{"role": "user"}]})").find("'prompt[0].content'"), std::string::npos);
  EXPECT_NE(error(R"({"messages": [{"role": "assistant", "content": "x"}]})").find("no user message"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": [{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]})")
                .find("unknown role 'robot'"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": "a", "answer": "1", "ground_truth": "1"})").find("both 'answer' and 'ground_truth'"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": "a", "answer": [1]})").find("'answer' must be a string or a number"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": [{"role": "user", "content": "a"}], "reward_model": {}})").find("'ground_truth'"),
            std::string::npos);
  const std::string empty = write_file("empty.jsonl", "\n\n");
  EXPECT_NE(error_of([&] { load_prompts(empty, tok); }).find("no prompts"), std::string::npos);
  EXPECT_NE(error_of([&] { load_prompts(empty + ".missing", tok); }).find(".missing"), std::string::npos);
}

// The stream of a recipe over `file` (or, when empty, the task `keys` name, else arithmetic); `keys` override it.
PromptStream stream(const std::string& file, std::vector<std::string> keys, int64_t context,
                    const io::Tokenizer& tok) {
  const bool task_given =
      std::any_of(keys.begin(), keys.end(), [](const std::string& k) { return k.rfind("prompts.task=", 0) == 0; });
  if (!file.empty()) keys.push_back("prompts.train=" + file);
  else if (!task_given) keys.push_back("prompts.task=arithmetic");
  static std::vector<std::unique_ptr<train::Recipe>> recipes;  // the stream keeps a reference
  recipes.push_back(std::make_unique<train::Recipe>(
      train::recipe_from_yaml("model: {name: tiny-dense}\ntokenizer: none\nreward: {kind: exact}\n", "rl.yaml",
                              keys, train::Command::kRl)));
  return PromptStream(*recipes.back(), tok, data::ChatVariant::Small, context);
}

// Probed (tools/probe_rl.py): a prompt with no room for a response failed only when a step drew it
// (naming a draw number, maybe hours in), and a line without the ground truth a verifier compares
// with trained silently on rewards that could only be 0. Both are errors naming the line when the
// prompts are read.
TEST(PromptStream, RefusesPromptsWithoutRoomOrGroundTruthNamingTheLine) {
  const test::ByteTokenizer tok;  // a token per byte: the long prompt has 400+ tokens
  const std::string long_prompt = write_file(
      "long.jsonl", R"({"prompt": "short", "answer": "1"})" "\n" R"({"prompt": ")" + std::string(400, 'w') +
                        R"(", "answer": "1"})" "\n");
  std::string e = error_of([&] { stream(long_prompt, {"generation.max_total_sequence_length=64"}, 0, tok); });
  EXPECT_NE(e.find(long_prompt + ":2: the prompt has"), std::string::npos) << e;
  EXPECT_NE(e.find("generation.max_total_sequence_length"), std::string::npos) << e;
  e = error_of([&] { stream(long_prompt, {}, 64, tok); });  // the model's context alone
  EXPECT_NE(e.find(long_prompt + ":2"), std::string::npos) << e;
  // Skipped (and counted) by prompts.max_input_seq_length first, as its error message suggests.
  EXPECT_EQ(stream(long_prompt, {"prompts.max_input_seq_length=63"}, 64, tok).skipped_too_long(), 1);
  // A validation prompt likewise.
  const std::string short_prompt = write_file("short.jsonl", R"({"prompt": "short", "answer": "1"})" "\n");
  e = error_of([&] { stream(short_prompt, {"prompts.validation=" + long_prompt}, 64, tok); });
  EXPECT_NE(e.find(long_prompt + ":2"), std::string::npos) << e;

  const std::string no_answer =
      write_file("no-answer.jsonl", R"({"prompt": "a", "answer": "1"})" "\n" R"({"prompt": "b"})" "\n");
  for (const std::vector<std::string>& keys :
       {std::vector<std::string>{}, {"reward.kind=dapo_math"}, {"reward.kind=regex", "reward.pattern=x{answer}"}}) {
    e = error_of([&] { stream(no_answer, keys, 0, tok); });
    EXPECT_NE(e.find(no_answer + ":2: no ground truth"), std::string::npos) << e;
  }
  // Rewards that do not compare with a ground truth take such lines.
  EXPECT_EQ(stream(no_answer, {"reward.kind=regex", "reward.pattern=x"}, 0, tok).size(), 2);
  EXPECT_EQ(stream(no_answer, {"reward.kind=command", "reward.command=cat"}, 0, tok).size(), 2);
  // The countdown reward's fields, likewise when the file is read.
  const std::string countdown = write_file(
      "countdown.jsonl", R"({"prompt": "a", "numbers": [2, 3], "target": 5})" "\n" R"({"prompt": "b"})" "\n");
  e = error_of([&] { stream(countdown, {"reward.kind=countdown"}, 0, tok); });
  EXPECT_NE(e.find(countdown + ":2: reward.kind countdown needs the prompt's fields 'numbers'"), std::string::npos)
      << e;

  // Built-in task: the key of a bad difficulty; a system prompt that leaves no room names the problem.
  e = error_of([&] { stream("", {"prompts.task_difficulty=99"}, 0, tok); });
  EXPECT_NE(e.find("'prompts.task_difficulty' is 99"), std::string::npos) << e;
  const std::string system = "prompts.system_prompt=" + std::string(100, 's');
  e = error_of([&] { stream("", {system}, 64, tok); });
  EXPECT_NE(e.find("task arithmetic, problem 0: the prompt has"), std::string::npos) << e;
  EXPECT_NE(e.find("prompts.system_prompt"), std::string::npos) << e;
  PromptStream s = stream("", {system, "prompts.task_validation_prompts=0"}, 64, tok);
  e = error_of([&] { s.next(1); });
  EXPECT_NE(e.find("task arithmetic, problem 0: the prompt has"), std::string::npos) << e;
}

// Probed (session 39): prompts.max_input_seq_length skipped long lines of prompts.train only; validation
// prompts and a built-in task's problems ran whatever their length.
TEST(PromptStream, MaxInputSeqLengthSkipsValidationAndTaskPromptsToo) {
  const test::ByteTokenizer tok;
  const std::string long_prompt = write_file(
      "long-v.jsonl", R"({"prompt": "short", "answer": "1"})" "\n" R"({"prompt": ")" + std::string(400, 'w') +
                          R"(", "answer": "1"})" "\n");
  const std::string short_prompt = write_file("short-v.jsonl", R"({"prompt": "short", "answer": "1"})" "\n");
  const PromptStream files =
      stream(short_prompt, {"prompts.validation=" + long_prompt, "prompts.max_input_seq_length=63"}, 64, tok);
  EXPECT_EQ(files.validation().size(), 1u);
  EXPECT_EQ(files.skipped_too_long(), 1);
  const std::string only_long =
      write_file("only-long.jsonl", R"({"prompt": ")" + std::string(400, 'w') + R"(", "answer": "1"})" "\n");
  std::string e = error_of([&] {
    stream(short_prompt, {"prompts.validation=" + only_long, "prompts.max_input_seq_length=63"}, 0, tok);
  });
  EXPECT_NE(e.find("'prompts.validation' (" + only_long + ") holds no prompt of at most 63 tokens"),
            std::string::npos) << e;

  // A built-in task with a validation file: the file's prompts, filtered likewise.
  EXPECT_EQ(stream("", {"prompts.validation=" + long_prompt, "prompts.max_input_seq_length=63"}, 64, tok)
                .validation()
                .size(),
            1u);

  // A built-in task whose problems differ in length (countdown's targets have 1 to 3 digits): the longer
  // ones are skipped, in training draws and in validation.
  PromptStream all = stream("", {"prompts.task=countdown"}, 0, tok);
  std::vector<size_t> lengths;
  for (const PromptExample& p : all.next(64)) lengths.push_back(p.ids.size());
  std::sort(lengths.begin(), lengths.end());
  ASSERT_LT(lengths.front(), lengths.back());
  const size_t limit = lengths[lengths.size() / 2];
  PromptStream task =
      stream("", {"prompts.task=countdown", "prompts.max_input_seq_length=" + std::to_string(limit)}, 0, tok);
  for (const PromptExample& p : task.next(64)) EXPECT_LE(p.ids.size(), limit);
  for (const PromptExample& p : task.validation()) EXPECT_LE(p.ids.size(), limit);
  EXPECT_GT(task.skipped_too_long(), 0);
  // Every problem too long: an error naming the key, not an endless search.
  const std::string system = "prompts.system_prompt=" + std::string(100, 's');
  e = error_of([&] { stream("", {system, "prompts.max_input_seq_length=50"}, 0, tok); });
  EXPECT_NE(e.find("validation problems of built-in task arithmetic has more than 50 tokens"), std::string::npos)
      << e;
  PromptStream none = stream("", {system, "prompts.max_input_seq_length=50", "prompts.task_validation_prompts=0"}, 0,
                             tok);
  e = error_of([&] { none.next(1); });
  EXPECT_NE(e.find("problems in a row have more than 50 tokens"), std::string::npos) << e;
}

// An independent evaluation of "a op b op c ..." (a value may be negative: "-7 + 4") by the
// shunting-yard method, in double arithmetic.
double evaluate(const std::string& expr) {
  std::vector<double> values;
  std::vector<char> ops;
  const auto prec = [](char op) { return op == '*' ? 2 : 1; };
  const auto apply = [&] {
    const double b = values.back();
    values.pop_back();
    const char op = ops.back();
    ops.pop_back();
    values.back() = op == '+' ? values.back() + b : op == '-' ? values.back() - b : values.back() * b;
  };
  bool want_value = true;
  for (size_t i = 0; i < expr.size();) {
    const char c = expr[i];
    if (c == ' ') {
      ++i;
    } else if (want_value) {
      size_t n = 0;
      values.push_back(std::stod(expr.substr(i), &n));
      i += n;
      want_value = false;
    } else {
      want_value = true;
      while (!ops.empty() && prec(ops.back()) >= prec(c)) apply();
      ops.push_back(c);
      ++i;
    }
  }
  while (!ops.empty()) apply();
  return values.at(0);
}

TEST(Tasks, ArithmeticIsDeterministicAndItsAnswersAreRight) {
  for (int64_t difficulty : {0, 1, 2, 5, 8}) {
    const TaskOptions o{"arithmetic", difficulty, 17};
    const std::vector<PromptExample> a = task_problems(o, 0, 60);
    // Problem i depends on (seed, i) only, not on the range asked for.
    const std::vector<PromptExample> b = task_problems(o, 25, 10);
    std::set<std::string> distinct;
    for (int64_t i = 0; i < 60; ++i) {
      const PromptExample& p = a[static_cast<size_t>(i)];
      const std::string expr = p.extra.at("expression").get<std::string>();
      EXPECT_EQ(p.extra.at("task"), "arithmetic");
      EXPECT_EQ(p.prompt, "Compute " + expr + ". End with a line Answer: <number>.");
      EXPECT_EQ(static_cast<size_t>(std::count(expr.begin(), expr.end(), ' ')), 2 * static_cast<size_t>(difficulty));
      EXPECT_EQ(std::stod(p.answer), evaluate(expr)) << expr;
      if (difficulty <= 1) {
        EXPECT_LE(expr.size(), 5u) << "single digits: " << expr;
      }
      distinct.insert(expr);
      // The reference response ends with the answer line and scores 1 with the DAPO verifier; each
      // worked step is true.
      const std::string response = task_reference_response(p);
      EXPECT_EQ(dapo_math_score(response, p.answer), 1.0) << response;
      std::istringstream lines(response);
      for (std::string line; std::getline(lines, line);) {
        if (line.rfind("Answer: ", 0) == 0) continue;
        const size_t eq = line.find(" = ");
        ASSERT_NE(eq, std::string::npos) << line;
        EXPECT_EQ(evaluate(line.substr(0, eq)), std::stod(line.substr(eq + 3))) << line;
      }
      if (i >= 25 && i < 35) {
        EXPECT_EQ(b[static_cast<size_t>(i - 25)].prompt, p.prompt);
        EXPECT_EQ(b[static_cast<size_t>(i - 25)].answer, p.answer);
      }
    }
    EXPECT_GT(distinct.size(), difficulty == 0 ? 5u : 20u);
  }
  EXPECT_EQ(task_reference_response({"", "13", {{"task", "arithmetic"}, {"expression", "3 + 5 * 2"}}, {}}),
            "5 * 2 = 10\n3 + 10 = 13\nAnswer: 13");
  EXPECT_NE(task_problems({"arithmetic", 2, 1}, 0, 5)[0].prompt, task_problems({"arithmetic", 2, 2}, 0, 5)[0].prompt);
}

TEST(Tasks, CountdownHasASolutionByConstruction) {
  RewardOptions ro;
  ro.kind = "countdown";
  const auto reward = make_reward(ro);
  for (int64_t difficulty : {0, 2, 4, 8}) {
    const std::vector<PromptExample> a = task_problems({"countdown", difficulty, 3}, 100, 50);
    for (const PromptExample& p : a) {
      const auto numbers = p.extra.at("numbers").get<std::vector<int64_t>>();
      const int64_t target = p.extra.at("target").get<int64_t>();
      ASSERT_EQ(numbers.size(), static_cast<size_t>(difficulty) + 2);
      EXPECT_GT(target, 0);
      EXPECT_EQ(evaluate(p.answer), static_cast<double>(target)) << p.answer;
      std::string listed;
      for (int64_t x : numbers) listed += (listed.empty() ? "" : " ") + std::to_string(x);
      EXPECT_EQ(p.prompt, "Make " + std::to_string(target) + " from " + listed +
                              " using + - * and each number at most once. End with a line Answer: <expression>.");
      const std::string response = task_reference_response(p);
      EXPECT_EQ(reward->score({{p.prompt, response, p.answer, p.extra}}), std::vector<double>{1}) << response;
    }
    const std::vector<PromptExample> again = task_problems({"countdown", difficulty, 3}, 110, 1);
    EXPECT_EQ(again[0].prompt, a[10].prompt);
    EXPECT_EQ(again[0].answer, a[10].answer);
  }
}

TEST(Tasks, SftResponsesWithoutTheAnswerLineStopAfterTheWork) {
  const PromptExample arith{"", "13", {{"task", "arithmetic"}, {"expression", "3 + 5 * 2"}}, {}};
  EXPECT_EQ(task_reference_response(arith, false), "5 * 2 = 10\n3 + 10 = 13");
  EXPECT_EQ(dapo_math_score(task_reference_response(arith, false), "13"), 0.0);
  const PromptExample countdown = task_problems({"countdown", 2, 3}, 0, 1)[0];
  EXPECT_EQ(task_reference_response(countdown, false), countdown.answer);
  EXPECT_EQ(task_reference_response(countdown), "Answer: " + countdown.answer);

  // The kept fraction is the asked one, each choice a pure function of (seed, index) that does not
  // depend on the problem draws (the same indices of another seed choose differently).
  int kept = 0, same_as_seed_1 = 0;
  for (int64_t i = 0; i < 4000; ++i) {
    kept += sft_keeps_answer_line(0, i, 0.3);
    same_as_seed_1 += sft_keeps_answer_line(0, i, 0.5) == sft_keeps_answer_line(1, i, 0.5);
    EXPECT_TRUE(sft_keeps_answer_line(0, i, 1.0));
    EXPECT_FALSE(sft_keeps_answer_line(0, i, 0.0));
    if (sft_keeps_answer_line(0, i, 0.3)) {
      EXPECT_TRUE(sft_keeps_answer_line(0, i, 0.6));  // monotone in the fraction
    }
  }
  EXPECT_NEAR(kept / 4000.0, 0.3, 0.03);
  EXPECT_NEAR(same_as_seed_1 / 4000.0, 0.5, 0.05);
  EXPECT_NE(error_of([] { sft_keeps_answer_line(0, 0, 1.5); }).find("[0, 1]"), std::string::npos);
}

TEST(Tasks, MakeTaskPromptsTokenisesTheChatPrompt) {
  const test::ByteTokenizer tok;
  const std::vector<PromptExample> p = make_task_prompts({"arithmetic", 1, 5}, 3, 2, tok, "Sys.");
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[1].prompt, task_problems({"arithmetic", 1, 5}, 4, 1)[0].prompt);
  EXPECT_EQ(p[1].ids, chat_prompt_ids(p[1].prompt, "Sys.", tok));
  EXPECT_EQ(p[1].ids[0], tok.bos_id);
}

TEST(Tasks, BadOptionsAreErrors) {
  EXPECT_NE(error_of([] { task_problems({"sudoku", 2, 0}, 0, 1); }).find("task 'sudoku'"), std::string::npos);
  EXPECT_NE(error_of([] { task_problems({"arithmetic", 9, 0}, 0, 1); }).find("difficulty"), std::string::npos);
  EXPECT_NE(error_of([] { task_problems({"arithmetic", -1, 0}, 0, 1); }).find("difficulty"), std::string::npos);
  EXPECT_NE(error_of([] { task_problems({"arithmetic", 2, 0}, -1, 1); }).find("begin"), std::string::npos);
  EXPECT_EQ(task_names(), (std::vector<std::string>{"arithmetic", "countdown"}));
  EXPECT_NE(error_of([] {
              task_reference_response({"x", "1", {}, {}});
            }).find("not a built-in task"),
            std::string::npos);
}

}  // namespace
}  // namespace g4::rl

// Rewards: the DAPO verifier against the outputs of NeMo-RL's dapo_math_verifier.py (run on these
// inputs with Python 3.11), and the exact, regex, countdown and command rewards.
#include "rl/rewards.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/error_message.h"

namespace g4::rl {
namespace {

using test::error_of;

// (input, normalize_final_answer(input)) as the Python reference returns them.
const std::vector<std::pair<std::string, std::string>> kNormalised = {
    {"\\boxed{42}", "42"},
    {"$\\boxed{42}$", "42"},
    {"\\frac12", "\\frac{1}{2}"},
    {"\\frac{1}{2}", "\\frac{1}{2}"},
    {"\\fracab", "\\frac{a}{b}"},
    {"\\frac1b2", "\\frac{1}{b}2"},
    {"\\sqrt2", "\\sqrt{2}"},
    {"\\sqrt{2}", "\\sqrt{2}"},
    {"\\sqrt23", "\\sqrt{2}3"},
    {"10 cm", "10"},
    {"5 degrees", "5"},
    {"12 square feet", "12"},
    {"90^\\circ", "90"},
    {"90^{\\circ}", "90"},
    {"x = 5", "5"},
    {"y = 2x + 3 = 7", "7"},
    {"1,000", "1000"},
    {"1,000,000", "1000000"},
    {"1,2,3,a", "1,2,3,a"},
    {",", ","},
    {"\\text{(A)}", "(A)"},
    {"\\textbf{B}", "B"},
    {"\\overline{AB}", "AB"},
    {"$x$ and $y$", "x"},
    {"a cat", "cat"},
    {"an apple", "apple"},
    {"\\$5", "5"},
    {"5.$", "5"},
    {"\\text{5 dollars}", "5"},
    {"3\\text{ and }4", "34"},
    {"\\mbox{hi}", "hi"},
    {"7\\text{m}", "7"},
    {"\\dfrac{3}{4}", "\\dfrac{3}{4}"},
    {"  42  ", "42"},
    {"\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"},
    {"\\boxed{1} + \\boxed{2}", "1}+\\boxed{2"},
    {"\\left( 3, 4 \\right)", "\\left(3,4\\right)"},
    {"45^\\circ.", "45."},
    {"\"quoted\"", "quoted"},
    {"12{,}345", "12345"},
    {"3\\;4", "34"},
    {"1,\\!000", "1000"},
    {"\\text{s}x", "x"},
    {"\\ldots 5", "5"},
    {"fracfrac12", "frac{f}{r}ac12"},
    {"\\frac1\n2", "\\frac1\n2"},
    {"\\sqrt\n", "\\sqrt{\n}"},
    {"x$1$ and $2$ y\nq$3$", "1\n3"},
    {"\\text{a}\\text{b", "a\\text{b"},
    {"\\textsquare", "\\text"},
    {"\u00b2,\u00b3", "\u00b2\u00b3"},
    {"\u0661,\u0662", "\u0661\u0662"},
    {"\u00a05\u2003", "5"},
    {"[INVALID]", "[INVALID]"},
    {"", ""},
    {"=", ""},
    {"a=", ""},
    {"-7", "-7"},
    {"0.5", "0.5"},
    {"\\infty", "\\infty"},
    {"\\pi/2", "\\pi/2"},
    {"\\mathrm{th}3", "3"},
    {"\\text{\ns}x", "x"},
    {"\\boxed{a}\n\\boxed{b}}", "a\nb}"},
    {"\\text{a\n}b}", "\\text{a\n}b}"},
};

TEST(DapoVerifier, NormalisesAsTheReference) {
  for (const auto& [in, want] : kNormalised) EXPECT_EQ(normalize_final_answer(in), want) << "input: " << in;
}

// (response, ground truth, compute_score(...)["score"]) from the Python reference.
struct ScoreCase {
  std::string response, truth;
  double score;
};

TEST(DapoVerifier, ScoresAsTheReference) {
  const std::vector<ScoreCase> cases = {
      {"The sum is 13.\nAnswer: 13", "13", 1},
      {"Answer: 12\nwait, fix.\nAnswer: 13", "13", 1},  // the last answer line wins
      {"Answer: 13\nAnswer: 12", "13", 0},
      {"answer: 13", "13", 1},
      {"ANSWER : \\boxed{13}", "13", 1},
      {"So \\boxed{13}.", "13", 0},  // Minerva mode reads no \boxed without an answer line
      {"Answer: $\\frac12$", "\\frac{1}{2}", 1},
      {"Answer: x = 5", "5", 1},
      {"Answer: 1,000 dollars", "1000", 1},
      {"Answer: 10 cm", "10", 1},
      {"Final Answer: The answer is 7", "7", 0},
      {"Answer:7", "7", 1},
      {"Answer:\n7", "7", 1},  // \s* crosses the line break
      {"Answer:  \n", "", 1},  // the group takes back one space
      {"Answer: Answer: 5", "5", 0},
      {"An\u017fwer: 5", "5", 1},  // (?i): the long s matches 's'
      {"Answer: 4.0", "4", 0},
      {"Answer: -3", "-3", 1},
      {"no answer here", "[INVALID]", 1},
      {"Answer: 13\r\n", "13", 1},
  };
  for (const ScoreCase& c : cases) {
    EXPECT_EQ(dapo_math_score(c.response, c.truth), c.score) << "response: " << c.response << " truth: " << c.truth;
  }
}

TEST(DapoVerifier, ReadsOnlyTheLast300Characters) {
  const std::string line = "Answer: 13\n";  // 11 characters
  EXPECT_EQ(dapo_math_score(line + std::string(289, 'y'), "13"), 1.0);
  EXPECT_EQ(dapo_math_score(line + std::string(290, 'y'), "13"), 0.0);  // the 'A' falls out of the window
  // Characters, not bytes: 289 two-byte characters keep the line inside the window.
  std::string wide;
  for (int i = 0; i < 289; ++i) wide += "\u00e9";
  EXPECT_EQ(dapo_math_score(line + wide, "13"), 1.0);
  EXPECT_EQ(dapo_math_score(line + wide + "\u00e9", "13"), 0.0);
  // A long reasoning before the answer does not matter.
  EXPECT_EQ(dapo_math_score(std::string(5000, 'z') + "\nAnswer: \\boxed{7}", "7"), 1.0);
}

TEST(DapoVerifier, BytesThatAreNotUtf8CountAsOneCharacterEach) {
  const std::string bad(289, '\xff');
  EXPECT_EQ(dapo_math_score("Answer: 13\n" + bad, "13"), 1.0);
  EXPECT_EQ(dapo_math_score("Answer: 13\n" + bad + "\xff", "13"), 0.0);
  EXPECT_EQ(normalize_final_answer("\xff 5"),
            "\xff"
            "5");
}

std::vector<RewardInput> inputs(const std::vector<std::pair<std::string, std::string>>& response_answer) {
  std::vector<RewardInput> v;
  for (const auto& [response, answer] : response_answer) v.push_back({"the prompt", response, answer, {}});
  return v;
}

TEST(Rewards, DapoMathKind) {
  const auto r = make_reward({});
  EXPECT_EQ(r->score(inputs({{"Answer: 1,000", "1000"}, {"Answer: 999", "1000"}, {"nothing", "1000"}})),
            (std::vector<double>{1, 0, 0}));
}

TEST(Rewards, ExactComparesTheLastAnswerLineWithoutTexRules) {
  RewardOptions o;
  o.kind = "exact";
  const auto r = make_reward(o);
  EXPECT_EQ(r->score(inputs({{"Answer: 13", "13"},
                             {"Answer:   13.  ", " 13 "},  // whitespace and one final period go
                             {"Answer: 12\nAnswer: 13", "13"},
                             {"Answer: 13\nAnswer: 12", "13"},
                             {"Answer: \\boxed{13}", "13"},  // no TeX rules
                             {"Answer: 1,000", "1000"},
                             {"13", "13"},
                             {"answer: 13", "13"}})),
            (std::vector<double>{1, 1, 1, 0, 0, 0, 0, 1}));
}

TEST(Rewards, RegexWithTheEscapedAnswer) {
  RewardOptions o;
  o.kind = "regex";
  o.pattern = "Answer: {answer}$";
  const auto r = make_reward(o);
  EXPECT_EQ(r->score(inputs({{"Answer: 1+1", "1+1"},
                             {"Answer: 11", "1+1"},
                             {"Answer: (x)", "(x)"},
                             {"Answer: 13 ", "13"},
                             {"Answer: \\frac{1}{2}", "\\frac{1}{2}"},
                             {"Answer: 1/2", "1/2"},
                             {"Answer: a|b", "a|b"},
                             {"Answer: b", "a|b"}})),
            (std::vector<double>{1, 0, 1, 0, 1, 1, 1, 0}));
  o.pattern = "(?i)the answer is \\d+";
  EXPECT_EQ(make_reward(o)->score(inputs({{"THE ANSWER IS 4", ""}, {"the answer is four", ""}})),
            (std::vector<double>{1, 0}));
  // A long response with a pattern that scans it all.
  o.pattern = "^[a-z\\n]*Answer: {answer}";
  std::string lengthy(20000, 'q');
  EXPECT_EQ(make_reward(o)->score(inputs({{lengthy + "\nAnswer: 5", "5"}})), (std::vector<double>{1}));
  // Patterns std::regex would compile by recursion past the stack (a crash before the limits) are
  // errors; an answer that makes the pattern too long scores 0, as one too complex to match.
  o.pattern = std::string(100000, 'a');
  std::string e = error_of([&] { make_reward(o); });
  EXPECT_NE(e.find("reward.pattern"), std::string::npos) << e;
  EXPECT_NE(e.find("100000 bytes long"), std::string::npos) << e;
  o.pattern = std::string(2000, '(') + "a" + std::string(2000, ')');
  e = error_of([&] { make_reward(o); });
  EXPECT_NE(e.find("nests parentheses 2000 deep"), std::string::npos) << e;
  o.pattern = "Answer: {answer}";
  EXPECT_EQ(make_reward(o)->score(inputs({{"Answer: 5", std::string(40000, '5')}, {"Answer: 5", "5"}})),
            (std::vector<double>{0, 1}));
}

TEST(Rewards, CountdownChecksNumbersAndValue) {
  RewardOptions o;
  o.kind = "countdown";
  const auto r = make_reward(o);
  const nlohmann::json problem = {{"numbers", {3, 7, 2, 7}}, {"target", 23}};
  const std::vector<std::string> responses = {
      "Answer: 3 * 7 + 2",                                    // valid
      "Answer: (7 - 2) * 3 + 7 + 1",                          // 1 is not given
      "Answer: 7 * 3 + 2.",                                   // valid, final period
      "Answer: 3 * 7 + 3 - 1",                                // reuses 3
      "Answer: 7 + 7 + 3 * 2 + 3",                            // 3 used twice
      "Answer: 3 * 7 + 7 - 7 + 2",                            // 7 three times
      "Answer: 2 * (7 + 7) - 3 - 2",                          // wrong: 2 used twice
      "Answer: 3 * 7 + 2 * 1",                                // 1 not given
      "Answer: 7 + 7 + 3 + 2",                                // wrong value (19)
      "Answer: 23",                                           // 23 is not given
      "Answer: 3*(7)+2",                                      // valid, no spaces, parentheses
      "Answer: 3 7 + 2",                                      // garbage
      "Answer: -3 + 26",                                      // unary minus is not allowed
      "Answer: 3 * 7 + 2 = 23",                               // only the expression
      "3 * 7 + 2",                                            // no answer line
      "Answer: ((((3 * 7 + 2",                                // unbalanced
      "Answer: 99999999999999999999 - 99999999999999999976",  // overflow
  };
  std::vector<RewardInput> in;
  for (const std::string& s : responses) in.push_back({"p", s, "3 * 7 + 2", problem});
  EXPECT_EQ(r->score(in), (std::vector<double>{1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}));
  // The numbers' multiset: 7 is given twice, so using it twice is fine.
  in = {{"p", "Answer: 7 + 7 + 3 * 2 + 3", "", {{"numbers", {3, 7, 2, 7, 3}}, {"target", 23}}}};
  EXPECT_EQ(r->score(in), (std::vector<double>{1}));
  // A prompt without its numbers is a data error, not a zero.
  in = {{"p", "Answer: 1", "", {{"target", 1}}}};
  const std::string e = error_of([&] { r->score(in); });
  EXPECT_NE(e.find("'numbers'"), std::string::npos) << e;
}

TEST(Rewards, BadOptionsNameTheKey) {
  const auto message = [](RewardOptions o) { return error_of([&] { make_reward(o); }); };
  RewardOptions o;
  o.kind = "magic";
  EXPECT_NE(message(o).find("reward.kind 'magic'"), std::string::npos);
  o.kind = "regex";
  EXPECT_NE(message(o).find("reward.pattern"), std::string::npos);
  o.pattern = "Answer: (";
  EXPECT_NE(message(o).find("reward.pattern 'Answer: ('"), std::string::npos) << message(o);
  o.pattern = "{answer} {answer}";
  EXPECT_NE(message(o).find("more than once"), std::string::npos);
  o = {};
  o.pattern = "x";
  EXPECT_NE(message(o).find("reward.pattern is only read by reward.kind regex"), std::string::npos);
  o = {};
  o.kind = "command";
  EXPECT_NE(message(o).find("reward.command"), std::string::npos);
  o.command = "cat";
  o.timeout_s = 0;
  EXPECT_NE(message(o).find("reward.timeout_s"), std::string::npos);
  o.timeout_s = NAN;
  EXPECT_NE(message(o).find("reward.timeout_s"), std::string::npos);
}

RewardOptions command(const std::string& cmd, double timeout_s = 60) {
  RewardOptions o;
  o.kind = "command";
  o.command = cmd;
  o.timeout_s = timeout_s;
  return o;
}

TEST(CommandReward, ReadsJsonLinesAndWritesOneRewardPerLine) {
  // awk sees one JSON object per line; the reward is 1 where the response holds the answer.
  const auto r =
      make_reward(command("awk '{ a = $0; sub(/.*\"answer\":\"/, \"\", a); sub(/\".*/, \"\", a); print (index($0, "
                          "\"\\\"response\\\":\\\"Answer: \" a) ? 1 : 0.25) }'"));
  std::vector<RewardInput> in = {{"p1", "Answer: 5", "5", {{"id", 1}}}, {"p2", "Answer: 6", "5", {}}};
  EXPECT_EQ(r->score(in), (std::vector<double>{1, 0.25}));
  EXPECT_TRUE(r->score({}).empty());
}

TEST(CommandReward, SeesEveryFieldAndLargeOutputsDoNotDeadlock) {
  // 3000 inputs of 4 KiB each: far more than a pipe holds in either direction at once.
  std::vector<RewardInput> in;
  for (int i = 0; i < 3000; ++i)
    in.push_back({"p", std::string(4096, 'a' + i % 26), std::to_string(i), {{"k", i * 2}}});
  const auto r =
      make_reward(command("python3 -c 'import sys, json\n"
                          "for l in sys.stdin:\n"
                          "  d = json.loads(l)\n"
                          "  assert d[\"prompt\"] == \"p\" and len(d[\"response\"]) == 4096\n"
                          "  print(d[\"k\"] / 2 - int(d[\"answer\"]) + 0.5, \" \" * 5000)'"));
  const std::vector<double> out = r->score(in);
  ASSERT_EQ(out.size(), in.size());
  for (double v : out) EXPECT_EQ(v, 0.5);
}

TEST(CommandReward, FailuresAreErrorsNamingTheCommand) {
  const std::vector<RewardInput> two = {{"p", "r1", "a", {}}, {"p", "r2", "a", {}}};
  const auto error = [&](const RewardOptions& o) { return error_of([&] { make_reward(o)->score(two); }); };
  std::string e = error(command("echo oops >&2; exit 3"));
  EXPECT_NE(e.find("reward.command 'echo oops >&2; exit 3'"), std::string::npos) << e;
  EXPECT_NE(e.find("status 3"), std::string::npos) << e;
  EXPECT_NE(e.find("oops"), std::string::npos) << e;
  e = error(command("echo 1"));
  EXPECT_NE(e.find("wrote 1 lines for 2 inputs"), std::string::npos) << e;
  e = error(command("printf '1\\nabc\\n'"));
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("'abc'"), std::string::npos) << e;
  e = error(command("printf '1\\nnan\\n'"));
  EXPECT_NE(e.find("not a finite number"), std::string::npos) << e;
  e = error(command("kill -9 $$"));
  EXPECT_NE(e.find("signal 9"), std::string::npos) << e;
  // The child and what it started are killed at the timeout, even while holding the output open.
  const auto start = std::chrono::steady_clock::now();
  e = error(command("sleep 30 & sleep 30; echo 1; echo 1", 0.3));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(e.find("reward.timeout_s"), std::string::npos) << e;
  EXPECT_LT(seconds, 5.0);
  // A command that exits without reading its input (SIGPIPE must not reach this process).
  std::vector<RewardInput> big(2000, {"p", std::string(8192, 'x'), "a", {}});
  e = error_of([&] { make_reward(command("exit 0"))->score(big); });
  EXPECT_NE(e.find("wrote 0 lines for 2000 inputs"), std::string::npos) << e;
}

// Probed (tools/probe_rl.py): libstdc++'s std::regex recurses per character, so a long response
// overflowed the stack (a segfault) under a pattern such as '^(.|\n)*$'.
TEST(Rewards, RegexOnALongResponseDoesNotOverflowTheStack) {
  RewardOptions o;
  o.kind = "regex";
  o.pattern = "^(.|\n)*$";
  std::string response(100000, 'a');
  for (size_t i = 0; i < response.size(); i += 61) response[i] = '\n';
  EXPECT_EQ(make_reward(o)->score({{"p", response, "1", {}}}), (std::vector<double>{1}));
  o.pattern = "(?i)A+\nA+$";
  EXPECT_EQ(make_reward(o)->score({{"p", response, "1", {}}, {"p", "b", "1", {}}}), (std::vector<double>{1, 0}));
}

// Probed (tools/probe_rl.py): a program printing without end filled the trainer's memory until the
// timeout, and a chatty one's whole stderr was kept although only its end is shown.
TEST(CommandReward, EndlessOutputIsCutAndStderrKeepsItsEnd) {
  const std::vector<RewardInput> two = {{"p", "r1", "a", {}}, {"p", "r2", "a", {}}};
  const auto start = std::chrono::steady_clock::now();
  std::string e = error_of([&] { make_reward(command("yes 1"))->score(two); });
  EXPECT_NE(e.find("wrote more than 1048576 bytes on stdout for 2 inputs"), std::string::npos) << e;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 20.0);
  e = error_of([&] {
    make_reward(command("head -c 20000000 /dev/zero | tr '\\0' x >&2; echo the real reason >&2; exit 2"))->score(two);
  });
  EXPECT_NE(e.find("status 2"), std::string::npos) << e.substr(0, 300);
  EXPECT_NE(e.find("the real reason"), std::string::npos) << e.substr(0, 300);
  EXPECT_LT(e.size(), 4000u);
  // A timeout meant as "never" overflowed the clock into the past: an instant timeout.
  EXPECT_EQ(make_reward(command("echo 1; echo 0", 1e12))->score(two), (std::vector<double>{1, 0}));
  // Output far past the stdout limit on stderr alone is fine when the rewards are right.
  EXPECT_EQ(make_reward(command("head -c 20000000 /dev/zero >&2; echo 1; echo 0"))->score(two),
            (std::vector<double>{1, 0}));
}

// Probed: the program runs in its own process group (for the timeout), out of reach of the
// terminal's Ctrl-C and of a SIGTERM to the trainer, so a hung program outlived the trainer.
TEST(CommandReward, ASignalThatEndsTheTrainerEndsTheProgram) {
  for (const int sig : {SIGTERM, SIGINT}) {
    // Unique to this process and signal; a program left behind by a failure ends by itself.
    const std::string marker = "sleep 97." + std::to_string(::getpid() % 1000) + std::to_string(sig);
    // -x: the whole command line, the sleep's alone (not the shell running it or pgrep).
    const std::string look = "pgrep -x -f '" + marker + "' > /dev/null";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // The child stands for the trainer: it waits on a reward program that never ends.
      try {
        make_reward(command(marker + "; echo 1; echo 1", 600))->score({{"p", "r1", "a", {}}, {"p", "r2", "a", {}}});
      } catch (...) {
      }
      ::_exit(0);
    }
    bool started = false;
    for (int i = 0; i < 500 && !started; ++i) {
      started = std::system(look.c_str()) == 0;
      if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(started) << marker;
    // The shell shows before posix_spawn returns in the child; give it the moment to arm its handler.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(child, sig);
    int status = 0;
    ::waitpid(child, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "the trainer's signal takes its usual action";
    bool gone = false;
    for (int i = 0; i < 100 && !gone; ++i) {
      gone = std::system(look.c_str()) != 0;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(gone) << "the reward program outlived the trainer after signal " << sig;
  }
}

}  // namespace
}  // namespace g4::rl

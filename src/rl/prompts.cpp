// Prompt sets for RL: JSONL files in the DAPO-Math or plain layout, and the built-in tasks.
#include "rl/prompts.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/philox.h"
#include "io/json_input.h"

namespace g4::rl {
namespace {

using nlohmann::json;

std::vector<int64_t> tokenize_chat(const std::vector<data::ChatMessage>& messages, const io::Tokenizer& tok,
                                   data::ChatVariant variant) {
  // The template writes "<bos>" itself and encode() maps it to the BOS id, as the data pipeline's
  // chat documents and the server's chat requests are tokenised.
  const std::vector<int32_t> ids = tok.encode(data::render_chat(messages, true, variant));
  return {ids.begin(), ids.end()};
}

std::vector<data::ChatMessage> with_system(std::vector<data::ChatMessage> messages, const std::string& system_prompt) {
  const bool has_system = !messages.empty() && (messages[0].role == "system" || messages[0].role == "developer");
  if (!system_prompt.empty() && !has_system) messages.insert(messages.begin(), {"system", system_prompt});
  return messages;
}

// ---- prompt files -------------------------------------------------------------------------------

std::vector<data::ChatMessage> read_messages(const json& list, const std::string& key, const std::string& where) {
  G4_CHECK(list.is_array() && !list.empty(), where, ": '", key, "' must be a non-empty list of {role, content} ",
           "messages, got ", list.type_name());
  std::vector<data::ChatMessage> messages;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    const std::string at = key + "[" + std::to_string(i) + "]";
    G4_CHECK(m.is_object(), where, ": '", at, "' must be a {role, content} object, got ", m.type_name());
    for (const char* field : {"role", "content"}) {
      G4_CHECK(m.contains(field) && m[field].is_string(), where, ": '", at, ".", field, "' must be a string");
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

// The ground truth of a line: reward_model.ground_truth, answer or ground_truth (at most one), a
// string or a number; none when the line gives none.
std::optional<std::string> read_answer(const json& line, const std::string& where) {
  std::vector<std::pair<std::string, const json*>> found;
  if (const auto rm = line.find("reward_model"); rm != line.end()) {
    G4_CHECK(rm->is_object() && rm->contains("ground_truth"), where,
             ": 'reward_model' must be an object with a 'ground_truth'");
    found.emplace_back("reward_model.ground_truth", &(*rm)["ground_truth"]);
  }
  for (const char* key : {"answer", "ground_truth"}) {
    if (const auto it = line.find(key); it != line.end()) found.emplace_back(key, &*it);
  }
  if (found.empty()) return std::nullopt;
  G4_CHECK(found.size() == 1, where, ": the line gives both '", found[0].first, "' and '", found[1].first,
           "'; keep one ground truth");
  const auto& [key, value] = found[0];
  G4_CHECK(value->is_string() || value->is_number(), where, ": '", key, "' must be a string or a number, got ",
           value->type_name());
  return value->is_string() ? value->get<std::string>() : value->dump();
}

PromptExample read_prompt_line(const json& line, const std::string& where, const std::string& system_prompt,
                               const io::Tokenizer& tok, data::ChatVariant variant) {
  G4_CHECK(line.is_object(), where, ": a prompt line must be a JSON object, got ", line.type_name());
  const bool has_prompt = line.contains("prompt"), has_messages = line.contains("messages");
  G4_CHECK(has_prompt != has_messages, where,
           has_prompt ? ": give either 'prompt' or 'messages', not both" : ": missing 'prompt' (or 'messages')");
  const std::string key = has_prompt ? "prompt" : "messages";
  const json& p = line[key];
  std::vector<data::ChatMessage> messages =
      p.is_string() ? std::vector<data::ChatMessage>{{"user", p.get<std::string>()}} : read_messages(p, key, where);
  PromptExample ex;
  const auto user = std::find_if(messages.rbegin(), messages.rend(), [](const auto& m) { return m.role == "user"; });
  G4_CHECK(user != messages.rend(), where, ": '", key, "' has no user message");
  ex.prompt = user->content;
  const std::optional<std::string> answer = read_answer(line, where);
  ex.answer = answer.value_or("");
  ex.has_answer = answer.has_value();
  ex.where = where;
  for (const auto& [k, v] : line.items()) {
    if (k != "prompt" && k != "messages" && k != "answer" && k != "ground_truth" && k != "reward_model")
      ex.extra[k] = v;
  }
  try {
    ex.ids = tokenize_chat(with_system(std::move(messages), system_prompt), tok, variant);
  } catch (const Error& e) {
    G4_FAIL(where, ": '", key, "': ", e.what());
  }
  return ex;
}

// ---- built-in tasks -----------------------------------------------------------------------------

// The draws of problem `index`: Philox words (seed, counter k, stream index), so each problem is a
// pure function of (seed, index) whatever range is generated.
class Draws {
 public:
  Draws(uint64_t seed, int64_t index) : seed_(seed), index_(static_cast<uint64_t>(index)) {}
  int64_t uniform(int64_t lo, int64_t hi) {  // in [lo, hi]
    const uint32_t word = philox4x32(seed_, k_ / 4, index_).v[k_ % 4];
    ++k_;
    return lo + static_cast<int64_t>(word % static_cast<uint32_t>(hi - lo + 1));
  }

 private:
  uint64_t seed_, index_, k_ = 0;
};

// A flat expression with the usual precedence: operands[0] ops[0] operands[1] ...
struct Expression {
  std::vector<int64_t> operands;
  std::vector<char> ops;

  std::string text() const {
    std::string s = std::to_string(operands[0]);
    for (size_t i = 0; i < ops.size(); ++i) s += std::string(" ") + ops[i] + " " + std::to_string(operands[i + 1]);
    return s;
  }
  // The value, and each operation on the way ("5 * 2 = 10"): products first, then sums, left to right.
  int64_t evaluate(std::vector<std::string>* steps = nullptr) const {
    const auto step = [&](int64_t a, char op, int64_t b, int64_t r) {
      if (steps) steps->push_back(std::to_string(a) + " " + op + " " + std::to_string(b) + " = " + std::to_string(r));
      return r;
    };
    std::vector<int64_t> terms{operands[0]};
    std::vector<char> signs;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i] == '*') {
        terms.back() = step(terms.back(), '*', operands[i + 1], terms.back() * operands[i + 1]);
      } else {
        signs.push_back(ops[i]);
        terms.push_back(operands[i + 1]);
      }
    }
    int64_t v = terms[0];
    for (size_t i = 0; i < signs.size(); ++i)
      v = step(v, signs[i], terms[i + 1], signs[i] == '+' ? v + terms[i + 1] : v - terms[i + 1]);
    return v;
  }
};

Expression parse_expression(const std::string& text) {
  Expression e;
  size_t pos = 0;
  for (size_t i = 0; pos <= text.size(); ++i) {
    size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    const std::string token = text.substr(pos, end - pos);
    if (i % 2 == 1) {
      G4_CHECK(token == "+" || token == "-" || token == "*", "arithmetic problem '", text, "': '", token,
               "' is not an operator");
      e.ops.push_back(token[0]);
    } else {
      G4_CHECK(!token.empty() && token.find_first_not_of("0123456789") == std::string::npos, "arithmetic problem '",
               text, "': '", token, "' is not a number");
      e.operands.push_back(std::stoll(token));
    }
    pos = end + 1;
  }
  G4_CHECK(e.operands.size() == e.ops.size() + 1, "arithmetic problem '", text, "' ends with an operator");
  return e;
}

// Operands stay single digits up to difficulty 3, then go up to 19 (products of 10 such stay far
// inside int64).
int64_t operand_bound(int64_t difficulty) {
  return difficulty <= 3 ? 9 : 19;
}

char draw_op(Draws& d) {
  return "+-*"[d.uniform(0, 2)];
}

PromptExample arithmetic_problem(int64_t difficulty, Draws& d) {
  Expression e;
  for (int64_t i = 0; i <= difficulty; ++i) {
    e.operands.push_back(d.uniform(1, operand_bound(difficulty)));
    if (i > 0) e.ops.push_back(draw_op(d));
  }
  PromptExample ex;
  ex.prompt = "Compute " + e.text() + ". End with a line Answer: <number>.";
  ex.answer = std::to_string(e.evaluate());
  ex.extra = {{"task", "arithmetic"}, {"expression", e.text()}};
  return ex;
}

PromptExample countdown_problem(int64_t difficulty, Draws& d) {
  const size_t n = static_cast<size_t>(difficulty) + 2;
  std::vector<int64_t> numbers(n);
  for (int64_t& x : numbers) x = d.uniform(1, operand_bound(difficulty));
  // The solution: the numbers in a shuffled order joined by drawn operators; operators are drawn
  // again until the target is positive (all '+' always is).
  Expression solution;
  solution.operands = numbers;
  for (size_t i = n - 1; i > 0; --i)
    std::swap(solution.operands[i], solution.operands[static_cast<size_t>(d.uniform(0, static_cast<int64_t>(i)))]);
  for (int attempt = 0; attempt < 16 && (solution.ops.empty() || solution.evaluate() <= 0); ++attempt) {
    solution.ops.clear();
    for (size_t i = 1; i < n; ++i) solution.ops.push_back(draw_op(d));
  }
  if (solution.evaluate() <= 0) solution.ops.assign(n - 1, '+');
  const int64_t target = solution.evaluate();
  std::string listed;
  for (int64_t x : numbers) listed += (listed.empty() ? "" : " ") + std::to_string(x);
  PromptExample ex;
  ex.prompt = "Make " + std::to_string(target) + " from " + listed +
              " using + - * and each number at most once. End with a line Answer: <expression>.";
  ex.answer = solution.text();
  ex.extra = {{"task", "countdown"}, {"numbers", numbers}, {"target", target}};
  return ex;
}

}  // namespace

std::vector<PromptExample> load_prompts(const std::string& path, const io::Tokenizer& tok,
                                        const std::string& system_prompt, data::ChatVariant variant) {
  std::istringstream lines(io::read_regular_file(path, "prompt file", SIZE_MAX));
  std::vector<PromptExample> out;
  int64_t number = 0;
  for (std::string line; std::getline(lines, line);) {
    const std::string where = path + ":" + std::to_string(++number);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.push_back(
        read_prompt_line(io::parse_json(line, where, io::kMaxJsonLineBytes), where, system_prompt, tok, variant));
  }
  G4_CHECK(!out.empty(), "prompt file ", path, " holds no prompts (one JSON object per line expected)");
  return out;
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names{"arithmetic", "countdown"};
  return names;
}

std::vector<PromptExample> task_problems(const TaskOptions& o, int64_t begin, int64_t count) {
  const auto& names = task_names();
  G4_CHECK(std::find(names.begin(), names.end(), o.task) != names.end(), "task '", o.task,
           "' is not one of arithmetic, countdown");
  G4_CHECK(o.difficulty >= 0 && o.difficulty <= kMaxTaskDifficulty, "task difficulty must be in [0, ", kMaxTaskDifficulty,
           "], got ", o.difficulty);
  G4_CHECK(begin >= 0 && count >= 0, "task problems: begin (", begin, ") and count (", count, ") must be >= 0");
  G4_CHECK(count <= std::numeric_limits<int64_t>::max() - begin, "task problems: begin (", begin, ") + count (", count,
           ") is past the last problem index (2^63 - 1)");
  std::vector<PromptExample> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t i = begin; i < begin + count; ++i) {
    Draws d(o.seed, i);
    out.push_back(o.task == "arithmetic" ? arithmetic_problem(o.difficulty, d) : countdown_problem(o.difficulty, d));
    out.back().where = "task " + o.task + ", problem " + std::to_string(i);
    out.back().has_answer = true;
  }
  return out;
}

std::vector<PromptExample> make_task_prompts(const TaskOptions& o, int64_t begin, int64_t count,
                                             const io::Tokenizer& tok, const std::string& system_prompt,
                                             data::ChatVariant variant) {
  std::vector<PromptExample> out = task_problems(o, begin, count);
  for (PromptExample& ex : out) ex.ids = chat_prompt_ids(ex.prompt, system_prompt, tok, variant);
  return out;
}

std::string task_reference_response(const PromptExample& p, bool answer_line) {
  const std::string task = p.extra.is_object() ? p.extra.value("task", "") : "";
  if (task == "countdown") return (answer_line ? "Answer: " : "") + p.answer;
  G4_CHECK(task == "arithmetic" && p.extra.contains("expression") && p.extra["expression"].is_string(),
           "task_reference_response: not a built-in task problem (extra ",
           p.extra.dump(-1, ' ', false, json::error_handler_t::replace), ")");
  std::vector<std::string> steps;
  const int64_t value = parse_expression(p.extra["expression"].get<std::string>()).evaluate(&steps);
  std::string response;
  for (const std::string& s : steps) response += s + "\n";
  if (!answer_line) return response.substr(0, response.size() - 1);
  return response + "Answer: " + std::to_string(value);
}

bool sft_keeps_answer_line(uint64_t seed, int64_t index, double fraction) {
  G4_CHECK(fraction >= 0 && fraction <= 1, "the fraction of SFT responses with an answer line must be in [0, 1], got ",
           fraction);
  // A counter no problem reaches (a problem takes a few words of counters 0, 1, ...).
  constexpr uint64_t kAnswerLineCounter = uint64_t{1} << 40;
  const uint32_t word = philox4x32(seed, kAnswerLineCounter, static_cast<uint64_t>(index)).v[0];
  return static_cast<double>(word) < fraction * 4294967296.0;
}

std::vector<int64_t> chat_prompt_ids(const std::string& user, const std::string& system_prompt,
                                     const io::Tokenizer& tok, data::ChatVariant variant) {
  return tokenize_chat(with_system({{"user", user}}, system_prompt), tok, variant);
}

}  // namespace g4::rl

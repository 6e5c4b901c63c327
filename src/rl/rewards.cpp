// Rewards of RL rollouts. The DAPO verifier reproduces NeMo-RL's dapo_math_verifier.compute_score
// (adapted from verl's math_dapo.py) in Minerva mode, the mode the Gemma 4 recipes run: Python's
// str and re semantics are followed character for character (code points, not bytes; `.` stops
// only at '\n'; `\s` and strip() take Python's whitespace; isdigit() Python's digits), so a response
// scores here exactly as it scores there. The regular expressions are matched by hand because
// ECMAScript's differ from Python's in those details (its `.` also stops at '\r', it has no (?i),
// and std::regex works on bytes).
#include "rl/rewards.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <regex>
#include <thread>
#include <tuple>
#include <utility>

#include "core/error.h"
#include "core/regex.h"

extern char** environ;

namespace g4::rl {
namespace {

using nlohmann::json;

// ---- Python str semantics -------------------------------------------------------------------

using Text = std::u32string;

// Bytes that are not UTF-8 become the lone surrogates U+DC80..U+DCFF (Python's surrogateescape), so
// every byte string round-trips and each bad byte counts as one character.
Text to_text(std::string_view s) {
  Text t;
  t.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char lead = byte(i);
    const size_t n = lead < 0x80                   ? 1
                     : lead >= 0xC2 && lead < 0xE0 ? 2
                     : lead >= 0xE0 && lead < 0xF0 ? 3
                     : lead >= 0xF0 && lead < 0xF5 ? 4
                                                   : 0;
    char32_t cp = n == 1 ? lead : lead & (0x7F >> n);
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) {
      ok = (byte(i + k) & 0xC0) == 0x80;
      cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8 either.
    ok = ok && !(n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) &&
         !(n == 4 && (cp < 0x10000 || cp > 0x10FFFF));
    if (ok) {
      t.push_back(cp);
      i += n;
    } else {
      t.push_back(0xDC00 + lead);
      i += 1;
    }
  }
  return t;
}

std::string to_utf8(const Text& t) {
  std::string s;
  s.reserve(t.size());
  for (char32_t c : t) {
    if (c >= 0xDC80 && c <= 0xDCFF) {
      s.push_back(static_cast<char>(c - 0xDC00));
    } else if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      s += {static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
    } else if (c < 0x10000) {
      s += {static_cast<char>(0xE0 | (c >> 12)), static_cast<char>(0x80 | ((c >> 6) & 0x3F)),
            static_cast<char>(0x80 | (c & 0x3F))};
    } else {
      s += {static_cast<char>(0xF0 | (c >> 18)), static_cast<char>(0x80 | ((c >> 12) & 0x3F)),
            static_cast<char>(0x80 | ((c >> 6) & 0x3F)), static_cast<char>(0x80 | (c & 0x3F))};
    }
  }
  return s;
}

// str.isspace(), which is also what re's \s matches in a str pattern.
bool py_isspace(char32_t c) {
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || (c >= 0x2000 && c <= 0x200A);
  }
}

// str.isdigit(): Unicode's decimal digits and the other digits (superscripts, circled digits, ...),
// as listed by Python 3.11's unicodedata.
bool py_isdigit(char32_t c) {
  static constexpr std::pair<char32_t, char32_t> kRanges[] = {
      {0x30, 0x39},       {0xB2, 0xB3},       {0xB9, 0xB9},       {0x660, 0x669},     {0x6F0, 0x6F9},
      {0x7C0, 0x7C9},     {0x966, 0x96F},     {0x9E6, 0x9EF},     {0xA66, 0xA6F},     {0xAE6, 0xAEF},
      {0xB66, 0xB6F},     {0xBE6, 0xBEF},     {0xC66, 0xC6F},     {0xCE6, 0xCEF},     {0xD66, 0xD6F},
      {0xDE6, 0xDEF},     {0xE50, 0xE59},     {0xED0, 0xED9},     {0xF20, 0xF29},     {0x1040, 0x1049},
      {0x1090, 0x1099},   {0x1369, 0x1371},   {0x17E0, 0x17E9},   {0x1810, 0x1819},   {0x1946, 0x194F},
      {0x19D0, 0x19DA},   {0x1A80, 0x1A89},   {0x1A90, 0x1A99},   {0x1B50, 0x1B59},   {0x1BB0, 0x1BB9},
      {0x1C40, 0x1C49},   {0x1C50, 0x1C59},   {0x2070, 0x2070},   {0x2074, 0x2079},   {0x2080, 0x2089},
      {0x2460, 0x2468},   {0x2474, 0x247C},   {0x2488, 0x2490},   {0x24EA, 0x24EA},   {0x24F5, 0x24FD},
      {0x24FF, 0x24FF},   {0x2776, 0x277E},   {0x2780, 0x2788},   {0x278A, 0x2792},   {0xA620, 0xA629},
      {0xA8D0, 0xA8D9},   {0xA900, 0xA909},   {0xA9D0, 0xA9D9},   {0xA9F0, 0xA9F9},   {0xAA50, 0xAA59},
      {0xABF0, 0xABF9},   {0xFF10, 0xFF19},   {0x104A0, 0x104A9}, {0x10A40, 0x10A43}, {0x10D30, 0x10D39},
      {0x10E60, 0x10E68}, {0x11052, 0x1105A}, {0x11066, 0x1106F}, {0x110F0, 0x110F9}, {0x11136, 0x1113F},
      {0x111D0, 0x111D9}, {0x112F0, 0x112F9}, {0x11450, 0x11459}, {0x114D0, 0x114D9}, {0x11650, 0x11659},
      {0x116C0, 0x116C9}, {0x11730, 0x11739}, {0x118E0, 0x118E9}, {0x11950, 0x11959}, {0x11C50, 0x11C59},
      {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9}, {0x16A60, 0x16A69}, {0x16AC0, 0x16AC9}, {0x16B50, 0x16B59},
      {0x1D7CE, 0x1D7FF}, {0x1E140, 0x1E149}, {0x1E2F0, 0x1E2F9}, {0x1E950, 0x1E959}, {0x1F100, 0x1F10A},
      {0x1FBF0, 0x1FBF9}};
  const auto* it = std::upper_bound(std::begin(kRanges), std::end(kRanges), c,
                                    [](char32_t v, const std::pair<char32_t, char32_t>& r) { return v < r.first; });
  return it != std::begin(kRanges) && c <= (it - 1)->second;
}

Text py_strip(const Text& s) {
  size_t begin = 0, end = s.size();
  while (begin < end && py_isspace(s[begin])) ++begin;
  while (end > begin && py_isspace(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

// str.replace(from, to): every non-overlapping occurrence, left to right.
void replace_all(Text& s, std::u32string_view from, std::u32string_view to) {
  Text out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != Text::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  if (pos == 0) return;
  out.append(s, pos);
  s = std::move(out);
}

// ---- normalize_final_answer -------------------------------------------------------------------

// math_dapo.py's SUBSTITUTIONS and REMOVED_EXPRESSIONS, in their order.
constexpr std::pair<std::u32string_view, std::u32string_view> kSubstitutions[] = {
    {U"an ", U""}, {U"a ", U""},       {U".$", U"$"},           {U"\\$", U""},          {U"\\ ", U""},
    {U" ", U""},   {U"mbox", U"text"}, {U",\\text{and}", U","}, {U"\\text{and}", U","}, {U"\\text{m}", U"\\text{}"}};
constexpr std::u32string_view kRemovedExpressions[] = {
    U"square",     U"ways",       U"integers",  U"dollars",      U"mph",
    U"inches",     U"hours",      U"km",        U"units",        U"\\ldots",
    U"sue",        U"points",     U"feet",      U"minutes",      U"digits",
    U"cents",      U"degrees",    U"cm",        U"gm",           U"pounds",
    U"meters",     U"meals",      U"edges",     U"students",     U"childrentickets",
    U"multiples",  U"\\text{s}",  U"\\text{.}", U"\\text{\ns}",  U"\\text{}^2",
    U"\\text{}^3", U"\\text{\n}", U"\\text{}",  U"\\mathrm{th}", U"^\\circ",
    U"^{\\circ}",  U"\\;",        U",\\!",      U"{,}",          U"\"",
    U"\\dots"};

// re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s): `.` stops at '\n', so each line holding two '$'
// becomes "$" + what lies between its first two '$' + "$"; other lines stay.
Text keep_first_math_span(const Text& s) {
  Text out;
  for (size_t begin = 0; begin <= s.size();) {
    size_t end = s.find(U'\n', begin);
    if (end == Text::npos) end = s.size();
    const std::u32string_view line(s.data() + begin, end - begin);
    const size_t first = line.find(U'$');
    const size_t second = first == line.npos ? line.npos : line.find(U'$', first + 1);
    if (second == line.npos) {
      out.append(line);
    } else {
      out.push_back(U'$');
      out.append(line.substr(first + 1, second - first - 1));
      out.push_back(U'$');
    }
    if (end == s.size()) break;
    out.push_back(U'\n');
    begin = end + 1;
  }
  return out;
}

// re.sub's scan for a pattern that starts with the literal `lead`: at each occurrence, `match`
// gives the end of the match and its replacement, or nothing, and the scan then goes on from the
// occurrence's next character.
template <class Match>
Text substitute(const Text& s, std::u32string_view lead, Match match) {
  Text out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(lead, pos)) != Text::npos;) {
    const std::optional<std::pair<size_t, Text>> m = match(hit + lead.size());
    const size_t next = m ? m->first : hit + 1;
    out.append(s, pos, (m ? hit : next) - pos);
    if (m) out.append(m->second);
    pos = next;
  }
  out.append(s, pos);
  return out;
}

// re.sub(r"(\\cmd\{)(.*?)(\})", "\\2", s) (lazy: up to the first '}') or with (.*) (greedy: up to
// the last '}'), never across a '\n'.
Text unwrap_command(const Text& s, std::u32string_view open, bool greedy) {
  return substitute(s, open, [&](size_t body) -> std::optional<std::pair<size_t, Text>> {
    const size_t line_end = std::min(s.find(U'\n', body), s.size());
    const std::u32string_view rest(s.data() + body, line_end - body);
    const size_t close = greedy ? rest.rfind(U'}') : rest.find(U'}');
    if (close == rest.npos) return std::nullopt;
    return std::make_pair(body + close + 1, Text(rest.substr(0, close)));
  });
}

// re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s) (args = 2) and re.sub(r"(sqrt)([^{])",
// "sqrt{\\2}", s) (args = 1): [^{] takes any character but '{', '\n' included; `.` any but '\n'.
Text brace_shorthand(const Text& s, std::u32string_view name, size_t args) {
  return substitute(s, name, [&](size_t a) -> std::optional<std::pair<size_t, Text>> {
    if (a + args > s.size() || s[a] == U'{' || (args == 2 && s[a + 1] == U'\n')) return std::nullopt;
    Text r(name);
    for (size_t k = 0; k < args; ++k) r += {U'{', s[a + k], U'}'};
    return std::make_pair(a + args, std::move(r));
  });
}

Text normalize(Text s) {
  if (const size_t eq = s.rfind(U'='); eq != Text::npos) s.erase(0, eq + 1);
  for (const auto& [before, after] : kSubstitutions) replace_all(s, before, after);
  for (std::u32string_view expr : kRemovedExpressions) replace_all(s, expr, U"");
  s = keep_first_math_span(s);
  s = unwrap_command(s, U"\\text{", false);
  s = unwrap_command(s, U"\\textbf{", false);
  s = unwrap_command(s, U"\\overline{", false);
  s = unwrap_command(s, U"\\boxed{", true);
  s = brace_shorthand(s, U"frac", 2);
  s = brace_shorthand(s, U"sqrt", 1);
  std::erase(s, U'$');
  Text digits = s;
  std::erase(digits, U',');
  if (!digits.empty() && std::all_of(digits.begin(), digits.end(), py_isdigit)) s = std::move(digits);
  return py_strip(s);
}

// ---- the answer line ------------------------------------------------------------------------

// One match of r"(?i)Answer\s*:\s*([^\n]+)" starting exactly at `p`: the [begin, end) of its group.
// Under (?i) Python also lets 'ſ' (U+017F) match 's'. The greedy \s* before the group gives back
// characters until the group can start on one that is not '\n', so "Answer:  \n" captures " ".
std::optional<std::pair<size_t, size_t>> answer_at(const Text& s, size_t p) {
  static constexpr char32_t kWord[] = U"answer";
  for (size_t k = 0; k < 6; ++k, ++p) {
    if (p >= s.size()) return std::nullopt;
    char32_t c = s[p];
    if (c >= U'A' && c <= U'Z') c += U'a' - U'A';
    if (c == 0x17F) c = U's';
    if (c != kWord[k]) return std::nullopt;
  }
  while (p < s.size() && py_isspace(s[p])) ++p;
  if (p >= s.size() || s[p] != U':') return std::nullopt;
  const size_t spaces = ++p;
  while (p < s.size() && py_isspace(s[p])) ++p;
  for (size_t start = p + 1; start-- > spaces;) {
    if (start < s.size() && s[start] != U'\n') {
      size_t end = s.find(U'\n', start);
      return std::make_pair(start, end == Text::npos ? s.size() : end);
    }
  }
  return std::nullopt;
}

// re.findall(...)[-1]: the scan resumes after each match, so matches never overlap.
std::optional<Text> last_answer(const Text& s) {
  std::optional<Text> last;
  for (size_t p = 0; p < s.size();) {
    if (const auto m = answer_at(s, p)) {
      last = s.substr(m->first, m->second - m->first);
      p = m->second;
    } else {
      ++p;
    }
  }
  return last;
}

// The "Answer:" value that the exact and countdown rewards compare: the last answer line of the
// whole response, stripped, without one final '.' ("Answer: 13." is 13).
std::optional<std::string> answer_value(const std::string& response) {
  std::optional<Text> line = last_answer(to_text(response));
  if (!line) return std::nullopt;
  Text v = py_strip(*line);
  if (!v.empty() && v.back() == U'.') v = py_strip(v.substr(0, v.size() - 1));
  return to_utf8(v);
}

// ---- countdown --------------------------------------------------------------------------------

// An expression of non-negative integers, + - * and parentheses (no unary minus), evaluated with
// the usual precedence; every literal is recorded. nullopt for anything else, an overflow included.
class CountdownParser {
 public:
  explicit CountdownParser(const std::string& s) : s_(s) {}

  std::optional<int64_t> parse() {
    const std::optional<int64_t> v = sum();
    skip_spaces();
    if (!v || i_ != s_.size()) return std::nullopt;
    return v;
  }
  const std::vector<int64_t>& literals() const { return literals_; }

 private:
  void skip_spaces() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
  }
  bool eat(char c) {
    skip_spaces();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  std::optional<int64_t> sum() {
    std::optional<int64_t> v = product();
    while (v) {
      const bool plus = eat('+');
      if (!plus && !eat('-')) break;
      const std::optional<int64_t> rhs = product();
      int64_t r = 0;
      if (!rhs || (plus ? __builtin_add_overflow(*v, *rhs, &r) : __builtin_sub_overflow(*v, *rhs, &r)))
        return std::nullopt;
      v = r;
    }
    return v;
  }
  std::optional<int64_t> product() {
    std::optional<int64_t> v = factor();
    while (v && eat('*')) {
      const std::optional<int64_t> rhs = factor();
      int64_t r = 0;
      if (!rhs || __builtin_mul_overflow(*v, *rhs, &r)) return std::nullopt;
      v = r;
    }
    return v;
  }
  std::optional<int64_t> factor() {
    if (eat('(')) {
      if (++depth_ > kMaxDepth) return std::nullopt;
      const std::optional<int64_t> v = sum();
      --depth_;
      return v && eat(')') ? v : std::nullopt;
    }
    skip_spaces();
    const size_t start = i_;
    int64_t v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      if (__builtin_mul_overflow(v, int64_t{10}, &v) || __builtin_add_overflow(v, int64_t{s_[i_] - '0'}, &v))
        return std::nullopt;
      ++i_;
    }
    if (i_ == start) return std::nullopt;
    literals_.push_back(v);
    return v;
  }

  static constexpr int kMaxDepth = 64;
  const std::string& s_;
  size_t i_ = 0;
  int depth_ = 0;
  std::vector<int64_t> literals_;
};

// The problem's numbers and target from the prompt's extra fields; a data error, not a bad response.
// `which` names the prompt.
std::pair<std::vector<int64_t>, int64_t> countdown_problem(const json& x, const std::string& which) {
  const bool ok =
      x.is_object() && x.contains("numbers") && x["numbers"].is_array() && x.contains("target") &&
      x["target"].is_number_integer() &&
      std::all_of(x["numbers"].begin(), x["numbers"].end(), [](const json& n) { return n.is_number_integer(); });
  G4_CHECK(ok, which, ": reward.kind countdown needs the prompt's fields 'numbers' (a list of integers) and 'target' ",
           "(an integer); it has ", x.dump(-1, ' ', false, json::error_handler_t::replace));
  return {x["numbers"].get<std::vector<int64_t>>(), x["target"].get<int64_t>()};
}

double countdown_score(const RewardInput& in) {
  auto [numbers, target] = countdown_problem(in.extra, "the prompt '" + in.prompt.substr(0, 80) + "'");
  const std::optional<std::string> value = answer_value(in.response);
  if (!value) return 0.0;
  CountdownParser parser(*value);
  const std::optional<int64_t> result = parser.parse();
  if (!result || *result != target) return 0.0;
  for (int64_t lit : parser.literals()) {
    const auto it = std::find(numbers.begin(), numbers.end(), lit);
    if (it == numbers.end()) return 0.0;  // not given, or given fewer times than used
    numbers.erase(it);
  }
  return 1.0;
}

// ---- the reward kinds -----------------------------------------------------------------------

template <class Fn>
class PerInputReward : public Reward {
 public:
  explicit PerInputReward(Fn fn) : fn_(std::move(fn)) {}
  std::vector<double> score(const std::vector<RewardInput>& inputs) override {
    std::vector<double> out;
    out.reserve(inputs.size());
    for (const RewardInput& in : inputs) out.push_back(fn_(in));
    return out;
  }

 private:
  Fn fn_;
};
template <class Fn>
std::unique_ptr<Reward> per_input(Fn fn) {
  return std::make_unique<PerInputReward<Fn>>(std::move(fn));
}

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}/", c) != nullptr && c != '\0') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// libstdc++'s std::regex matches by recursion, several frames per character the pattern consumes:
// '^(.|\n)*$' over 15k characters, or '.*x' over 30k, overflows an 8 MiB stack and crashes the
// trainer, and long reasoning responses reach such lengths. The search runs on a thread whose stack
// grows with the text (about 0.8 KiB a character measured for such patterns; 2 KiB given). Its
// pages are touched only as deep as the recursion goes.
bool deep_regex_search(const std::string& text, const std::regex& re) {
  struct Search {
    const std::string& text;
    const std::regex& re;
    bool found = false;
    std::exception_ptr error;
  } search{text, re, false, nullptr};
  const size_t stack = (size_t{64} << 20) + text.size() * 2048;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack);
  pthread_t thread;
  const int rc = ::pthread_create(
      &thread, &attr,
      [](void* arg) -> void* {
        auto* s = static_cast<Search*>(arg);
        try {
          s->found = std::regex_search(s->text, s->re);
        } catch (...) {
          s->error = std::current_exception();
        }
        return nullptr;
      },
      &search);
  pthread_attr_destroy(&attr);
  G4_CHECK(rc == 0, "reward.pattern: cannot start a thread with a ", stack >> 20, " MiB stack to search a response of ",
           text.size(), " bytes: ", std::strerror(rc));
  ::pthread_join(thread, nullptr);
  if (search.error) std::rethrow_exception(search.error);
  return search.found;
}

class RegexReward : public Reward {
 public:
  explicit RegexReward(const std::string& pattern) {
    std::string p = pattern;
    // Python's inline case-insensitive flag, which ECMAScript lacks, as a leading (?i).
    if (p.rfind("(?i)", 0) == 0) {
      p.erase(0, 4);
      flags_ |= std::regex::icase;
    }
    const size_t at = p.find("{answer}");
    if (at != std::string::npos) {
      before_ = p.substr(0, at);
      after_ = p.substr(at + 8);
      G4_CHECK(after_.find("{answer}") == std::string::npos, "reward.pattern '", pattern,
               "' holds {answer} more than once");
    } else {
      before_ = p;
    }
    fixed_ = compile_regex(before_ + after_, flags_, "reward.pattern");
    has_answer_ = at != std::string::npos;
  }

  std::vector<double> score(const std::vector<RewardInput>& inputs) override {
    std::vector<double> out;
    out.reserve(inputs.size());
    for (const RewardInput& in : inputs) {
      // An answer too long or too complex for std::regex with the pattern around it: scored as a
      // failed input.
      std::regex with_answer;
      if (has_answer_) {
        try {
          with_answer = compile_regex(before_ + regex_escape(in.answer) + after_, flags_, "reward.pattern with the answer");
        } catch (const Error&) {
          out.push_back(0.0);
          continue;
        }
      }
      try {
        out.push_back(deep_regex_search(in.response, has_answer_ ? with_answer : fixed_) ? 1.0 : 0.0);
      } catch (const std::regex_error&) {
        out.push_back(0.0);  // too complex to match: scored as a failed input
      }
    }
    return out;
  }

 private:
  std::regex::flag_type flags_ = std::regex::ECMAScript;
  std::string before_, after_;
  bool has_answer_ = false;
  std::regex fixed_;
};

// ---- the command reward ---------------------------------------------------------------------

struct CommandRun {
  std::string out, err;
  int status = 0;
  bool timed_out = false;
  bool too_much_output = false;  // stdout passed its limit: the program was killed there
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { close(); }
  int get() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// The reward program runs in a process group of its own, so that a timeout kills everything it
// started; that also keeps it out of the terminal's Ctrl-C and out of a scheduler's SIGTERM, which
// reach the trainer's group only. While it runs, SIGINT, SIGTERM and SIGHUP therefore kill its
// group first and then take their previous action (by default: the trainer ends as it would have);
// otherwise a hung or slow program would outlive the trainer. A signal ignored before (nohup's
// SIGHUP) stays ignored. SIGKILL cannot be caught: the program then sees its stdin close.
class KillGroupOnSignal {
 public:
  explicit KillGroupOnSignal(pid_t group) {
    group_.store(group);
    struct sigaction sa {};
    sa.sa_handler = &KillGroupOnSignal::handler;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < kSignals.size(); ++i) {
      installed_[i] = false;
      if (::sigaction(kSignals[i], nullptr, &old_[i]) != 0) continue;
      if (!(old_[i].sa_flags & SA_SIGINFO) && old_[i].sa_handler == SIG_IGN) continue;
      installed_[i] = ::sigaction(kSignals[i], &sa, nullptr) == 0;
    }
  }
  ~KillGroupOnSignal() {
    for (size_t i = 0; i < kSignals.size(); ++i)
      if (installed_[i]) ::sigaction(kSignals[i], &old_[i], nullptr);
    group_.store(0);
  }
  KillGroupOnSignal(const KillGroupOnSignal&) = delete;
  KillGroupOnSignal& operator=(const KillGroupOnSignal&) = delete;

 private:
  // Async-signal-safe: kill, sigaction and raise only. The raised signal is blocked until the
  // handler returns, and then meets the restored action.
  static void handler(int sig) {
    const pid_t group = group_.load();
    if (group > 0) ::kill(-group, SIGKILL);
    for (size_t i = 0; i < kSignals.size(); ++i)
      if (kSignals[i] == sig) ::sigaction(sig, &old_[i], nullptr);
    ::raise(sig);
  }

  static constexpr std::array<int, 3> kSignals{SIGINT, SIGTERM, SIGHUP};
  static inline std::atomic<pid_t> group_{0};
  static inline struct sigaction old_[3]{};
  static inline bool installed_[3]{};
};

// A failing program's message shows the end of its stderr; a chatty one (progress bars, warnings)
// may write gigabytes, of which only this much is kept.
constexpr size_t kKeptStderr = 64 << 10;

// Runs `/bin/sh -c command` with `input` on its stdin, collecting stdout and stderr; one poll loop
// writes and reads at once, so neither side blocks on a full pipe. The child's stdin is a socket,
// written with MSG_NOSIGNAL, so a child that exits without reading it cannot raise SIGPIPE in the
// trainer. After timeout_s the child's process group (the shell and what it started) is killed.
// posix_spawn (vfork + exec) rather than fork: the trainer may map tens of GiB, whose page tables
// fork would copy.
CommandRun run_command(const std::string& command, const std::string& input, double timeout_s, size_t max_out) {
  const std::string what = "reward.command '" + command + "'";
  int in_pair[2], out_pipe[2], err_pipe[2];
  G4_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) == 0, what,
           ": socketpair: ", std::strerror(errno));
  Fd in(in_pair[0]), child_in(in_pair[1]);
  G4_CHECK(::pipe2(out_pipe, O_CLOEXEC) == 0, what, ": pipe: ", std::strerror(errno));
  Fd out(out_pipe[0]), child_out(out_pipe[1]);
  G4_CHECK(::pipe2(err_pipe, O_CLOEXEC) == 0, what, ": pipe: ", std::strerror(errno));
  Fd err(err_pipe[0]), child_err(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_in.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, child_out.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, child_err.get(), STDERR_FILENO);
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  std::string sh = "sh", dash_c = "-c", cmd = command;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  G4_CHECK(rc == 0, what, ": cannot start /bin/sh: ", std::strerror(rc));
  const KillGroupOnSignal kill_group_on_signal(pid);
  child_in.close();
  child_out.close();
  child_err.close();
  for (int fd : {in.get(), out.get(), err.get()}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);

  using Clock = std::chrono::steady_clock;
  // A timeout meant as "never" (1e12 s) would overflow the clock's nanoseconds into the past.
  constexpr double kLongestTimeout = 1e9;  // about 31 years
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(std::min(timeout_s, kLongestTimeout)));
  const auto ms_left = [&] {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return static_cast<int>(std::clamp<int64_t>(left, 0, 1000));
  };
  CommandRun run;
  size_t written = 0;
  if (input.empty()) in.close();
  while ((out.get() >= 0 || err.get() >= 0) && Clock::now() < deadline) {
    pollfd fds[3] = {{in.get(), POLLOUT, 0}, {out.get(), POLLIN, 0}, {err.get(), POLLIN, 0}};
    const int n = ::poll(fds, 3, ms_left());
    if (n < 0 && errno != EINTR) G4_FAIL(what, ": poll: ", std::strerror(errno));
    if (n <= 0) continue;
    if (fds[0].revents != 0) {
      const ssize_t k = ::send(in.get(), input.data() + written, input.size() - written, MSG_NOSIGNAL);
      if (k > 0) written += static_cast<size_t>(k);
      // Everything written, or the child closed its stdin: either way nothing more goes in.
      if (written == input.size() || (k < 0 && errno != EAGAIN && errno != EINTR)) in.close();
    }
    for (auto [pfd, fd, text] : {std::tuple{&fds[1], &out, &run.out}, std::tuple{&fds[2], &err, &run.err}}) {
      if (pfd->revents == 0) continue;
      char buf[65536];
      const ssize_t k = ::read(fd->get(), buf, sizeof buf);
      if (k > 0) text->append(buf, static_cast<size_t>(k));
      if (text == &run.err && run.err.size() > 2 * kKeptStderr) run.err.erase(0, run.err.size() - kKeptStderr);
      if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) fd->close();
    }
    // A program that writes without end (a loop printing forever) would fill the memory before
    // the timeout.
    if (run.out.size() > max_out) {
      run.too_much_output = true;
      break;
    }
  }
  // Output still open means the deadline passed (or stdout overflowed); closed output, that the
  // child may still be running.
  int status = 0;
  pid_t done = 0;
  for (;;) {
    done = ::waitpid(pid, &status, WNOHANG);
    if (done < 0 && errno == EINTR) continue;
    if (done != 0 || run.too_much_output || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  G4_CHECK(done >= 0, what, ": waitpid: ", std::strerror(errno));
  if (done == 0 || out.get() >= 0 || err.get() >= 0) {
    run.timed_out = !run.too_much_output;
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    while (done == 0 && ::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  run.status = status;
  return run;
}

std::string tail(const std::string& s, size_t n) {
  std::string t = s.size() > n ? "..." + s.substr(s.size() - n) : s;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  return t.empty() ? "(nothing on stderr)" : "stderr: " + t;
}

class CommandReward : public Reward {
 public:
  CommandReward(std::string command, double timeout_s) : command_(std::move(command)), timeout_s_(timeout_s) {}

  std::vector<double> score(const std::vector<RewardInput>& inputs) override {
    if (inputs.empty()) return {};
    std::string input;
    for (const RewardInput& in : inputs) {
      json line = in.extra.is_object() ? in.extra : json::object();
      line["prompt"] = in.prompt;
      line["response"] = in.response;
      line["answer"] = in.answer;
      input += line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    }
    // One number a line: a generous 64 KiB per input (padding included), never less than 1 MiB.
    const size_t max_out = std::max<size_t>(1 << 20, inputs.size() << 16);
    const CommandRun run = run_command(command_, input, timeout_s_, max_out);
    const std::string what = "reward.command '" + command_ + "'";
    G4_CHECK(!run.too_much_output, what, " wrote more than ", max_out, " bytes on stdout for ", inputs.size(),
             " inputs (one reward per input line expected) and was killed; ", tail(run.err, 2000));
    G4_CHECK(!run.timed_out, what, " ran longer than reward.timeout_s (", timeout_s_, " s) on ", inputs.size(),
             " inputs and was killed; ", tail(run.err, 2000));
    G4_CHECK(!WIFSIGNALED(run.status), what, " was killed by signal ", WTERMSIG(run.status), "; ", tail(run.err, 2000));
    G4_CHECK(WEXITSTATUS(run.status) == 0, what, " exited with status ", WEXITSTATUS(run.status), "; ",
             tail(run.err, 2000));
    std::vector<std::string> lines;
    for (size_t pos = 0; pos < run.out.size();) {
      size_t end = run.out.find('\n', pos);
      if (end == std::string::npos) end = run.out.size();
      lines.push_back(run.out.substr(pos, end - pos));
      pos = end + 1;
    }
    G4_CHECK(lines.size() == inputs.size(), what, " wrote ", lines.size(), " lines for ", inputs.size(),
             " inputs (one reward per input line expected); ", tail(run.err, 2000));
    std::vector<double> rewards;
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string& l = lines[i];
      const size_t b = l.find_first_not_of(" \t\r"), e = l.find_last_not_of(" \t\r");
      const std::string v = b == std::string::npos ? "" : l.substr(b, e - b + 1);
      char* stop = nullptr;
      errno = 0;
      const double r = v.empty() ? NAN : std::strtod(v.c_str(), &stop);
      G4_CHECK(!v.empty() && stop == v.c_str() + v.size() && std::isfinite(r), what, ": line ", i + 1,
               " of its output is not a finite number: '", l.substr(0, 100), "'");
      rewards.push_back(r);
    }
    return rewards;
  }

 private:
  std::string command_;
  double timeout_s_;
};

}  // namespace

std::string normalize_final_answer(std::string_view answer) {
  return to_utf8(normalize(to_text(answer)));
}

double dapo_math_score(std::string_view response, std::string_view ground_truth) {
  Text r = to_text(response);
  if (r.size() > 300) r.erase(0, r.size() - 300);
  const Text pred = normalize(last_answer(r).value_or(U"[INVALID]"));
  return pred == normalize(to_text(ground_truth)) ? 1.0 : 0.0;
}

void check_prompt_fields(const std::string& kind, const nlohmann::json& extra, const std::string& where) {
  if (kind == "countdown") countdown_problem(extra, where);
}

std::unique_ptr<Reward> make_reward(const RewardOptions& o) {
  G4_CHECK(o.kind == "regex" || o.pattern.empty(), "reward.pattern is only read by reward.kind regex (the kind is '",
           o.kind, "')");
  G4_CHECK(o.kind == "command" || o.command.empty(),
           "reward.command is only read by reward.kind command (the kind is '", o.kind, "')");
  if (o.kind == "dapo_math") {
    return per_input([](const RewardInput& in) { return dapo_math_score(in.response, in.answer); });
  }
  if (o.kind == "exact") {
    return per_input([](const RewardInput& in) {
      const std::optional<std::string> v = answer_value(in.response);
      return v && *v == to_utf8(py_strip(to_text(in.answer))) ? 1.0 : 0.0;
    });
  }
  if (o.kind == "countdown") return per_input(countdown_score);
  if (o.kind == "regex") {
    G4_CHECK(!o.pattern.empty(), "reward.kind regex needs reward.pattern (an ECMAScript regular expression)");
    return std::make_unique<RegexReward>(o.pattern);
  }
  if (o.kind == "command") {
    G4_CHECK(!o.command.empty(), "reward.kind command needs reward.command (a shell command line)");
    G4_CHECK(std::isfinite(o.timeout_s) && o.timeout_s > 0,
             "reward.timeout_s must be a positive number of seconds, got ", o.timeout_s);
    return std::make_unique<CommandReward>(o.command, o.timeout_s);
  }
  G4_FAIL("reward.kind '", o.kind, "' is not one of dapo_math, exact, regex, countdown, command");
}

}  // namespace g4::rl

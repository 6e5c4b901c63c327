// Regular expressions from users (LoRA target modules, RL reward patterns) through std::regex, with
// the limits libstdc++ needs: it compiles a pattern by recursion, and a pattern of about 100 KB, or
// parentheses some 20,000 deep, overflowed an 8 MiB stack and crashed the process (measured
// 2026-12-05). Patterns within the limits below compile with a wide margin; longer ones are an
// error naming `what`, as is an invalid pattern. (Matching time is not bounded: a pattern such as
// '(.*)*(.*)*x' backtracks exponentially, in std::regex as in Python's re.)
#pragma once
#include <algorithm>
#include <regex>
#include <string>

#include "core/error.h"

namespace g4 {

constexpr size_t kMaxRegexBytes = 32 << 10;
constexpr int kMaxRegexNesting = 1000;

inline std::regex compile_regex(const std::string& pattern, std::regex::flag_type flags, const std::string& what) {
  G4_CHECK(pattern.size() <= kMaxRegexBytes, what, ": the regular expression is ", pattern.size(),
           " bytes long; at most ", kMaxRegexBytes, " are taken (std::regex compiles by recursion)");
  int depth = 0, deepest = 0;
  bool escaped = false;
  for (char c : pattern) {
    if (escaped) {
      escaped = false;
    } else if (c == '\\') {
      escaped = true;
    } else if (c == '(') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ')') {
      --depth;
    }
  }
  G4_CHECK(deepest <= kMaxRegexNesting, what, ": the regular expression nests parentheses ", deepest,
           " deep; at most ", kMaxRegexNesting, " levels are taken (std::regex compiles by recursion)");
  try {
    return std::regex(pattern, flags);
  } catch (const std::regex_error& e) {
    G4_FAIL(what, " '", pattern, "' is not a valid regular expression (ECMAScript: ", e.what(), ")");
  }
}

}  // namespace g4

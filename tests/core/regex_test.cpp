// User regular expressions (core/regex.h): within the limits they compile and match as std::regex
// does; past them, and when invalid, they are errors naming their source, never a stack overflow.
#include "core/regex.h"

#include <gtest/gtest.h>

#include "support/error_message.h"

namespace g4 {
namespace {

TEST(Regex, LimitsAndInvalidPatternsAreNamedErrors) {
  const auto error = [](const std::string& pattern) {
    return test::error_of([&] { compile_regex(pattern, std::regex::ECMAScript, "lora.target_modules"); });
  };
  std::string e = error(std::string(100000, 'a'));
  EXPECT_NE(e.find("lora.target_modules: the regular expression is 100000 bytes long"), std::string::npos) << e;
  e = error(std::string(1001, '(') + "a" + std::string(1001, ')'));
  EXPECT_NE(e.find("nests parentheses 1001 deep"), std::string::npos) << e;
  e = error("q_proj(");
  EXPECT_NE(e.find("'q_proj(' is not a valid regular expression"), std::string::npos) << e;
  // Escaped parentheses are characters, not nesting.
  std::string escaped;
  for (int i = 0; i < 2000; ++i) escaped += "\\(";
  EXPECT_TRUE(std::regex_match(std::string(2000, '('), compile_regex(escaped, std::regex::ECMAScript, "x")));
}

TEST(Regex, ALongAlternationOfModuleNamesCompiles) {
  // Every projection of a 60-layer model by its full name: about 21 KB, as a PEFT config may list them.
  std::string pattern;
  for (int l = 0; l < 60; ++l)
    for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      pattern += (pattern.empty() ? "" : "|") + std::string("model\\.language_model\\.layers\\.") + std::to_string(l) +
                 "\\." + p;
  ASSERT_GT(pattern.size(), 20000u);
  const std::regex re = compile_regex(pattern, std::regex::ECMAScript, "target_modules");
  EXPECT_TRUE(std::regex_match(std::string("model.language_model.layers.59.mlp.down_proj"), re));
  EXPECT_FALSE(std::regex_match(std::string("model.language_model.layers.60.mlp.down_proj"), re));
}

}  // namespace
}  // namespace g4

// The generation options every caller of gen::generate gets checked: out-of-range sampling
// values and a request longer than the model's context are errors naming the option.
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "generate/generator.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/hf_fixtures.h"

namespace g4 {
namespace {

using test::error_of;

TEST(GenerateOptions, OutOfRangeSamplingValuesNameTheOption) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double t : {nan, inf, -0.5}) {
    gen::SamplingParams s;
    s.temperature = t;
    EXPECT_NE(error_of([&] { gen::validate(s); }).find("temperature must be a finite number >= 0"),
              std::string::npos)
        << t;
    EXPECT_NE(error_of([&] { gen::validate(s, gen::OptionStyle::Flag); }).find("--temperature"), std::string::npos);
  }
  gen::SamplingParams s;
  s.top_k = -3;
  EXPECT_NE(error_of([&] { gen::validate(s); }).find("top_k must be >= 0"), std::string::npos);
  EXPECT_NE(error_of([&] { gen::validate(s, gen::OptionStyle::Flag); }).find("--top-k"), std::string::npos);
  for (double p : {0.0, -1.0, 1.5, nan}) {
    gen::SamplingParams q;
    q.top_p = p;
    EXPECT_NE(error_of([&] { gen::validate(q); }).find("top_p must be in (0, 1]"), std::string::npos) << p;
  }
  gen::SamplingParams fine;
  fine.temperature = 0;  // argmax
  fine.top_k = 0;
  fine.top_p = 1;
  EXPECT_EQ(error_of([&] { gen::validate(fine); }), "");
}

TEST(GenerateOptions, TheContextLengthBoundsPromptPlusNewTokens) {
  gen::GenerateOptions o;
  o.max_new_tokens = -1;
  EXPECT_NE(error_of([&] { gen::validate(o, 3, 16); }).find("max_new_tokens must be >= 0, got -1"),
            std::string::npos);
  o.max_new_tokens = 13;
  EXPECT_EQ(error_of([&] { gen::validate(o, 3, 16); }), "");
  EXPECT_EQ(error_of([&] { gen::validate(o, 3, 0); }), "");  // context length not known
  o.max_new_tokens = 14;
  const std::string e = error_of([&] { gen::validate(o, 3, 16); });
  EXPECT_NE(e.find("max_new_tokens 14 with a prompt of 3 tokens exceeds the model's context length "
                   "(max_position_embeddings 16): at most 13 new tokens fit"),
            std::string::npos)
      << e;
}

TEST(GenerateOptions, GenerateRefusesARunPastTheContext) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  const int64_t context = model->config().max_position_embeddings;
  ASSERT_GT(context, 0);
  gen::GenerateOptions o;
  o.max_new_tokens = 1000000000;
  std::string e = error_of([&] { gen::generate(*model, {{5, 6, 7}}, o); });
  EXPECT_NE(e.find("max_new_tokens 1000000000"), std::string::npos) << e;
  EXPECT_NE(e.find("max_position_embeddings " + std::to_string(context)), std::string::npos) << e;
  o.max_new_tokens = 2;
  o.sampling.temperature = std::numeric_limits<double>::quiet_NaN();
  e = error_of([&] { gen::generate(*model, {{5, 6, 7}}, o); });
  EXPECT_NE(e.find("temperature"), std::string::npos) << e;
}

}  // namespace
}  // namespace g4

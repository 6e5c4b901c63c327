// The engine's greedy generation against Hugging Face transformers' (generate_reference.json of
// each fixture, made by tools/make_generate_reference.py with transformers 5.17 in fp32): prompts
// of 1 to 22 tokens, each generated alone by transformers, all in one continuous batch here, with
// pages of 4 tokens (prompts and generations cross page boundaries and the sliding windows).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "generate/engine.h"
#include "model/state_dict_adapter.h"
#include "support/hf_fixtures.h"

namespace g4 {
namespace {

class HfGenerate : public ::testing::TestWithParam<std::string> {};

TEST_P(HfGenerate, ABatchOfPromptsOfDifferentLengthsMatchesTransformers) {
  const std::string dir = test::hf_fixture_dir(GetParam());
  const nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "/generate_reference.json"));
  auto model = model::load_hf_model(dir);
  gen::EngineOptions eo;
  eo.page_size = 4;
  gen::Engine engine(*model, eo);
  std::vector<gen::Request> requests;
  for (const auto& c : ref["cases"]) {
    gen::Request r;
    r.prompt = c["prompt"].get<std::vector<int64_t>>();
    r.options.max_tokens = ref["new_tokens"].get<int64_t>();
    r.options.sampling.temperature = 0;
    r.options.ignore_eos = true;
    r.options.logprobs = 0;
    requests.push_back(std::move(r));
  }
  const std::vector<gen::Completion> out = engine.generate(std::move(requests));
  ASSERT_EQ(out.size(), ref["cases"].size());
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const auto& c = ref["cases"][i];
    const auto want = c["output"].get<std::vector<int64_t>>();
    const auto want_lp = c["logprobs"].get<std::vector<double>>();
    std::vector<int64_t> got;
    for (const gen::GeneratedToken& t : out[i].tokens) got.push_back(t.id);
    EXPECT_EQ(got, want) << "prompt " << i << " of " << want.size() << " tokens";
    EXPECT_EQ(out[i].finish, gen::FinishReason::kLength);
    for (size_t k = 0; k < std::min(got.size(), want_lp.size()); ++k)
      worst = std::max(worst, std::abs(out[i].tokens[k].logprob - want_lp[k]));
  }
  EXPECT_LT(worst, 1e-4) << "max |log-prob - transformers'|";
  const gen::PoolStats s = engine.stats();
  EXPECT_EQ(s.full_free, s.full_pages) << "every page is back in the pool";
  EXPECT_EQ(s.sliding_free, s.sliding_pages);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfGenerate,
                         ::testing::Values("tiny-dense-keqv", "tiny-dense-ple", "tiny-moe", "var-moe-top1",
                                           "var-moe-untied", "var-ple-shared"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace g4

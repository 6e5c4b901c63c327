// DiffusionGemmaGenerationConfig as transformers 5.17 reads, merges and validates it.
#include "diffusion/generation_config.h"

#include <gtest/gtest.h>

#include <string>

#include "io/json_input.h"
#include "support/error_message.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

using diffusion::GenerationConfig;
using nlohmann::json;
using test::error_of;

GenerationConfig resolve(const json& file, const json& overrides, int64_t prompt = 5) {
  return diffusion::resolve_generation_config(file, "generation_config.json", overrides, "options", prompt);
}

TEST(GenerationConfig, ReadsTheFixturesFile) {
  const std::string path = test::data_dir() + "/hf-diffusion-gemma/tiny-dg-a/generation_config.json";
  const GenerationConfig c =
      diffusion::parse_generation_config(io::read_json_file(path, "generation config", 1 << 20), path);
  // The global defaults, plus the special tokens, less max_new_tokens (unset: the default applies later).
  GenerationConfig want = diffusion::default_generation_config();
  want.max_new_tokens.reset();
  want.eos_token_id = std::vector<int64_t>{1};
  want.pad_token_id = 0;
  want.bos_token_id = 2;
  EXPECT_EQ(c, want);
}

TEST(GenerationConfig, GlobalDefaultsFillWhatTheFileLeavesUnset) {
  const GenerationConfig c = resolve(nullptr, nullptr);
  EXPECT_EQ(c, diffusion::default_generation_config());
  // transformers' _get_default_generation_params().
  const json defaults = json::parse(R"({"max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8,
      "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
      "stability_threshold": 1, "confidence_threshold": 0.005})");
  EXPECT_EQ(c, diffusion::parse_generation_config(defaults, "transformers' defaults"));
  EXPECT_TRUE(c.adaptive_stopping());
  // eos and pad have no global default (a checkpoint without them never stops on EOS).
  EXPECT_FALSE(c.eos_token_id.has_value());
  EXPECT_FALSE(c.pad_token_id.has_value());
  // A null in the file is unset too: the default applies.
  EXPECT_EQ(resolve({{"t_max", nullptr}, {"stability_threshold", nullptr}}, nullptr).stability_threshold, 1);
}

TEST(GenerationConfig, OptionsOverrideTheFileWhichOverridesTheDefaults) {
  const json file = {
      {"max_denoising_steps", 20}, {"t_min", 0.1}, {"eos_token_id", json::array({1, 106})}, {"pad_token_id", 0}};
  const GenerationConfig from_file = resolve(file, nullptr);
  EXPECT_EQ(from_file.max_denoising_steps, 20);
  EXPECT_EQ(from_file.t_min, 0.1);
  EXPECT_EQ(from_file.t_max, 0.8);
  EXPECT_EQ(from_file.eos_token_id, (std::vector<int64_t>{1, 106}));

  const GenerationConfig c = resolve(file, {{"max_denoising_steps", 7}, {"eos_token_id", 3}});
  EXPECT_EQ(c.max_denoising_steps, 7);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{3});
  EXPECT_EQ(c.t_min, 0.1);
  // An explicit null (None) disables: no adaptive stopping, no EOS, no temperature.
  const GenerationConfig off =
      resolve(file, {{"stability_threshold", nullptr}, {"eos_token_id", nullptr}, {"t_min", nullptr}});
  EXPECT_FALSE(off.stability_threshold.has_value());
  EXPECT_FALSE(off.adaptive_stopping());
  EXPECT_FALSE(off.eos_token_id.has_value());
  EXPECT_FALSE(off.t_min.has_value());
  EXPECT_EQ(off.t_max, 0.8);
}

TEST(GenerationConfig, MaxLengthSetsMaxNewTokensOnlyWhenItIsStillTheDefault) {
  const GenerationConfig c = resolve(nullptr, {{"max_length", 40}}, 12);
  EXPECT_EQ(c.max_length, 40);
  EXPECT_EQ(c.max_new_tokens, 28);
  const GenerationConfig explicit_new = resolve(nullptr, {{"max_length", 40}, {"max_new_tokens", 9}}, 12);
  EXPECT_EQ(explicit_new.max_new_tokens, 9);
  EXPECT_NE(error_of([] { resolve(nullptr, {{"max_length", 10}}, 12); }).find("leaves no room"), std::string::npos);
}

TEST(GenerationConfig, CommandLineValues) {
  using diffusion::generation_option;
  EXPECT_EQ(generation_option("stability_threshold", "none", "--stability-threshold"),
            (std::pair<std::string, json>{"stability_threshold", nullptr}));
  EXPECT_EQ(generation_option("max_denoising_steps", "12", "--max-denoising-steps").second, 12);
  EXPECT_TRUE(generation_option("confidence_threshold", "1", "--confidence-threshold").second.is_number_float());
  EXPECT_EQ(generation_option("eos_token_id", "1,106,50", "--eos-token-id").second, json::array({1, 106, 50}));
  EXPECT_EQ(generation_option("eos_token_id", "1", "--eos-token-id").second, 1);
  const auto [key, sampler] = generation_option("entropy_bound", "0.25", "--entropy-bound");
  EXPECT_EQ(key, "sampler_config");
  EXPECT_EQ(resolve(nullptr, {{key, sampler}}).entropy_bound, 0.25);
  EXPECT_NE(
      error_of([] { generation_option("t_min", "warm", "--t-min"); }).find("--t-min: 'warm' is not a finite number"),
      std::string::npos);
  EXPECT_NE(error_of([] { generation_option("pad_token_id", "1.5", "--pad-token-id"); }).find("--pad-token-id"),
            std::string::npos);
}

TEST(GenerationConfig, BadValuesNameTheSourceAndTheKey) {
  auto file_error = [](const json& j) {
    return error_of([&] { diffusion::parse_generation_config(j, "/m/generation_config.json"); });
  };
  auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos
               ? ::testing::AssertionSuccess()
               : ::testing::AssertionFailure() << "'" << msg << "' lacks '" << part << "'";
  };
  // Unknown keys are refused, as the class's constructor does; what transformers writes itself is not.
  EXPECT_TRUE(has(file_error({{"top_k", 5}}), "/m/generation_config.json: unknown key 'top_k'"));
  EXPECT_EQ(file_error({{"transformers_version", "5.17.0"},
                        {"_from_model_config", true},
                        {"return_dict_in_generate", true},
                        {"cache_implementation", "dynamic"}}),
            "");
  EXPECT_TRUE(has(file_error({{"max_denoising_steps", 0}}), "'max_denoising_steps' must be a positive integer"));
  EXPECT_TRUE(has(file_error({{"max_denoising_steps", 4.5}}), "'max_denoising_steps' must be an integer"));
  EXPECT_TRUE(has(file_error({{"t_min", -0.1}}), "'t_min' must be >= 0"));
  EXPECT_TRUE(has(file_error({{"t_min", 0.5}, {"t_max", 0.5}}), "'t_max' (0.5) must be above 't_min' (0.5)"));
  EXPECT_TRUE(has(file_error({{"stability_threshold", -1}}), "'stability_threshold' must be an integer >= 0"));
  EXPECT_TRUE(has(file_error({{"confidence_threshold", 1}}), "'confidence_threshold' must be a float (write 1.0"));
  EXPECT_TRUE(has(file_error({{"confidence_threshold", -0.5}}), "'confidence_threshold' must be > 0"));
  EXPECT_TRUE(has(file_error({{"eos_token_id", "x"}}), "'eos_token_id' must be a token id"));
  EXPECT_TRUE(has(file_error({{"cache_implementation", "paged"}}), "'cache_implementation' 'paged' is not one of"));
  EXPECT_TRUE(has(file_error({{"sampler_config", {{"_cls_name", "TopKSamplerConfig"}, {"entropy_bound", 0.1}}}}),
                  "'_cls_name' must be \"EntropyBoundSamplerConfig\""));
  EXPECT_TRUE(has(file_error({{"sampler_config", {{"_cls_name", "EntropyBoundSamplerConfig"}, {"entropy_bound", 1}}}}),
                  "'entropy_bound' must be a float"));
  EXPECT_TRUE(has(file_error({{"sampler_config", {{"_cls_name", "EntropyBoundSamplerConfig"}, {"bound", 0.1}}}}),
                  "unknown key 'bound'"));
  EXPECT_TRUE(has(file_error(json::array({1})), "must be a JSON object"));
  // Merged values are checked together, naming both sources.
  EXPECT_TRUE(has(error_of([] {
                    resolve({{"t_min", 0.6}}, {{"t_max", 0.5}});
                  }),
                  "generation_config.json with options: 't_max' (0.5) must be above 't_min' (0.6)"));
  EXPECT_TRUE(has(error_of([] {
                    resolve(nullptr, {{"max_denoising_steps", nullptr}});
                  }),
                  "'max_denoising_steps' cannot be none"));
  EXPECT_TRUE(has(error_of([] { resolve(nullptr, {{"sampler_config", nullptr}}); }), "entropy_bound cannot be none"));
}

}  // namespace
}  // namespace g4

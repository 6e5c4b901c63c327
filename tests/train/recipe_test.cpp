// Recipes: defaults, overrides, and errors that name the key.
#include <gtest/gtest.h>

#include "core/device_memory.h"
#include "support/error_message.h"
#include "train/lr_schedule.h"
#include "train/recipe.h"

namespace g4 {
namespace {

nlohmann::json minimal() {
  return {{"model", {{"name", "tiny-moe"}}}, {"tokenizer", "tok"}, {"data", {{"train", {"a.txt"}}}}};
}

TEST(Recipe, DefaultsAndValues) {
  auto j = minimal();
  j["train"] = {{"steps", 7}, {"freeze", {"*router*"}}};
  const train::Recipe r = train::recipe_from_json(j, "test.yaml");
  EXPECT_EQ(r.steps, 7);
  EXPECT_EQ(r.batch_size, 8);
  EXPECT_EQ(r.freeze, std::vector<std::string>{"*router*"});
  EXPECT_EQ(r.data.files, std::vector<std::string>{"a.txt"});
  EXPECT_EQ(r.expert_parallel, 1);
  j["parallel"] = {{"expert_parallel", 2}};
  EXPECT_EQ(train::recipe_from_json(j, "test.yaml").expert_parallel, 2);
  EXPECT_EQ(r.context_parallel, 1);
  j["parallel"] = {{"context_parallel", 4}};
  EXPECT_EQ(train::recipe_from_json(j, "test.yaml").context_parallel, 4);
}

TEST(Recipe, ErrorsNameTheKey) {
  auto expect_error = [](nlohmann::json j, const std::string& needle) {
    try {
      train::recipe_from_json(j, "test.yaml");
      FAIL() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("test.yaml"), std::string::npos) << e.what();
    }
  };
  auto j = minimal();
  j["optimizer"] = {{"learning_rate", 1}};
  expect_error(j, "optimizer.learning_rate");
  j = minimal();
  j["train"] = {{"steps", "many"}};
  expect_error(j, "train.steps");
  j = minimal();
  j["train"] = {{"steps", -1}};
  expect_error(j, "train.steps");
  j = minimal();
  j["schedule"] = {{"kind", "exponential"}};
  expect_error(j, "schedule.kind");
  j = minimal();
  j["model"]["path"] = "x";
  expect_error(j, "model.name");
  j = minimal();
  j["parallel"] = {{"expert_parallel", 0}};
  expect_error(j, "parallel.expert_parallel");
  j["parallel"] = {{"context_parallel", 0}};
  expect_error(j, "parallel.context_parallel");
}

TEST(Recipe, Device) {
  auto j = minimal();
  train::Recipe r = train::recipe_from_json(j, "test.yaml");
  EXPECT_EQ(r.device, Device::CPU);  // the default
  EXPECT_EQ(r.resolved["train"]["device"], "cpu");
  j["train"] = {{"device", "cpu"}};
  EXPECT_EQ(train::recipe_from_json(j, "test.yaml").device, Device::CPU);

  // Every error names the file and the key.
  auto error = [](const nlohmann::json& train_keys, const nlohmann::json& parallel_keys = nullptr) {
    auto rj = minimal();
    rj["train"] = train_keys;
    if (!parallel_keys.is_null()) rj["parallel"] = parallel_keys;
    const std::string e = test::error_of([&] { train::recipe_from_json(rj, "test.yaml"); });
    EXPECT_NE(e.find("test.yaml"), std::string::npos) << e;
    return e;
  };
  std::string e = error({{"device", "gpu"}});
  EXPECT_NE(e.find("'train.device' must be cpu or cuda, got 'gpu'"), std::string::npos) << e;
  e = error({{"device", 1}});
  EXPECT_NE(e.find("'train.device' has the wrong type"), std::string::npos) << e;
  // One GPU only: each multi-rank key is refused by name, with or without a GPU on this machine.
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"fsdp", true}, {"data_parallel", 2}, {"expert_parallel", 2}, {"context_parallel", 2}}) {
    e = error({{"device", "cuda"}}, {{key, value}});
    EXPECT_NE(e.find("'parallel." + key + "' is for multi-rank training"), std::string::npos) << e;
    EXPECT_NE(e.find("multi-GPU training is not supported yet"), std::string::npos) << e;
  }

  j["train"] = {{"device", "cuda"}};
  if (cuda_available()) {
    EXPECT_EQ(train::recipe_from_json(j, "test.yaml").device, Device::CUDA);
  } else {
    e = error({{"device", "cuda"}});
    EXPECT_NE(e.find("'train.device' is cuda, but"), std::string::npos) << e;
    EXPECT_TRUE(e.find("no CUDA GPU is visible") != std::string::npos ||
                e.find("built without the CUDA backend") != std::string::npos)
        << e;
  }
}

TEST(Recipe, Wildcards) {
  EXPECT_TRUE(train::wildcard_match("*router*", "model.layers.3.router.proj.weight"));
  EXPECT_TRUE(train::wildcard_match("model.layers.?.mlp.*", "model.layers.3.mlp.up_proj.weight"));
  EXPECT_FALSE(train::wildcard_match("model.layers.?.mlp.*", "model.layers.13.mlp.up_proj.weight"));
}

TEST(LrSchedule, WarmupThenCosineToTheFloor) {
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 0, 100, 10, 0.1), 0.0);
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 5, 100, 10, 0.1), 0.5);
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 10, 100, 10, 0.1), 1.0);
  EXPECT_NEAR(train::learning_rate("cosine", 1.0, 100, 100, 10, 0.1), 0.1, 1e-12);
  EXPECT_NEAR(train::learning_rate("linear", 1.0, 55, 100, 10, 0.0), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(train::learning_rate("constant", 2.0, 50, 100, 10, 0.0), 2.0);
}

}  // namespace
}  // namespace g4

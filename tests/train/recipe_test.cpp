// Recipes: defaults, overrides, and errors that name the key.
#include "train/recipe.h"

#include <cmath>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <iterator>

#include <sstream>

#include <filesystem>
#include <fstream>

#include "core/device_memory.h"
#include "support/error_message.h"
#include "train/lr_schedule.h"
#include "train/trainer.h"
#include "support/test_paths.h"

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
  // Data, sharded, expert and context parallelism are not refused on GPUs: without a GPU the only
  // complaint is the GPU.
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"data_parallel", 2}, {"fsdp", true}, {"expert_parallel", 2}, {"context_parallel", 2}}) {
    if (!cuda_available()) {
      e = error({{"device", "cuda"}}, {{key, value}});
      EXPECT_NE(e.find("'train.device' is cuda, but"), std::string::npos) << e;
      EXPECT_EQ(e.find("parallel." + key), std::string::npos) << e;
    } else {
      nlohmann::json on_gpu = j;
      on_gpu["train"] = {{"device", "cuda"}};
      on_gpu["parallel"] = {{key, value}};
      EXPECT_EQ(train::recipe_from_json(on_gpu, "test.yaml").device, Device::CUDA) << key;
    }
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

// A value of `k`'s type and constraint that differs from its default.
nlohmann::json non_default(const train::RecipeKey& k) {
  const nlohmann::json d = k.default_value();
  if (!k.choices.empty()) {
    for (const std::string& c : k.choices)
      if (c != d) return c;
  }
  switch (k.type) {
    case train::KeyType::Int:
      return d.get<int64_t>() + 3;
    case train::KeyType::UInt:
      return d.get<uint64_t>() + 3;
    case train::KeyType::Float: {
      const double v = d.get<double>() + 0.25;
      return k.range.contains(v) ? v : d.get<double>() / 2;
    }
    case train::KeyType::Bool:
      return !d.get<bool>();
    case train::KeyType::String:
      return d.get<std::string>() + "x_value";
    case train::KeyType::StringList:
      return {"first*", "second?"};
    case train::KeyType::FloatPair:
      return {0.5, 0.25};
    case train::KeyType::Mapping:
      return {{"num_hidden_layers", 2}};
  }
  return nullptr;
}

// Every schema key, set through a command-line override to a value other than its default, reads
// back from the Recipe field it fills (and lands in `resolved`).
TEST(Recipe, EveryKeyRoundTripsThroughAnOverride) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "g4_recipe_roundtrip";
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "r.yaml").string();
  std::ofstream(file) << "model: {name: tiny-moe}\ntokenizer: tok\ndata: {train: [a.txt]}\n";
  ASSERT_GE(train::recipe_schema().size(), 40u);
  for (const train::RecipeKey& k : train::recipe_schema()) {
    SCOPED_TRACE(k.path);
    nlohmann::json value = non_default(k);
    // Without a GPU a cuda device is refused (Recipe.Device covers that): set cpu explicitly.
    if (k.path == "train.device" && !cuda_available()) value = "cpu";
    if (k.path != "train.device") {
      EXPECT_NE(value, k.default_value());
    }
    std::vector<std::string> overrides = {k.path + "=" + value.dump()};
    if (k.path == "model.path") overrides.push_back("model.name=''");  // the two exclude each other
    const train::Recipe r = train::load_recipe(file, overrides);
    EXPECT_EQ(k.get(r), value);
    const nlohmann::json* node = &r.resolved;
    for (size_t start = 0, dot = 0; dot != std::string::npos; start = dot + 1) {
      dot = k.path.find('.', start);
      node = &(*node)[k.path.substr(start, dot - start)];
    }
    EXPECT_EQ(*node, value);
  }
  std::filesystem::remove_all(dir);
}

TEST(Recipe, ListingNamesEveryKeyWithTypeAndDefault) {
  const std::string listing = train::recipe_key_listing();
  for (const train::RecipeKey& k : train::recipe_schema()) {
    const size_t at = listing.find("\n" + k.path + " ");
    ASSERT_NE(at, std::string::npos) << k.path;
    const std::string line = listing.substr(at + 1, listing.find('\n', at + 1) - at - 1);
    EXPECT_NE(line.find(k.type_text()), std::string::npos) << line;
    EXPECT_NE(line.find(k.default_value().dump()), std::string::npos) << line;
    EXPECT_NE(line.find(k.doc), std::string::npos) << line;
  }
  EXPECT_NE(listing.find("schedule.kind  "), std::string::npos);
  EXPECT_NE(listing.find("cosine|linear|constant"), std::string::npos);
  EXPECT_NE(listing.find("float in [0, 1)"), std::string::npos);  // data.validation_fraction
}

// Values that would train silently wrong (a negative learning-rate floor, negative epsilon, weight
// decay, clipping or intervals) are refused by name.
TEST(Recipe, ValuesThatWouldTrainWronglyAreRefused) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"schedule.min_lr_ratio=-5", "'schedule.min_lr_ratio' must be in [0, 1]"},
      {"schedule.min_lr_ratio=1.5", "'schedule.min_lr_ratio' must be in [0, 1]"},
      {"optimizer.eps=-1e-8", "'optimizer.eps' must be > 0"},
      {"optimizer.weight_decay=-0.1", "'optimizer.weight_decay' must be >= 0"},
      {"optimizer.grad_clip=-1", "'optimizer.grad_clip' must be >= 0"},
      {"schedule.warmup_steps=-2", "'schedule.warmup_steps' must be >= 0"},
      {"checkpoint.every=-1", "'checkpoint.every' must be >= 0"},
      {"log.validation_every=-4", "'log.validation_every' must be >= 0"},
      // Was accepted and kept every checkpoint, as 0 does (probe_train.py).
      {"checkpoint.keep=-1", "'checkpoint.keep' must be >= 0"},
  };
  const std::string path = test::source_dir() + "/recipes/tiny-moe-kjv.yaml";
  for (const auto& [override_, want] : bad) {
    const std::string e = test::error_of([&] { train::load_recipe(path, {override_}); });
    EXPECT_NE(e.find(want), std::string::npos) << override_ << ": " << e;
  }
}

// Probed (session 39): LoRA keys without lora.rank, lora.targets entries beside a regex and a warmup longer
// than the run changed nothing and said nothing.
TEST(Recipe, SettingsThatWouldGoUnusedAreFlagged) {
  const std::string path = test::source_dir() + "/recipes/tiny-moe-kjv.yaml";
  const auto notes_of = [&](const std::vector<std::string>& overrides) {
    testing::internal::CaptureStderr();
    train::load_recipe(path, overrides);
    return testing::internal::GetCapturedStderr();
  };
  std::string notes = notes_of({"lora.alpha=32", "lora.targets=[q_proj]"});
  EXPECT_NE(notes.find("sets lora.alpha, lora.targets but lora.rank is 0: LoRA is off"), std::string::npos) << notes;
  EXPECT_EQ(notes_of({"lora.rank=4", "lora.alpha=32"}).find("lora.rank is 0"), std::string::npos);
  EXPECT_EQ(notes_of({}).find("warning"), std::string::npos);
  notes = notes_of({"schedule.warmup_steps=50", "train.steps=50"});
  EXPECT_NE(notes.find("'schedule.warmup_steps' (50) is not below 'train.steps' (50)"), std::string::npos) << notes;

  const std::string e = test::error_of([&] {
    train::load_recipe(path, {"lora.rank=4", "lora.target_regex=.*q_proj", "lora.targets=[experts.down_proj, v_proj]"});
  });
  EXPECT_NE(e.find("'lora.targets' entry 'v_proj' is unused beside 'lora.target_regex'"), std::string::npos) << e;
  EXPECT_NO_THROW(
      train::load_recipe(path, {"lora.rank=4", "lora.target_regex=.*q_proj", "lora.targets=[experts.down_proj]"}));
}

// docs/recipes.md carries a copy of the listing: it must stay the listing.
TEST(Recipe, TheDocsListEveryKeyAsTheListingDoes) {
  std::ifstream f(test::source_dir() + "/docs/recipes.md");
  ASSERT_TRUE(f.good());
  const std::string docs((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream listing(train::recipe_key_listing());
  for (std::string line; std::getline(listing, line);)
    EXPECT_NE(docs.find(line), std::string::npos) << "docs/recipes.md lacks: " << line;
}

TEST(Recipe, TypeAndRangeErrorsNameKeyAndFile) {
  auto error = [](const std::string& section, const nlohmann::json& keys) {
    auto j = minimal();
    j[section] = keys;
    const std::string e = test::error_of([&] { train::recipe_from_json(j, "bad.yaml"); });
    EXPECT_NE(e.find("bad.yaml"), std::string::npos) << e;
    return e;
  };
  std::string e = error("optimizer", {{"lr", "fast"}});
  EXPECT_NE(e.find("recipe key 'optimizer.lr' has the wrong type (value \"fast\"; expected float)"), std::string::npos)
      << e;
  e = error("optimizer", {{"lr", 0}});
  EXPECT_NE(e.find("recipe key 'optimizer.lr' must be > 0, got 0"), std::string::npos) << e;
  // NaN (from a key=value override "nan") is named as such, not as JSON's null.
  e = error("optimizer", {{"lr", std::nan("")}});
  EXPECT_NE(e.find("recipe key 'optimizer.lr' must be > 0, got nan"), std::string::npos) << e;
  e = error("optimizer", {{"betas", {0.9}}});
  EXPECT_NE(e.find("'optimizer.betas' has the wrong type"), std::string::npos) << e;
  e = error("optimizer", {{"betas", {0.9, 1.0}}});
  EXPECT_NE(e.find("'optimizer.betas' must be in [0, 1), got 1.0"), std::string::npos) << e;
  e = error("train", {{"freeze", {"*router*", 3}}});
  EXPECT_NE(e.find("'train.freeze' has the wrong type"), std::string::npos) << e;
  e = error("train", {{"recompute", "yes"}});
  EXPECT_NE(e.find("'train.recompute' has the wrong type"), std::string::npos) << e;
  e = error("data", {{"train", {"a.txt"}}, {"validation_fraction", 1.0}});
  EXPECT_NE(e.find("'data.validation_fraction' must be in [0, 1)"), std::string::npos) << e;
  e = error("data", {{"train", {"a.txt"}}, {"format", "csv"}});
  EXPECT_NE(e.find("'data.format' must be auto, text, jsonl or chat, got 'csv'"), std::string::npos) << e;
  e = error("data", {{"train", {"a.txt"}}, {"seed", -1}});
  EXPECT_NE(e.find("'data.seed' has the wrong type"), std::string::npos) << e;
  e = error("parallel", {{"data_parallel", -1}});
  EXPECT_NE(e.find("'parallel.data_parallel' must be >= 0, got -1"), std::string::npos) << e;
  e = error("parallel", {{"fsdp", true}, {"data_parallel", 1}});
  EXPECT_NE(e.find("'parallel.fsdp' shards over the data-parallel ranks"), std::string::npos) << e;
  e = error("log", {{"every", 0}});
  EXPECT_NE(e.find("'log.every' must be > 0"), std::string::npos) << e;
  // Unknown keys, at the top level and in a section, and sections that are not mappings.
  e = error("checkpoints", {{"dir", "x"}});
  EXPECT_NE(e.find("unknown recipe key 'checkpoints'"), std::string::npos) << e;
  e = error("log", {{"sample_prompt", "a"}, {"sample_temperature", 0.5}});
  EXPECT_NE(e.find("unknown recipe key 'log.sample_temperature'"), std::string::npos) << e;
  e = error("schedule", 3);
  EXPECT_NE(e.find("'schedule' must be a mapping"), std::string::npos) << e;
  e = error("data", {{"train", nlohmann::json::array()}});
  EXPECT_NE(e.find("'data.train' names no file"), std::string::npos) << e;
}

TEST(Recipe, SingleStringsAndFreeFormConfig) {
  auto j = minimal();
  j["data"]["train"] = "one.txt";
  j["train"] = {{"freeze", "*router*"}};
  j["model"]["config"] = {{"num_hidden_layers", 2}, {"hidden_size", 64}};
  const train::Recipe r = train::recipe_from_json(j, "test.yaml");
  EXPECT_EQ(r.data.files, std::vector<std::string>{"one.txt"});
  EXPECT_EQ(r.freeze, std::vector<std::string>{"*router*"});
  EXPECT_EQ(r.resolved["data"]["train"], nlohmann::json::array({"one.txt"}));
  EXPECT_EQ(r.model_overrides["num_hidden_layers"], 2);
  EXPECT_EQ(r.resolved["model"]["config"]["hidden_size"], 64);
  EXPECT_EQ(r.tokenizer, "tok");
  EXPECT_EQ(train::model_config(r).hidden_size, 64);
  // Probed (session 39): a key the config parser never reads (a misspelling) changed nothing, silently.
  j["model"]["config"] = {{"num_hiden_layers", 2}};
  const std::string e = test::error_of([&] { train::model_config(train::recipe_from_json(j, "test.yaml")); });
  EXPECT_NE(e.find("test.yaml: 'model.config' key 'num_hiden_layers' is not a Gemma 4 text config key g4 reads"),
            std::string::npos) << e;
  j["model"]["config"] = {{"initializer_range", 0.01}, {"sliding_window", 32}, {"final_logit_softcapping", 20.0}};
  EXPECT_EQ(train::model_config(train::recipe_from_json(j, "test.yaml")).sliding_window, 32);
  // The tokenizer defaults to the checkpoint directory; `resolved` keeps what the recipe said.
  j = minimal();
  j.erase("tokenizer");
  j["model"] = {{"path", "ckpt/dir"}};
  const train::Recipe hf = train::recipe_from_json(j, "test.yaml");
  EXPECT_EQ(hf.tokenizer, "ckpt/dir");
  EXPECT_EQ(hf.resolved["tokenizer"], "");
}

// Every recipe shipped in recipes/ stays valid.
TEST(Recipe, ShippedRecipesLoad) {
  const std::filesystem::path recipes = std::filesystem::path(test::source_dir()) / "recipes";
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(recipes)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    // A cuda recipe is refused on a machine without a GPU; the rest of it must still parse.
    const std::vector<std::string> overrides =
        cuda_available() ? std::vector<std::string>{} : std::vector<std::string>{"train.device=cpu"};
    const train::Recipe r = train::load_recipe(entry.path().string(), overrides);
    EXPECT_FALSE(r.data.files.empty());
    EXPECT_FALSE(r.tokenizer.empty());
    ++loaded;
  }
  EXPECT_GE(loaded, 4);
}

TEST(Recipe, Wildcards) {
  EXPECT_TRUE(train::wildcard_match("*router*", "model.layers.3.router.proj.weight"));
  EXPECT_TRUE(train::wildcard_match("model.layers.?.mlp.*", "model.layers.3.mlp.up_proj.weight"));
  EXPECT_FALSE(train::wildcard_match("model.layers.?.mlp.*", "model.layers.13.mlp.up_proj.weight"));
}

// Hostile recipes (issue 19, found by fuzz/recipe_yaml.cpp): each is a g4::Error naming the recipe
// and what is wrong, never a crash, an exhausted memory or yaml-cpp's / nlohmann's own text.
TEST(Recipe, HostileYamlIsAClearError) {
  const auto expect_error = [](const std::string& yaml, const std::string& want,
                               const std::vector<std::string>& overrides = {}) {
    SCOPED_TRACE(yaml.substr(0, 80));
    const std::string e = test::error_of([&] { train::recipe_from_yaml(yaml, "r.yaml", overrides); });
    EXPECT_NE(e.find(want), std::string::npos) << e;
    EXPECT_EQ(e.find("yaml-cpp"), std::string::npos) << e;
    EXPECT_EQ(e.find("json.exception"), std::string::npos) << e;
  };
  // Nine levels of nine aliases: 9^10 values once expanded, from 500 bytes.
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b', prev = 'a'; c <= 'j'; prev = c++) {
    bomb += std::string(1, c) + ": &" + c + " [";
    for (int i = 0; i < 9; ++i) bomb += std::string(i ? ", *" : "*") + prev;
    bomb += "]\n";
  }
  expect_error(bomb, "recipe r.yaml expands to more than 100000 YAML values");
  // Deeper than 128 fails in the conversion, deeper than yaml-cpp's own guard (~450) in its parser.
  for (size_t depth : {200, 5000}) {
    expect_error("model: " + std::string(depth, '[') + "1" + std::string(depth, ']') + "\n",
                 "recipe r.yaml nests YAML mappings/sequences deeper than the limit of 128 levels (line 1, column ");
  }
  expect_error("model: {name: [unclosed\n", "recipe r.yaml is not valid YAML (line ");
  expect_error("? [a, b]\n: 1\n", "r.yaml: line 1, column 3: a mapping key must be a plain name");
  // A top level that is not a mapping, with an override to apply over it.
  expect_error("5\n", "r.yaml: '(top level)' must be a mapping", {"train.steps=3"});
  expect_error("model: {name: tiny-moe}\n", "override 'train.steps=[' is not valid YAML", {"train.steps=["});
  // Bytes that are not UTF-8 used to reach nlohmann, whose dump() then threw type_error.316.
  expect_error("data: {train: \"a\xff.txt\"}\n", "recipe r.yaml: line 1, column 15: the value is not valid UTF-8");
  expect_error("model: {name: tiny-moe}\n", "the value is not valid UTF-8", {"optimizer.betas=[0\xcc\xc3, 1]"});
  // A key twice: yaml-cpp kept both and the later one won, so a second `train:` reset the first's keys.
  expect_error("train: {steps: 4}\nmodel: {name: tiny-moe}\ntrain: {steps: 3}\n",
               "r.yaml: line 3, column 1: the key 'train' appears twice in one mapping");
  expect_error("train:\n  steps: 4\n  steps: 1\n", "line 3, column 3: the key 'steps' appears twice");
  expect_error("model: {name: tiny-moe}\n", "the key 'steps' appears twice", {"train={steps: 1, steps: 2}"});
  // Only the first of several documents was read.
  expect_error("model: {name: tiny-moe}\n---\ntrain: {steps: 1}\n",
               "recipe r.yaml holds more than one YAML document (another starts at line 2)");
  expect_error("--- {model: {name: tiny-moe}}\n...\n# done\ntrain: {steps: 1}\n", "another starts at line 4");
  // "inf" and "nan" are text in YAML (stod read them as numbers: eps = inf trained nothing).
  for (const char* v : {"inf", "-infinity", "nan", ".inf"})
    expect_error("model: {name: tiny-moe}\n", "'optimizer.eps' has the wrong type", {std::string("optimizer.eps=") + v});
  // The wrong type with a huge value: the message shows the start of it.
  const std::string e = test::error_of([] {
    train::recipe_from_yaml("train: {steps: [" + std::string(10000, '1') + "]}\n", "r.yaml");
  });
  EXPECT_NE(e.find("'train.steps' has the wrong type (value [\"111"), std::string::npos) << e;
  EXPECT_LT(e.size(), 400u) << e;
}

TEST(Recipe, AFifoIsNotARecipe) {
  const std::filesystem::path fifo = std::filesystem::temp_directory_path() / "g4_recipe_fifo.yaml";
  std::filesystem::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string e = test::error_of([&] { train::load_recipe(fifo.string()); });
  EXPECT_NE(e.find("recipe " + fifo.string() + " is not a regular file"), std::string::npos) << e;
  std::filesystem::remove(fifo);
}

TEST(LrSchedule, WarmupThenCosineToTheFloor) {
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 0, 100, 10, 0.1), 0.0);
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 5, 100, 10, 0.1), 0.5);
  EXPECT_DOUBLE_EQ(train::learning_rate("cosine", 1.0, 10, 100, 10, 0.1), 1.0);
  EXPECT_NEAR(train::learning_rate("cosine", 1.0, 100, 100, 10, 0.1), 0.1, 1e-12);
  EXPECT_NEAR(train::learning_rate("linear", 1.0, 55, 100, 10, 0.0), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(train::learning_rate("constant", 2.0, 50, 100, 10, 0.0), 2.0);
}


const char* kMinimalRl = "model: {name: tiny-dense}\ntokenizer: tok\nprompts: {task: arithmetic}\n"
                         "grpo: {num_prompts_per_step: 4, num_generations_per_prompt: 3}\n";

// g4 rl's keys round-trip like g4 train's (each with the keys it needs beside it).
TEST(Recipe, EveryRlKeyRoundTripsThroughAnOverride) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "g4_rl_recipe_roundtrip";
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "r.yaml").string();
  std::ofstream(file) << kMinimalRl;
  const auto& schema = train::recipe_schema(train::Command::kRl);
  ASSERT_GE(schema.size(), 75u);
  for (const train::RecipeKey& k : schema) {
    SCOPED_TRACE(k.path);
    nlohmann::json value = non_default(k);
    if (k.path == "train.device" && !cuda_available()) value = "cpu";
    std::vector<std::string> overrides = {k.path + "=" + value.dump()};
    if (k.path == "model.path") overrides.push_back("model.name=''");
    if (k.path == "prompts.train") overrides.push_back("prompts.task=''");
    if (k.path == "grpo.batch_multiplier") overrides.push_back("grpo.use_dynamic_sampling=true");
    if (k.path == "grpo.reward_shaping.enabled") overrides.push_back("grpo.reward_shaping.overlong_buffer_length=8");
    const train::Recipe r = train::load_recipe(file, overrides, train::Command::kRl);
    EXPECT_EQ(r.command, train::Command::kRl);
    EXPECT_EQ(k.get(r), value);
  }
  std::filesystem::remove_all(dir);
}

// A key of the other command is named as such, not as unknown.
TEST(Recipe, KeysOfTheOtherCommandSayWhichCommandTheyAreFor) {
  std::string e = test::error_of([] {
    train::recipe_from_yaml("model: {name: tiny-dense}\ntokenizer: t\ndata: {train: a.txt}\ngrpo: {seed: 3}\n", "s.yaml");
  });
  EXPECT_NE(e.find("s.yaml: recipe key 'grpo.seed' is for g4 rl, not g4 train"), std::string::npos) << e;
  e = test::error_of([] {
    train::recipe_from_yaml(std::string(kMinimalRl) + "data: {seq_len: 64}\n", "r.yaml", {}, train::Command::kRl);
  });
  EXPECT_NE(e.find("r.yaml: recipe key 'data.seq_len' is for g4 train, not g4 rl"), std::string::npos) << e;
  e = test::error_of([] {
    train::recipe_from_yaml("model: {name: tiny-dense}\ntokenizer: tok\nprompts: {task: arithmetic}\n"
                            "grpo: {num_prompts_per_step: 4, num_generations_per_prompt: 3, num_prompts: 4}\n",
                            "r.yaml", {}, train::Command::kRl);
  });
  EXPECT_NE(e.find("unknown recipe key"), std::string::npos) << e;
}

TEST(Recipe, RlCombinationsThatCannotWorkAreRefused) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"prompts.train=p.jsonl", "set exactly one of 'prompts.train'"},
      {"grpo.batch_multiplier=3", "'grpo.batch_multiplier' is 3 but 'grpo.use_dynamic_sampling' is false"},
      {"train.global_batch_size=5", "'train.global_batch_size' 5 must divide the samples of a step"},
      {"grpo.reward_shaping.enabled=true", "needs 'grpo.reward_shaping.overlong_buffer_length' > 0"},
      {"reward.kind=command", "'reward.kind' command needs 'reward.command'"},
      {"generation.top_p=0", "'generation.top_p' must be in (0, 1]"},
  };
  for (const auto& [override_, want] : bad) {
    const std::string e =
        test::error_of([&] { train::recipe_from_yaml(kMinimalRl, "r.yaml", {override_}, train::Command::kRl); });
    EXPECT_NE(e.find(want), std::string::npos) << override_ << ": " << e;
  }
  // NeMo-RL takes these, and would map correct answers below wrong ones, or every reward onto one value.
  for (const char* target_min : {"2", "1"}) {
    const std::string e = test::error_of([&] {
      train::recipe_from_yaml(kMinimalRl, "r.yaml",
                              {"grpo.reward_scaling.enabled=true", std::string("grpo.reward_scaling.target_min=") + target_min},
                              train::Command::kRl);
    });
    EXPECT_NE(e.find("'grpo.reward_scaling.target_max' (1) must exceed 'grpo.reward_scaling.target_min'"),
              std::string::npos)
        << e;
  }
}

// docs/rl.md carries a copy of g4 rl's listing.
TEST(Recipe, TheRlDocsListEveryRlKeyAsTheListingDoes) {
  std::ifstream f(test::source_dir() + "/docs/rl.md");
  ASSERT_TRUE(f.good());
  const std::string docs((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream listing(train::recipe_key_listing(train::Command::kRl));
  for (std::string line; std::getline(listing, line);)
    EXPECT_NE(docs.find(line), std::string::npos) << "docs/rl.md lacks: " << line;
}

// recipes/rl/ holds both commands' recipes: *-sft.yaml for g4 train, the rest for g4 rl.
TEST(Recipe, ShippedRlRecipesLoad) {
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::source_dir() + "/recipes/rl")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const bool sft = entry.path().stem().string().ends_with("-sft");
    const std::vector<std::string> overrides =
        cuda_available() ? std::vector<std::string>{} : std::vector<std::string>{"train.device=cpu"};
    train::load_recipe(entry.path().string(), overrides, sft ? train::Command::kTrain : train::Command::kRl);
    ++loaded;
  }
  EXPECT_GE(loaded, 2);
}

}  // namespace
}  // namespace g4

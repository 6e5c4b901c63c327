// The tests find their fixtures and the g4 command through $G4_TEST_DATA and $G4_BINARY when set,
// so a copy of the tree in another folder (or a bundle on the GPU machine) runs without recreating
// the build's absolute paths; scripts/test_relocated.sh runs this binary against such a copy.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

// Sets an environment variable for one scope and puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(TestPaths, DataDirAndRootFollowTheEnvironment) {
  ScopedEnv data("G4_TEST_DATA", "/elsewhere/tests/data");
  EXPECT_EQ(test::data_dir(), "/elsewhere/tests/data");
  EXPECT_EQ((fs::path(test::source_dir()) / "recipes").lexically_normal(), fs::path("/elsewhere/recipes"));
}

TEST(TestPaths, BinaryFollowsTheEnvironment) {
  ScopedEnv bin("G4_BINARY", "/elsewhere/bin/g4");
  EXPECT_EQ(test::g4_binary(), "/elsewhere/bin/g4");
}

// Run by scripts/test_relocated.sh with G4_TEST_DATA at a copy: the fixtures are read from there.
TEST(TestPaths, FixturesComeFromTheSetting) {
  const char* set = std::getenv("G4_TEST_DATA");
  if (!set || !*set) GTEST_SKIP() << "G4_TEST_DATA not set: the compiled-in tests/data is used";
  EXPECT_EQ(test::data_dir(), set);
  EXPECT_TRUE(fs::exists(fs::path(set) / "hf-gemma4" / "tiny-moe" / "config.json"));
  EXPECT_TRUE(fs::exists(fs::path(test::source_dir()) / "recipes" / "data" / "kjv-tokenizer"));
}

}  // namespace
}  // namespace g4

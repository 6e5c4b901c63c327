// Where the tests find their fixtures and the g4 command. The build compiles in the paths of the
// tree it was configured from; a test run from a copy of the tree elsewhere (or from a bundle
// carried to the GPU machine) sets G4_TEST_DATA to that copy's tests/data and G4_BINARY to its g4,
// so no absolute build path has to be recreated. docs/architecture.md "Tests" documents both.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

namespace g4::test {

namespace detail {
inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : std::string(fallback);
}
}  // namespace detail

// tests/data: $G4_TEST_DATA when set, else the build tree's source directory.
inline std::string data_dir() { return detail::env_or("G4_TEST_DATA", G4_TEST_DATA_DEFAULT); }

// The repository root (recipes/, docs/, tests/) that data_dir() belongs to, so a relocated
// tests/data brings its recipes with it.
inline std::string source_dir() { return data_dir() + "/../.."; }

// The g4 executable: $G4_BINARY when set, else the one built beside the tests; where neither is
// set and that path does not exist, `g4` from PATH.
inline std::string g4_binary() {
  if (const char* v = std::getenv("G4_BINARY"); v && *v) return v;
#ifdef G4_BINARY_DEFAULT
  if (std::filesystem::exists(G4_BINARY_DEFAULT)) return G4_BINARY_DEFAULT;
#endif
  return "g4";
}

}  // namespace g4::test

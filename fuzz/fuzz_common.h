// Shared by the fuzz targets (one per parser, each a libFuzzer entry point): a g4::Error is the
// parser refusing bad input, the normal outcome; everything else (a crash, a sanitizer report,
// another exception type escaping, a timeout, an allocation over -malloc_limit_mb) is a finding.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "core/error.h"

namespace g4::fuzz {

// Runs one parse. A g4::Error must carry a message (an empty one tells the user nothing);
// any other exception is reported and aborts, so libFuzzer records the input as a crash.
template <class F>
void expect_g4_errors_only(F&& parse) {
  try {
    parse();
  } catch (const g4::Error& e) {
    if (e.what()[0] == '\0') {
      std::fprintf(stderr, "g4::Error with an empty message\n");
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "non-g4 exception escaped the parser: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "unknown exception escaped the parser\n");
    std::abort();
  }
}

// A directory of this process for parsers that only take paths (removed at exit).
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::filesystem::path p = std::filesystem::path(base && *base ? base : "/tmp") /
                              ("g4-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return p;
  }();
  return dir;
}

inline std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::filesystem::path p = scratch_dir() / name;
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p.string();
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace g4::fuzz

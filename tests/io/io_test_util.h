// Helpers shared by the I/O tests: temporary directories, raw file crafting, an independent
// minimal safetensors header reader, and an error-message matcher.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "support/test_paths.h"

namespace g4::test {

namespace fs = std::filesystem;

inline std::string fixture_dir(const std::string& name) {
  return data_dir() + "/hf-gemma4/" + name;
}

// A fresh directory under the system temp dir, removed with everything in it at scope end.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("g4_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

inline std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

// A safetensors file with exactly this header text (no padding added) followed by `data`; the
// length field says `claimed_header_len` when given, for crafting corrupt files.
inline void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                                  uint64_t claimed_header_len = UINT64_MAX) {
  const uint64_t n = claimed_header_len == UINT64_MAX ? header.size() : claimed_header_len;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes << header << data;
}

// As above with `data_bytes` filler bytes 0, 1, 2, ...
inline void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes,
                                  uint64_t claimed_header_len = UINT64_MAX) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i);
  write_raw_safetensors(path, header, data, claimed_header_len);
}

// The bytes of trivially copyable values, to build data buffers.
template <class T, size_t N>
std::string bytes_of(const T (&values)[N]) {
  return std::string(reinterpret_cast<const char*>(values), sizeof(T) * N);
}

// Independent reading of a safetensors file: the parsed header and where the data starts.
struct RawSafetensors {
  nlohmann::json header;
  size_t data_start = 0;
  std::vector<char> bytes;
};

inline RawSafetensors parse_raw_safetensors(const std::string& path) {
  RawSafetensors r;
  r.bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(r.bytes[static_cast<size_t>(i)]);
  r.header = nlohmann::json::parse(r.bytes.begin() + 8, r.bytes.begin() + 8 + static_cast<long>(n));
  r.data_start = 8 + n;
  return r;
}

// Runs `fn`; it must throw g4::Error whose message contains every one of `parts`. Returns the
// message ("" on failure). G4_PRINT_ERRORS=1 prints each message, to review how they read.
template <class Fn>
std::string expect_g4_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const g4::Error& e) {
    const std::string msg = e.what();
    if (std::getenv("G4_PRINT_ERRORS")) std::cout << "  error: " << msg << "\n";  // to review wording
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-g4 exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

}  // namespace g4::test

// EXPECT_THROW that also checks the message names what it should (file, key, shapes).
#define EXPECT_G4_ERROR(stmt, ...)                               \
  do {                                                           \
    SCOPED_TRACE(#stmt);                                         \
    ::g4::test::expect_g4_error([&]() { stmt; }, {__VA_ARGS__}); \
  } while (0)

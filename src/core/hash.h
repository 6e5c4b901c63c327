// FNV-1a over bytes: a hash that is the same on every platform and in every run (std::hash is
// not), for fingerprints of data and weights and for naming random streams.
#pragma once
#include <cstddef>
#include <cstdint>

namespace g4 {

struct Fnv1a {
  uint64_t h = 0xCBF29CE484222325ull;
  void mix(const void* data, size_t n) {
    const auto* b = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001B3ull;
  }
};

}  // namespace g4

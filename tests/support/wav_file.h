// A 16-bit PCM mono WAV file of random samples (at 16 kHz unless told), for tests that need audio files.
#pragma once
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace g4::test {

inline void write_random_wav(const std::string& path, size_t samples, uint32_t seed, uint32_t rate = 16000) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-20000, 20000);
  std::vector<int16_t> pcm(samples);
  for (int16_t& s : pcm) s = static_cast<int16_t>(d(rng));
  const auto u32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  const auto u16 = [](uint16_t v) { return std::string(reinterpret_cast<const char*>(&v), 2); };
  const auto bytes = static_cast<uint32_t>(samples * 2);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << "RIFF" << u32(36 + bytes) << "WAVEfmt " << u32(16) << u16(1) << u16(1) << u32(rate) << u32(2 * rate) << u16(2)
    << u16(16) << "data" << u32(bytes);
  f.write(reinterpret_cast<const char*>(pcm.data()), bytes);
}

}  // namespace g4::test

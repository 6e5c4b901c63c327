// Philox4x32-10 counter-based RNG. Header-only and usable from CUDA device code, so the CPU and
// the GPU draw the same numbers for the same (seed, counter): random init and dropout agree
// across devices and across any split of the work.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define G4_HD __host__ __device__
#else
#define G4_HD
#endif

namespace g4 {

struct Philox4 {
  uint32_t v[4];
};

G4_HD inline Philox4 philox4x32(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: never 0, so log() in Box-Muller is safe.
G4_HD inline float philox_to_unit(uint32_t x) { return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }

// Element `index` of the stream (seed, stream): uniform in (0, 1].
G4_HD inline float philox_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4 r = philox4x32(seed, index / 4, stream);
  return philox_to_unit(r.v[index % 4]);
}

// Element `index` of the stream (seed, stream): standard normal (Box-Muller on one Philox block).
G4_HD inline float philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4 r = philox4x32(seed, index / 2, stream);
  const uint32_t a = r.v[(index % 2) * 2], b = r.v[(index % 2) * 2 + 1];
  const float u1 = philox_to_unit(a), u2 = philox_to_unit(b);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

}  // namespace g4

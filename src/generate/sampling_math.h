// The arithmetic that decides which token a row samples, shared by the CPU reference
// (sampling.cpp) and the CUDA kernels (cuda/sampling.cu) so that both decide bit for bit alike:
// the per-token noise, the exp behind top-p's masses, and the float <-> ordered-key map of the
// selections. Library logf/expf differ by an ulp between glibc and CUDA, so the exp and log here
// are our own, built only from correctly rounded operations (+, /, fmaf, ldexpf). Every
// multiply-add is an explicit fmaf and no product feeds an addition directly: nvcc would fuse
// such a pair into an FMA (and the host compiler would not), and the results would differ.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/philox.h"

namespace g4::gen::detail {

// Philox counter_hi of the sampling noise: a tag in the high half keeps it apart from every other
// user of Philox (their streams are small numbers), the request's token index in the low half.
constexpr uint64_t kNoiseTag = 0x53414D50ull << 32;  // "SAMP"

// Top-p masses are exp(z - z_max) in fixed point with this many fractional bits, summed in
// uint64 (at most 2^18 tokens of at most 2^40 each): exact and independent of the order of
// additions, so the CPU and the GPU draw the nucleus boundary at the same token.
constexpr int kMassBits = 40;

// The bits of a float as an integer and back (memcpy is the portable bit cast on both sides).
template <class To, class From>
G4_HD inline To bit_cast_hd(From x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
}
G4_HD inline uint32_t float_bits(float x) { return bit_cast_hd<uint32_t>(x); }
G4_HD inline float bits_float(uint32_t u) { return bit_cast_hd<float>(u); }

// Unsigned key with the order of the floats (-inf lowest, +inf highest; NaNs are refused earlier).
// -0 gets the key of +0, so that keys are equal exactly when the floats compare equal.
G4_HD inline uint32_t order_key(float x) {
  uint32_t u = float_bits(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
G4_HD inline float key_float(uint32_t k) { return bits_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k); }

// ln(x) for a finite x > 0 (normal), within a couple of ulps, accurate relative to the result
// near x = 1 (log1p below depends on it). x = 2^e * m with m in [sqrt(1/2), sqrt(2)), then
// ln(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, as an odd series to s^9.
G4_HD inline float det_log(float x) {
  const uint32_t u = float_bits(x);
  int e = static_cast<int>((u >> 23) & 0xFFu) - 127;
  uint32_t mu = (u & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  if (mu > 0x3FB504F3u) {                          // m > sqrt(2): halve it (exact)
    mu -= 0x00800000u;
    ++e;
  }
  const float f = bits_float(mu) - 1.0f;  // exact (Sterbenz)
  const float s = f / (f + 2.0f);
  const float t = s * s;
  float p = fmaf(t, 1.0f / 9.0f, 1.0f / 7.0f);
  p = fmaf(t, p, 1.0f / 5.0f);
  p = fmaf(t, p, 1.0f / 3.0f);
  const float s2 = s + s;
  const float st = s2 * t;
  const float ln_m = fmaf(st, p, s2);
  const float ef = static_cast<float>(e);
  return fmaf(ef, 0.693145751953125f, fmaf(ef, 1.428606765330187e-06f, ln_m));  // ln2 split hi + lo
}

// ln(1 + y) for y in (-1, 0], accurate for tiny y: with u = 1 + y rounded, ln(u) * y / (u - 1)
// cancels the rounding of u (u - 1 is exact).
G4_HD inline float det_log1p(float y) {
  const float u = 1.0f + y;
  if (u == 1.0f) return y;
  return det_log(u) * (y / (u - 1.0f));
}

// e^y for y <= 0 (0 below -100): y = n ln2 + r, |r| <= ln2 / 2, e^r by Taylor to r^7, times 2^n.
G4_HD inline float det_exp(float y) {
  if (!(y > -100.0f)) return 0.0f;
  const float n = rintf(y * 1.44269504088896341f);
  float r = fmaf(-n, 0.693145751953125f, y);
  r = fmaf(-n, 1.428606765330187e-06f, r);
  float p = 1.0f / 5040.0f;
  p = fmaf(p, r, 1.0f / 720.0f);
  p = fmaf(p, r, 1.0f / 120.0f);
  p = fmaf(p, r, 1.0f / 24.0f);
  p = fmaf(p, r, 1.0f / 6.0f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  return ldexpf(p, static_cast<int>(n));
}

// Fixed-point top-p mass of a token whose scaled logit is `dz` = z - z_max <= 0.
G4_HD inline uint64_t det_mass(float dz) {
  return static_cast<uint64_t>(ldexpf(det_exp(dz), kMassBits));
}

// The exponential-race keys of the 4 tokens 4*group .. 4*group+3 of one request's draw: token t
// wins when z_t - ln(E_t) is largest, E_t ~ Exp(1) from its own Philox number. That is an exact
// draw from softmax(z) over the kept tokens (argmax of p_t / E_t), needs no sorted order or
// cumulative sum, and gives every token its own noise, so a row's result does not depend on how
// the vocabulary is split between threads. E = -ln(1 - v) with v = (x + 1/2) 2^-32 keeps full
// precision for small E, the tail that decides between likely tokens.
G4_HD inline Philox4 race_words(uint64_t seed, uint64_t draw, uint64_t group) {
  return philox4x32(seed, group, kNoiseTag | (draw & 0xFFFFFFFFull));
}
// ln(E) of one token from its Philox word.
G4_HD inline float race_log_e(uint32_t word) {
  float v = (static_cast<float>(word) + 0.5f) * 2.3283064365386963e-10f;  // * 2^-32
  v = v < 0.99999994f ? v : 0.99999994f;  // (float)x may round up to 2^32
  return det_log(-det_log1p(-v));
}
G4_HD inline void race_noise(uint64_t seed, uint64_t draw, uint64_t group, float out[4]) {
  const Philox4 r = race_words(seed, draw, group);
  for (int i = 0; i < 4; ++i) out[i] = race_log_e(r.v[i]);
}

// An upper bound of -race_log_e(word), the most a token's race score can exceed its z, without a
// logarithm: v >= 2^(msb(word) - 32) (2^-33 for word 0) and E = -ln(1 - v) > v, so -ln(E) <
// (32 - msb) ln 2 = (1 + clz(word)) ln 2. The 1e-3 covers the rounding of det_log (about 1e-5
// here), so a token whose z plus this bound is below a score already reached cannot win or tie, and
// its exact noise need not be computed.
G4_HD inline float race_boost_bound(uint32_t word) {
#if defined(__CUDA_ARCH__)
  const int lz = __clz(word);
#else
  const int lz = word == 0 ? 32 : __builtin_clz(word);
#endif
  return static_cast<float>(1 + lz) * 0.693147182f + 1e-3f;
}

}  // namespace g4::gen::detail

#include "io/resample.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "core/error.h"

namespace g4::io {

namespace {

// The filter follows soxr's HQ recipe (soxr_quality_spec(SOXR_HQ, 0), the quality librosa's
// default res_type "soxr_hq" asks for), with frequencies as fractions of the lower Nyquist
// frequency (8 kHz when either side is 16 kHz):
// - the pass band ends at 1 - 0.05 / to_3dB(120.4 dB) = 0.91374 (soxr's formula for 20-bit
//   precision), so speech up to ~7.3 kHz passes unchanged (Kaiser ripple there is ~5e-7);
// - the stop band begins at the Nyquist frequency itself, so nothing aliases into the band kept;
// - the stop band is attenuated by (20 + 1) bits x 6.02 dB = 126.4 dB, soxr's design budget for a
//   20-bit result (the f32 taps and sums add noise near -140 dB of full scale, below that).
// A Kaiser-windowed sinc meeting that spec has its -6 dB point half way across the transition
// band, at 0.957: where soxr's own multi-stage filter measures it, so the two agree there as well.
constexpr double kPassbandEnd = 0.91374;
constexpr double kStopbandBegin = 1.0;
constexpr double kAttenuationDb = 126.4;

// A polyphase table holds one row of taps per output phase (L rows for a reduced ratio L/M). Rates
// with a large L (44101 Hz -> 16 kHz: L = 16000) instead get this many rows per lower-rate sample
// and interpolate linearly between neighbouring rows, which keeps the table near 0.8M taps for any
// ratio. The kernel is smooth at that spacing: linear interpolation errs by at most h^2/8 |g''|
// per tap (h = s/4096 input samples, |g''| <= (2 pi c)^2 2c, c = 0.48/s), 6e-8/s, so at most
// 1.2e-5 of full scale summed over all 192 s taps (-98 dB) and far less for real signals.
constexpr double kInterpolatedPhases = 4096;
// Downsampling by more than this needs a table of over 786k taps per phase: refused, not slow.
constexpr int64_t kMaxDownsampling = 4096;

// Modified Bessel function of the first kind, order 0, by its power series; for the Kaiser beta
// used here (~13) the terms fall below 1e-17 of the sum after ~35 of them.
double bessel_i0(double x) {
  const double q = x * x / 4;
  double term = 1, sum = 1;
  for (int k = 1; term > 1e-17 * sum; ++k) {
    term *= q / (double(k) * double(k));
    sum += term;
  }
  return sum;
}

// The ideal low-pass of the design, as a function of time in input samples, windowed by Kaiser's
// window: 2c sinc(2c t) w(t / T), with c the -6 dB point in cycles per input sample and T the
// half-length. Summed over the integer grid it has unit gain (to the pass-band ripple) for any
// offset, which is why no per-phase normalisation is needed.
struct Kernel {
  double cutoff = 0, half_width = 0, beta = 0, i0_beta = 1;
  double operator()(double t) const {
    const double u = t / half_width;
    if (std::abs(u) >= 1) return 0;
    const double x = std::numbers::pi * 2 * cutoff * t;
    const double sinc = x == 0 ? 1 : std::sin(x) / x;
    return 2 * cutoff * sinc * bessel_i0(beta * std::sqrt(1 - u * u)) / i0_beta;
  }
};

// w a multiple of 8: eight independent sums, which the compiler keeps in one vector register.
float dot(const float* x, const float* h, size_t w) {
  float acc[8] = {};
  for (size_t j = 0; j < w; j += 8)
    for (size_t l = 0; l < 8; ++l) acc[l] += x[j + l] * h[j + l];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

}  // namespace

int64_t resampled_length(int64_t n, int from_hz, int to_hz) {
  G4_CHECK(from_hz > 0 && to_hz > 0, "resampling from ", from_hz, " Hz to ", to_hz, " Hz: rates must be positive");
  if (from_hz == to_hz) return n;
  // librosa: int(np.ceil(y.shape[-1] * (float(target_sr) / orig_sr))), the same two roundings.
  return int64_t(std::ceil(double(n) * (double(to_hz) / double(from_hz))));
}

std::vector<float> resample(const std::vector<float>& x, int from_hz, int to_hz) {
  const int64_t out_len = resampled_length(int64_t(x.size()), from_hz, to_hz);
  if (from_hz == to_hz) return x;
  const int64_t g = std::gcd(int64_t(from_hz), int64_t(to_hz));
  const int64_t L = to_hz / g, M = from_hz / g;  // output sample k sits at input time k * M / L
  G4_CHECK(M / L <= kMaxDownsampling, "resampling from ", from_hz, " Hz to ", to_hz, " Hz: downsampling by more than ",
           kMaxDownsampling, " is not supported");
  const int64_t n = int64_t(x.size());

  // The design in lower-rate samples (Kaiser 1974): order N for the attenuation over the transition
  // band, beta for the attenuation. Scaled by s input samples per lower-rate sample.
  const double s = std::max(1.0, double(M) / double(L));
  const double transition = std::numbers::pi * (kStopbandBegin - kPassbandEnd);  // rad per lower-rate sample
  const double order = std::ceil((kAttenuationDb - 7.95) / (2.285 * transition));
  Kernel kernel;
  kernel.beta = 0.1102 * (kAttenuationDb - 8.7);
  kernel.i0_beta = bessel_i0(kernel.beta);
  kernel.cutoff = 0.5 * (kPassbandEnd + kStopbandBegin) / 2 / s;
  kernel.half_width = order / 2 * s;

  // Output k at input time q + f (q integer, f in [0, 1)) takes inputs q - J + j for j in [0, W):
  // the kernel is non-zero for |q + f - input| < T, so J = floor(T) and W = 2J + 2 (rounded up to a
  // multiple of 8 with zero taps). Row p of the table holds the taps for f = p / P.
  const int64_t J = int64_t(std::floor(kernel.half_width));
  const size_t W = size_t(2 * J + 2 + 7) / 8 * 8;
  const auto interpolated_rows = int64_t(std::ceil(kInterpolatedPhases / s));
  const bool exact = L <= interpolated_rows;
  const int64_t P = exact ? L : interpolated_rows;
  std::vector<float> table(size_t(P + 1) * W);  // row P (f = 1) closes the last interpolation
  for (int64_t p = 0; p <= P; ++p)
    for (size_t j = 0; j < W; ++j)
      table[size_t(p) * W + j] = float(kernel(double(p) / double(P) + double(J) - double(j)));

  // x with J zeros before and enough after that every output reads W samples without a bound check.
  std::vector<float> padded(size_t(J) + x.size() + W + 1, 0.0f);
  std::copy(x.begin(), x.end(), padded.begin() + J);

  // soxr writes round(n * L / M) samples (half up); librosa pads (or, never here, trims) to out_len.
  const auto soxr_len = int64_t((__int128(2) * n * L + M) / (__int128(2) * M));
  std::vector<float> y(size_t(out_len), 0.0f);
  const int64_t computed = std::min(soxr_len, out_len);
  for (int64_t k = 0; k < computed; ++k) {
    const auto pos = __int128(k) * M;
    const auto q = int64_t(pos / L), r = int64_t(pos % L);
    const float* in = padded.data() + q;  // = input q - J
    if (exact) {
      y[size_t(k)] = dot(in, table.data() + size_t(r) * W, W);
    } else {
      const int64_t at = r * P;  // f * P = at / L
      const int64_t p = at / L;
      const double a = double(at % L) / double(L);
      const float lo = dot(in, table.data() + size_t(p) * W, W);
      const float hi = dot(in, table.data() + size_t(p + 1) * W, W);
      y[size_t(k)] = float((1 - a) * lo + a * hi);
    }
  }
  return y;
}

}  // namespace g4::io

#include "io/audio_features.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>

#include "core/error.h"

namespace g4::io {

namespace {

constexpr int64_t kFrame = 320, kHop = 160, kFft = 512, kBins = kFft / 2 + 1;
constexpr int64_t kPadMultiple = 128;
constexpr double kMelFloor = 1e-3;

double hz_to_mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
double mel_to_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

// numpy.linspace: start + i * step, with the last point exactly `stop`.
std::vector<double> linspace(double start, double stop, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  const double step = (stop - start) / double(n - 1);
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = start + double(i) * step;
  v.back() = stop;
  return v;
}

// In-place radix-2 FFT of kFft points.
void fft512(std::vector<std::complex<double>>& a, const std::vector<std::complex<double>>& twiddle) {
  for (int64_t i = 1, j = 0; i < kFft; ++i) {
    int64_t bit = kFft >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) std::swap(a[size_t(i)], a[size_t(j)]);
  }
  for (int64_t len = 2; len <= kFft; len <<= 1) {
    const int64_t stride = kFft / len;
    for (int64_t i = 0; i < kFft; i += len)
      for (int64_t k = 0; k < len / 2; ++k) {
        const std::complex<double> u = a[size_t(i + k)], v = a[size_t(i + k + len / 2)] * twiddle[size_t(k * stride)];
        a[size_t(i + k)] = u + v;
        a[size_t(i + k + len / 2)] = u - v;
      }
  }
}

}  // namespace

std::vector<double> audio_mel_filters() {
  constexpr int64_t kMels = kAudioMelBins;
  const std::vector<double> mels = linspace(hz_to_mel(0.0), hz_to_mel(double(kAudioSampleRate / 2)), kMels + 2);
  std::vector<double> edges(mels.size());
  for (size_t i = 0; i < mels.size(); ++i) edges[i] = mel_to_hz(mels[i]);
  const std::vector<double> fft_f = linspace(0.0, double(kAudioSampleRate / 2), kBins);
  std::vector<double> w(static_cast<size_t>(kBins * kMels));
  for (int64_t k = 0; k < kBins; ++k)
    for (int64_t j = 0; j < kMels; ++j) {
      const double down = -(edges[size_t(j)] - fft_f[size_t(k)]) / (edges[size_t(j + 1)] - edges[size_t(j)]);
      const double up = (edges[size_t(j + 2)] - fft_f[size_t(k)]) / (edges[size_t(j + 2)] - edges[size_t(j + 1)]);
      w[size_t(k * kMels + j)] = std::max(0.0, std::min(down, up));
    }
  return w;
}

std::vector<float> audio_window() {
  std::vector<float> w(static_cast<size_t>(kFrame));
  for (int64_t n = 0; n < kFrame; ++n) w[size_t(n)] = float(0.5 - 0.5 * std::cos(2.0 * std::numbers::pi * double(n) / double(kFrame)));
  return w;
}

int64_t audio_soft_tokens(const std::vector<bool>& frame_mask) {
  std::vector<bool> m = frame_mask;
  for (int pass = 0; pass < 2; ++pass) {
    const size_t t_out = m.empty() ? 0 : (m.size() - 1) / 2 + 1;
    std::vector<bool> next(t_out);
    for (size_t i = 0; i < t_out; ++i) next[i] = m[2 * i];
    m = std::move(next);
  }
  return int64_t(std::count(m.begin(), m.end(), true));
}

namespace {

// Frames of a batch whose clips have these sample counts (after the 30 s cap): right padding to
// the longest rounded up to kPadMultiple, the semicausal left pad of half a frame, then frames of
// kFrame + 1 samples whose last one is dropped (transformers unfolds 321 samples and slices off
// the last).
int64_t batch_frames(const std::vector<int64_t>& samples) {
  G4_CHECK(!samples.empty(), "audio feature extractor: no clips");
  int64_t longest = 0;
  for (int64_t n : samples) longest = std::max(longest, std::min<int64_t>(n, kAudioMaxSamples));
  const int64_t padded = (longest + kPadMultiple - 1) / kPadMultiple * kPadMultiple;
  G4_CHECK(padded + kHop >= kFrame + 1, "audio feature extractor: the longest clip has ", longest,
           " samples, too short for one 20 ms frame (at least 129 samples at 16 kHz)");
  return (padded + kHop - (kFrame + 1)) / kHop + 1;
}

// Frame i ends at original sample kHop * (i + 1); it is valid when that sample is real.
int64_t valid_frames(int64_t samples, int64_t frames) {
  return std::clamp<int64_t>((std::min<int64_t>(samples, kAudioMaxSamples) - 1) / kHop, 0, frames);
}

std::vector<bool> frame_mask(int64_t valid, int64_t frames) {
  std::vector<bool> m(size_t(frames), false);
  std::fill(m.begin(), m.begin() + valid, true);
  return m;
}

}  // namespace

std::vector<int64_t> audio_soft_token_counts(const std::vector<int64_t>& samples) {
  const int64_t F = batch_frames(samples);
  std::vector<int64_t> out;
  for (int64_t n : samples) out.push_back(audio_soft_tokens(frame_mask(valid_frames(n, F), F)));
  return out;
}

AudioFeatures extract_audio_features(const std::vector<std::vector<float>>& clips) {
  std::vector<int64_t> samples;
  for (const auto& c : clips) samples.push_back(int64_t(c.size()));
  const int64_t F = batch_frames(samples);
  const int64_t B = int64_t(clips.size());
  // Constant tables, built once per process (training data extracts features per document).
  static const std::vector<double> mel = audio_mel_filters();
  static const std::vector<float> window = audio_window();
  static const std::vector<std::complex<double>> twiddle = [] {
    std::vector<std::complex<double>> t(static_cast<size_t>(kFft / 2));
    for (int64_t k = 0; k < kFft / 2; ++k) t[size_t(k)] = std::polar(1.0, -2.0 * std::numbers::pi * double(k) / double(kFft));
    return t;
  }();

  AudioFeatures out;
  out.input_features = Tensor::zeros({B, F, kAudioMelBins}, DType::F32);
  out.input_features_mask = Tensor::zeros({B, F}, DType::Bool);
  float* feat = out.input_features.data<float>();
  uint8_t* mask = out.input_features_mask.data<uint8_t>();
  std::vector<std::complex<double>> buf(static_cast<size_t>(kFft));
  std::vector<double> mag(static_cast<size_t>(kBins));
  for (int64_t b = 0; b < B; ++b) {
    const auto& clip = clips[size_t(b)];
    const int64_t n = std::min<int64_t>(int64_t(clip.size()), kAudioMaxSamples);
    const int64_t valid = valid_frames(n, F);
    for (int64_t i = 0; i < valid; ++i) {
      mask[b * F + i] = 1;
      std::fill(buf.begin(), buf.end(), std::complex<double>());
      for (int64_t s = 0; s < kFrame; ++s) {
        const int64_t src = kHop * i + s - kHop;
        const float x = src >= 0 && src < n ? clip[size_t(src)] : 0.0f;
        buf[size_t(s)] = double(x * window[size_t(s)]);  // the f32 product, as transformers forms it
      }
      fft512(buf, twiddle);
      for (int64_t k = 0; k < kBins; ++k) mag[size_t(k)] = std::abs(buf[size_t(k)]);
      float* row = feat + (b * F + i) * kAudioMelBins;
      for (int64_t j = 0; j < kAudioMelBins; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < kBins; ++k) acc += mag[size_t(k)] * mel[size_t(k * kAudioMelBins + j)];
        row[j] = float(std::log(acc + kMelFloor));
      }
    }
    out.num_soft_tokens.push_back(audio_soft_tokens(frame_mask(valid, F)));
  }
  return out;
}

}  // namespace g4::io

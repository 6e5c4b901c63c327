// Resampling to 16 kHz: the filter's properties (gain, timing, stop band, lengths, short clips, bad
// rates) and soxr HQ's own output as transformers' audio loading makes it (librosa.load(sr=16000);
// tests/data/resample/soxr-hq.safetensors, tools/make_resample_fixture.py).
#include "io/resample.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "io/audio_features.h"
#include "io/safetensors.h"
#include "io/wav.h"
#include "support/error_message.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

io::SafetensorsReader fixture() {
  return io::SafetensorsReader::open(test::data_dir() + "/resample/soxr-hq.safetensors");
}

std::vector<float> floats(const io::SafetensorsReader& r, const std::string& name) {
  const Tensor t = r.get(name);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

// The highest frequency (Hz) each mel bin's filter reaches (FFT bins of 16000 / 512 Hz).
std::vector<int64_t> mel_bin_top_hz() {
  const std::vector<double> fb = io::audio_mel_filters();  // [257, 128]
  std::vector<int64_t> top(size_t(io::kAudioMelBins), 0);
  for (int64_t k = 0; k < 257; ++k)
    for (int64_t m = 0; m < io::kAudioMelBins; ++m)
      if (fb[size_t(k * io::kAudioMelBins + m)] > 0) top[size_t(m)] = k * 16000 / 512;
  return top;
}

std::vector<float> tone(double hz, double amplitude, int rate, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    x[size_t(i)] = float(amplitude * std::sin(2 * std::numbers::pi * hz * double(i) / rate));
  return x;
}

// Samples this far from either end of a clip see the whole filter (its half-length is 96 samples of
// the lower rate: 96 samples at 16 kHz, 192 when upsampling from 8 kHz), so away from them a
// resampled tone is the tone itself.
constexpr size_t kEdge = 200;

TEST(Resample, ToneKeepsAmplitudeFrequencyAndTiming) {
  // 11025 and 22050 Hz have many phases (L = 640, 320); 44101 Hz (L = 16000) takes the interpolated table.
  for (const int rate : {48000, 44100, 22050, 11025, 8000, 44101, 96000}) {
    const std::vector<float> y = io::resample(tone(1000, 0.5, rate, rate / 2), rate, 16000);
    ASSERT_EQ(int64_t(y.size()), io::resampled_length(rate / 2, rate, 16000));
    // Linear phase, no delay: output k is the tone at time k / 16000 s exactly.
    const std::vector<float> want = tone(1000, 0.5, 16000, int64_t(y.size()));
    double err = 0;
    for (size_t k = kEdge; k + kEdge < y.size(); ++k) err = std::max(err, std::abs(double(y[k]) - want[k]));
    std::printf("1 kHz tone at %d Hz -> 16 kHz: max deviation from the 16 kHz tone %.2e\n", rate, err);
    EXPECT_LT(err, 1e-3) << rate;  // the pass band's ripple is ~5e-7; 1e-3 is the brief's amplitude bound
    EXPECT_LT(err, 1e-5) << rate;  // and what the design delivers, with f32 rounding
  }
}

TEST(Resample, ToneAboveTheNewNyquistIsRemoved) {
  // A tone above 8 kHz would alias into the band kept (9 kHz -> 7 kHz): it must be attenuated by far
  // more than 60 dB; 8.2 kHz sits just past the stop-band edge.
  for (const auto& [rate, hz] : {std::pair{48000, 9000.0}, {48000, 8200.0}, {44100, 12000.0}, {22050, 9000.0}}) {
    const std::vector<float> y = io::resample(tone(hz, 1.0, rate, rate / 2), rate, 16000);
    double peak = 0;
    for (size_t k = kEdge; k + kEdge < y.size(); ++k) peak = std::max(peak, std::abs(double(y[k])));
    std::printf("%.0f Hz tone at %d Hz -> 16 kHz: peak %.2e (%.1f dB)\n", hz, rate, peak, 20 * std::log10(peak));
    EXPECT_LT(peak, 1e-3) << rate << " " << hz;  // -60 dB
    EXPECT_LT(peak, 1e-5) << rate << " " << hz;  // -100 dB: the design's 126 dB with margin for f32
  }
}

TEST(Resample, SameRateIsTheIdentity) {
  std::mt19937 rng(3);
  std::normal_distribution<float> d;
  std::vector<float> x(1000);
  for (float& v : x) v = d(rng);
  EXPECT_EQ(io::resample(x, 16000, 16000), x);
  EXPECT_EQ(io::resample(x, 44100, 44100), x);
}

TEST(Resample, LengthsAreLibrosas) {
  // soxr writes round(n * 16000 / rate) samples; librosa pads them to ceil(n * (16000 / rate)).
  const Tensor t = fixture().get("lengths");
  ASSERT_EQ(t.shape().size(), 2u);
  const int64_t* row = t.data<int64_t>();
  for (int64_t i = 0; i < t.shape()[0]; ++i, row += 4) {
    const int64_t n = row[0], soxr_len = row[2], librosa_len = row[3];
    const int rate = int(row[1]);
    EXPECT_EQ(io::resampled_length(n, rate, 16000), librosa_len) << n << " at " << rate;
    const std::vector<float> y = io::resample(std::vector<float>(size_t(n), 0.25f), rate, 16000);
    ASSERT_EQ(int64_t(y.size()), librosa_len) << n << " at " << rate;
    // The samples librosa appends are zeros; soxr's own last sample is not (a constant clip).
    for (int64_t k = soxr_len; k < librosa_len; ++k) EXPECT_EQ(y[size_t(k)], 0.0f) << n << " at " << rate << " k " << k;
    if (soxr_len > 0) {
      EXPECT_NE(y[size_t(soxr_len - 1)], 0.0f) << n << " at " << rate;
    }
  }
  // numpy's double rounding, kept: 1159 samples at 1159 Hz give 16001 samples, not 16000.
  EXPECT_EQ(io::resampled_length(1159, 1159, 16000), 16001);
  EXPECT_EQ(io::resampled_length(0, 44100, 16000), 0);
}

TEST(Resample, ShortClipsAreZeroExtended) {
  // Clips shorter than the filter (536 taps at 44.1 kHz) read zeros beyond their ends: a clip gives
  // the outputs it would give followed by silence.
  std::mt19937 rng(5);
  std::normal_distribution<float> d;
  for (const int n : {1, 2, 3, 7, 60, 300}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = 0.3f * d(rng);
    const std::vector<float> y = io::resample(x, 44100, 16000);
    ASSERT_EQ(int64_t(y.size()), io::resampled_length(n, 44100, 16000));
    std::vector<float> longer = x;
    longer.resize(x.size() + 2000, 0.0f);
    const std::vector<float> y_longer = io::resample(longer, 44100, 16000);
    const auto soxr_len = size_t((2 * int64_t(n) * 160 + 441) / (2 * 441));
    for (size_t k = 0; k < soxr_len; ++k) EXPECT_EQ(y[k], y_longer[k]) << n << " " << k;
  }
  EXPECT_TRUE(io::resample({}, 48000, 16000).empty());
}

TEST(Resample, BadRatesGiveClearErrors) {
  EXPECT_NE(test::error_of([] {
              io::resample({1.0f}, 0, 16000);
            }).find("resampling from 0 Hz to 16000 Hz: rates must be positive"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { io::resample({1.0f}, 16000, -5); }).find("-5 Hz"), std::string::npos);
  EXPECT_NE(test::error_of([] { io::resample({1.0f}, 100000000, 16000); }).find("downsampling by more than 4096"),
            std::string::npos);
  io::Waveform w;
  w.samples = {0.1f, 0.2f};
  w.channels = 1;
  for (const int rate : {999, 384001, -1}) {
    w.sample_rate = rate;
    const std::string e = test::error_of([&] { io::samples_16k(w, "WAV file odd.wav"); });
    EXPECT_NE(e.find("WAV file odd.wav: sample rate " + std::to_string(rate) + " Hz"), std::string::npos) << e;
    EXPECT_NE(e.find("from rates of 1000 to 384000 Hz"), std::string::npos) << e;
  }
  w.sample_rate = 1000;
  EXPECT_EQ(io::samples_16k(w, "low.wav").size(), 32u);
  // Upsampling is bounded by what a 16 kHz file of the largest size read could hold (2^28 samples).
  w.samples.assign((size_t(1) << 24) + 1, 0.0f);
  const std::string e = test::error_of([&] { io::samples_16k_count(w, "long.wav"); });
  EXPECT_NE(e.find("long.wav: 16777217 samples at 1000 Hz are 268435472 samples at 16000 Hz, more than the 268435456"),
            std::string::npos)
      << e;
}

// |got - want| over the first kEdgeSamples outputs and over the rest.
constexpr size_t kEdgeSamples = 8;
std::pair<double, double> edge_and_interior_error(const std::vector<float>& got, const std::vector<float>& want) {
  double edge = 0, interior = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    double& worst = k < kEdgeSamples ? edge : interior;
    worst = std::max(worst, std::abs(double(got[k]) - want[k]));
  }
  return {edge, interior};
}

// soxr takes 44.1 kHz to 16 kHz in two stages (halving to 22.05 kHz, then a polyphase stage) and
// starts the second on zeros, where the first stage's linear-phase output reaches before time 0:
// its first two outputs miss that part. Fed impulses at input samples 0..15 one at a time, output 0
// differs from g4's by 1.8e-2, 1.1e-2, 1.5e-3, 4.2e-3, ... of the impulse's height, 0.04 summed; so
// the start of a clip differs by at most 0.05 times its largest sample among the first 16.
double soxr_startup_bound(const std::vector<float>& x) {
  double peak = 0;
  for (size_t i = 0; i < std::min<size_t>(16, x.size()); ++i) peak = std::max(peak, std::abs(double(x[i])));
  return 0.05 * peak;
}

// g4's resampling against soxr's (librosa.load's) on speech-like clips. The two filters share the
// specification, not the coefficients: soxr cascades half-band and polyphase stages, g4 applies one
// Kaiser-windowed sinc. Both are flat to ~5e-7 up to 0.914 of the lower Nyquist and attenuate by
// >120 dB from it; in between their responses agree to 0.02 dB down to -10 dB and to 0.4 (48 kHz) or
// 2.4 dB (44.1 kHz) at -50 dB. So the outputs differ by little (the clips keep some energy in that
// band: harmonics up to 11 kHz, broadband noise): measured 6e-6 (48 kHz), 1.8e-5 (8 kHz) and
// 2.8e-5 (44.1 kHz) of a 0.6 peak, bounded by 1e-4. Moving g4's pass-band edge by 1% of the Nyquist
// frequency gives 5.5e-4 to 6.3e-4; a one-sample shift or a gain error far more.
TEST(Resample, MatchesSoxrHqAsLibrosaLoadsIt) {
  const io::SafetensorsReader ref = fixture();
  const std::vector<int64_t> top = mel_bin_top_hz();
  for (const int rate : {44100, 48000, 8000}) {
    const std::string r = std::to_string(rate);
    const std::vector<float> x = floats(ref, "x_" + r), want = floats(ref, "y_" + r);
    const std::vector<float> got = io::resample(x, rate, 16000);
    ASSERT_EQ(got.size(), want.size()) << rate;
    const auto [edge, interior] = edge_and_interior_error(got, want);
    // Only the two-stage rate starts differently; the others are held to the interior bound.
    const bool two_stage = rate == 44100;
    const double edge_bound = two_stage ? soxr_startup_bound(x) : 1e-4;
    std::printf(
        "%d Hz -> 16 kHz, %zu samples: max |g4 - soxr HQ| %.2e after the first %zu samples, %.2e in them "
        "(bound %.2e)\n",
        rate, got.size(), interior, kEdgeSamples, edge, edge_bound);
    EXPECT_LE(interior, 1e-4) << rate;
    EXPECT_LE(edge, edge_bound) << rate;

    // What the model sees: the Gemma 4 log-mel features of both (same frames, same soft tokens).
    // Mel bins wholly inside the pass band (their filter ends below 0.914 of the lower Nyquist) see
    // only what both filters keep: measured 1.5e-5 (8 kHz) and 3.2e-5 (48 kHz), bounded by 5e-4; at
    // 44.1 kHz soxr's own pass band droops by up to 0.01 dB near its edge (its "small roll-off"),
    // 2.3e-3 in power: measured 8e-4, bounded by 2e-3. The bins over the transition band see the
    // differences of its shape at -25 to -75 dB, large in log terms where little energy is left:
    // measured 1.3e-2 and 1.9e-2, bounded by 5e-2; at 44.1 kHz, where soxr's transition differs
    // by up to 2.4 dB at -50 dB, 8.1e-2, bounded by 0.15. Frame 0 also holds soxr's start-up
    // samples at 44.1 kHz (measured 6.6e-2 / 0.18): bounded there by 0.1 / 0.25.
    const io::AudioFeatures a = io::extract_audio_features({got}), b = io::extract_audio_features({want});
    ASSERT_EQ(a.input_features.shape(), b.input_features.shape());
    EXPECT_EQ(a.num_soft_tokens, b.num_soft_tokens);
    const double pass_band_hz = 0.91374 * std::min(rate, 16000) / 2;
    const int64_t frames = a.input_features.shape()[1];
    double worst[2][2] = {};  // [frame 0 or later][pass band or transition band]
    for (int64_t f = 0; f < frames; ++f)
      for (int64_t m = 0; m < io::kAudioMelBins; ++m) {
        const int64_t i = f * io::kAudioMelBins + m;
        const double e = std::abs(double(a.input_features.data<float>()[i]) - b.input_features.data<float>()[i]);
        double& w = worst[f == 0 ? 0 : 1][double(top[size_t(m)]) <= pass_band_hz ? 0 : 1];
        w = std::max(w, e);
      }
    std::printf(
        "%d Hz: max |log-mel(g4) - log-mel(soxr)| over %lld frames: %.2e in the mel bins below %.0f Hz, "
        "%.2e above; frame 0: %.2e, %.2e\n",
        rate, static_cast<long long>(frames), worst[1][0], pass_band_hz, worst[1][1], worst[0][0], worst[0][1]);
    EXPECT_LE(worst[1][0], two_stage ? 2e-3 : 5e-4) << rate;
    EXPECT_LE(worst[1][1], two_stage ? 0.15 : 5e-2) << rate;
    EXPECT_LE(worst[0][0], two_stage ? 0.1 : 5e-4) << rate;
    EXPECT_LE(worst[0][1], two_stage ? 0.25 : 5e-2) << rate;
  }
  // A clip shorter than the filter: every output is near an end.
  const std::vector<float> x = floats(ref, "x_short"), want = floats(ref, "y_short");
  const std::vector<float> got = io::resample(x, 44100, 16000);
  ASSERT_EQ(got.size(), want.size());
  const auto [edge, interior] = edge_and_interior_error(got, want);
  std::printf(
      "60 samples at 44100 Hz -> %zu: max |g4 - soxr HQ| %.2e after the first %zu samples, %.2e in them "
      "(bound %.2e)\n",
      got.size(), interior, kEdgeSamples, edge, soxr_startup_bound(x));
  EXPECT_LE(interior, 1e-4);
  EXPECT_LE(edge, soxr_startup_bound(x));
}

}  // namespace
}  // namespace g4

// The audio feature extractor against transformers' Gemma4AudioFeatureExtractor (the processor
// fixture and the spec's 440 Hz test vector).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "io/audio_features.h"
#include "io/safetensors.h"
#include "support/error_message.h"
#include "support/test_paths.h"
#include "support/tensor_compare.h"

namespace g4 {
namespace {

io::SafetensorsReader reference() {
  return io::SafetensorsReader::open(test::data_dir() + "/hf-gemma4-mm/processor/reference-audio.safetensors");
}

std::vector<float> waveform(const io::SafetensorsReader& ref, int64_t n = -1) {
  const Tensor w = ref.get("audio.waveform");
  return std::vector<float>(w.data<float>(), w.data<float>() + (n < 0 ? w.numel() : n));
}

void expect_masks_equal(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.shape(), b.shape());
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<uint8_t>()[i], b.data<uint8_t>()[i]) << i;
}

TEST(AudioFeatures, FilterBankAndWindowEqualTransformers) {
  const io::SafetensorsReader ref = reference();
  const Tensor mel = ref.get("audio.mel_filters"), win = ref.get("audio.window");
  const std::vector<double> m = io::audio_mel_filters();
  ASSERT_EQ(int64_t(m.size()), mel.numel());
  for (size_t i = 0; i < m.size(); ++i) ASSERT_NEAR(m[i], mel.data<double>()[i], 1e-12) << i;
  const std::vector<float> w = io::audio_window();
  ASSERT_EQ(int64_t(w.size()), win.numel());
  for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], win.data<float>()[i], 1e-7) << i;
}

TEST(AudioFeatures, FixtureClipAndBatchEqualTransformers) {
  const io::SafetensorsReader ref = reference();
  const std::vector<float> x = waveform(ref);
  const io::AudioFeatures one = io::extract_audio_features({x});
  EXPECT_LE(test::max_diff(one.input_features, ref.get("audio.input_features")), 1e-4);
  expect_masks_equal(one.input_features_mask, ref.get("audio.input_features_mask"));
  EXPECT_EQ(one.num_soft_tokens, (std::vector<int64_t>{ref.get("audio.num_soft_tokens").data<int64_t>()[0]}));

  const io::AudioFeatures two = io::extract_audio_features({x, waveform(ref, 36862)});
  EXPECT_LE(test::max_diff(two.input_features, ref.get("audio.batch2.input_features")), 1e-4);
  expect_masks_equal(two.input_features_mask, ref.get("audio.batch2.input_features_mask"));
  const Tensor n2 = ref.get("audio.batch2.num_soft_tokens");
  EXPECT_EQ(two.num_soft_tokens, (std::vector<int64_t>{n2.data<int64_t>()[0], n2.data<int64_t>()[1]}));
}

TEST(AudioFeatures, SpecTestVector440Hz) {
  std::vector<float> x(16000);
  for (size_t n = 0; n < x.size(); ++n) x[n] = float(0.5 * std::sin(2 * std::numbers::pi * 440 * double(n) / 16000));
  const io::AudioFeatures f = io::extract_audio_features({x});
  ASSERT_EQ(f.input_features.shape(), (Shape{1, 99, 128}));
  const float* p = f.input_features.data<float>();
  const std::vector<float> row0 = {-6.90776f, 0.80856f, -0.37634f, 0.62016f, 0.11238f, 0.54321f};
  for (size_t j = 0; j < row0.size(); ++j) EXPECT_NEAR(p[j], row0[j], 1e-4) << j;
  const std::vector<float> row50 = {-3.85388f, -3.17082f, -3.93387f, -3.90326f, -4.09543f, -1.95065f,
                                    -2.91682f, -2.39067f, -1.78156f, -1.80697f, -0.22039f, -1.15679f};
  for (size_t j = 0; j < row50.size(); ++j) EXPECT_NEAR(p[50 * 128 + 8 + j], row50[j], 1e-4) << j;
  EXPECT_EQ(std::max_element(p + 50 * 128, p + 51 * 128) - (p + 50 * 128), 24);
  EXPECT_NEAR(*std::max_element(p, p + 99 * 128), 3.527376f, 1e-4);
  EXPECT_NEAR(*std::min_element(p, p + 99 * 128), -6.907755f, 1e-5);
  EXPECT_EQ(f.num_soft_tokens, std::vector<int64_t>{25});
}

// The spec's table of frame and token counts (6.4), on fresh random audio.
TEST(AudioFeatures, FrameAndTokenCounts) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  struct Case { int64_t samples, frames, valid, tokens; };
  for (const Case c : {Case{1600, 10, 9, 3}, Case{16000, 99, 99, 25}, Case{16001, 100, 100, 25}, Case{32000, 199, 199, 50},
                       Case{500000, 2999, 2999, 750}}) {
    std::vector<float> x(size_t(c.samples));
    for (float& v : x) v = u(rng);
    const io::AudioFeatures f = io::extract_audio_features({x});
    ASSERT_EQ(f.input_features.shape(), (Shape{1, c.frames, 128})) << c.samples;
    int64_t valid = 0;
    for (int64_t i = 0; i < c.frames; ++i) valid += f.input_features_mask.data<uint8_t>()[i];
    EXPECT_EQ(valid, c.valid) << c.samples;
    EXPECT_EQ(f.num_soft_tokens, std::vector<int64_t>{c.tokens}) << c.samples;
    EXPECT_EQ(io::audio_soft_token_counts({c.samples}), std::vector<int64_t>{c.tokens}) << c.samples;
    for (int64_t j = 0; j < 128 && c.valid < c.frames; ++j)
      EXPECT_EQ(f.input_features.data<float>()[c.valid * 128 + j], 0.0f);
  }
  EXPECT_NE(test::error_of([] { io::extract_audio_features({std::vector<float>(100, 0.1f)}); }).find("too short"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { io::extract_audio_features({}); }).find("no clips"), std::string::npos);
  EXPECT_NE(test::error_of([] { io::audio_soft_token_counts({100}); }).find("too short"), std::string::npos);
}

// The counts from the lengths alone (what training data uses before it extracts features) are the
// extractor's, for batches of clips of many lengths: around the 160-sample hop, the 128-sample
// padding, the shortest clip and the 30 s cap, each beside a longer and a shorter one.
TEST(AudioFeatures, SoftTokenCountsFromLengthsEqualTheExtractors) {
  std::vector<int64_t> lengths{1, 128, 129, 159, 160, 161, 319, 320, 321, 640, 641, 1000, 4799, 4800, 4801, 479999,
                               480000, 480001, 500000};
  for (int64_t n : lengths) {
    const std::vector<int64_t> batch{n, 3000, 161};
    std::vector<std::vector<float>> clips;
    for (int64_t len : batch) clips.emplace_back(size_t(len), 0.25f);
    EXPECT_EQ(io::audio_soft_token_counts(batch), io::extract_audio_features(clips).num_soft_tokens) << n;
  }
}

}  // namespace
}  // namespace g4

// WAV decoding: the fixture clip, every sample format, downmixing, and hostile headers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "io/audio_features.h"
#include "io/resample.h"
#include "io/safetensors.h"
#include "io/wav.h"
#include "support/error_message.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::string processor_dir() { return test::data_dir() + "/hf-gemma4-mm/processor"; }

void put16(std::string& s, uint32_t v) { s += char(v & 0xFF), s += char(v >> 8 & 0xFF); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xFFFF), put16(s, v >> 16); }

// A WAV file of `payload` with a fmt chunk as given; `extensible` writes WAVE_FORMAT_EXTENSIBLE.
std::string make_wav(uint16_t format, uint16_t channels, uint32_t rate, uint16_t bits, const std::string& payload,
                     bool extensible = false) {
  std::string fmt;
  put16(fmt, extensible ? 0xFFFE : format);
  put16(fmt, channels);
  put32(fmt, rate);
  put32(fmt, rate * channels * bits / 8);
  put16(fmt, uint16_t(channels * bits / 8));
  put16(fmt, bits);
  if (extensible) {
    put16(fmt, 22), put16(fmt, bits), put32(fmt, 0);
    put16(fmt, format);
    fmt += std::string("\x00\x00\x00\x00\x10\x00\x80\x00\x00\xAA\x00\x38\x9B\x71", 14);
  }
  std::string body = "WAVE";
  body += "fmt ", put32(body, uint32_t(fmt.size())), body += fmt;
  body += "LIST", put32(body, 3), body += "abc", body += '\0';  // an odd-sized chunk to skip
  body += "data", put32(body, uint32_t(payload.size())), body += payload;
  std::string out = "RIFF";
  put32(out, uint32_t(body.size()));
  return out + body;
}

TEST(Wav, FixtureClipEqualsTransformersWaveform) {
  const std::vector<float> x = io::read_wav_16k(processor_dir() + "/speech_16k.wav");
  const Tensor ref = io::SafetensorsReader::open(processor_dir() + "/reference-audio.safetensors").get("audio.waveform");
  ASSERT_EQ(int64_t(x.size()), ref.numel());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], ref.data<float>()[i]) << i;
}

// A WAV at 44.1 kHz reaches the feature extractor resampled as transformers' load_audio resamples
// it (librosa.load(sr=16000): soxr HQ), no longer refused: the speech-like clip of the resampling
// fixture written as a float WAV gives io::resample's samples, which are soxr's within the bounds
// tests/io/resample_test.cpp justifies, and so the features of soxr's samples.
TEST(Wav, OtherRatesAreResampledAsTransformersLoadsThem) {
  const io::SafetensorsReader ref = io::SafetensorsReader::open(test::data_dir() + "/resample/soxr-hq.safetensors");
  const Tensor x = ref.get("x_44100"), y = ref.get("y_44100");
  const std::string payload(reinterpret_cast<const char*>(x.data<float>()), size_t(x.numel()) * 4);
  const std::vector<float> got = io::samples_16k(io::parse_wav(make_wav(3, 1, 44100, 32, payload), "44k.wav"), "44k.wav");
  EXPECT_EQ(got, io::resample(std::vector<float>(x.data<float>(), x.data<float>() + x.numel()), 44100, 16000));
  EXPECT_EQ(io::samples_16k_count(io::parse_wav(make_wav(3, 1, 44100, 32, payload), "44k.wav"), "44k.wav"),
            int64_t(got.size()));
  ASSERT_EQ(int64_t(got.size()), y.numel());
  double err = 0;
  for (size_t k = 8; k < got.size(); ++k) err = std::max(err, std::abs(double(got[k]) - y.data<float>()[k]));
  EXPECT_LE(err, 1e-4);
  const std::vector<float> want(y.data<float>(), y.data<float>() + y.numel());
  const io::AudioFeatures a = io::extract_audio_features({got}), b = io::extract_audio_features({want});
  EXPECT_EQ(a.num_soft_tokens, b.num_soft_tokens);
  EXPECT_EQ(a.input_features.shape(), b.input_features.shape());
}

TEST(Wav, EverySampleFormatAndDownmix) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> d16(-32768, 32767);
  const int a = d16(rng), b = d16(rng), c = d16(rng);
  std::string p16;
  put16(p16, uint16_t(a)), put16(p16, uint16_t(b)), put16(p16, uint16_t(c)), put16(p16, 0x8000);
  io::Waveform w = io::parse_wav(make_wav(1, 2, 16000, 16, p16), "stereo.wav");
  ASSERT_EQ(w.samples.size(), 2u);
  EXPECT_EQ(w.channels, 2);
  EXPECT_FLOAT_EQ(w.samples[0], float((a / 32768.0 + b / 32768.0) / 2));
  EXPECT_FLOAT_EQ(w.samples[1], float((c / 32768.0 - 1.0) / 2));

  std::string p8("\x00\x80\xff", 3);
  w = io::parse_wav(make_wav(1, 1, 8000, 8, p8), "u8.wav");
  EXPECT_EQ(w.sample_rate, 8000);
  EXPECT_EQ(w.samples, (std::vector<float>{-1.0f, 0.0f, 127.0f / 128}));

  std::string p24("\x00\x00\x80\xff\xff\x7f", 6);
  w = io::parse_wav(make_wav(1, 1, 16000, 24, p24, true), "s24.wav");
  EXPECT_EQ(w.samples, (std::vector<float>{-1.0f, float(8388607.0 / 8388608.0)}));

  std::string p32;
  put32(p32, 0x40000000u), put32(p32, 0xC0000000u);
  w = io::parse_wav(make_wav(1, 1, 16000, 32, p32), "s32.wav");
  EXPECT_EQ(w.samples, (std::vector<float>{0.5f, -0.5f}));

  const float f = std::uniform_real_distribution<float>(-1, 1)(rng);
  std::string pf(reinterpret_cast<const char*>(&f), 4);
  w = io::parse_wav(make_wav(3, 1, 16000, 32, pf), "f32.wav");
  EXPECT_EQ(w.samples, std::vector<float>{f});
  const double g = std::uniform_real_distribution<double>(-1, 1)(rng);
  std::string pd(reinterpret_cast<const char*>(&g), 8);
  w = io::parse_wav(make_wav(3, 1, 16000, 64, pd, true), "f64.wav");
  EXPECT_EQ(w.samples, std::vector<float>{float(g)});
}

TEST(Wav, HostileHeadersGiveClearErrors) {
  const std::string ok = make_wav(1, 1, 16000, 16, std::string(8, '\x01'));
  auto err = [](const std::string& bytes) { return test::error_of([&] { io::parse_wav(bytes, "bad.wav"); }); };
  EXPECT_NE(err("").find("bad.wav: not a WAV file"), std::string::npos);
  EXPECT_NE(err("RIFF\0\0\0\0AVI LIST").find("not a WAV file"), std::string::npos);
  EXPECT_NE(err(ok.substr(0, 12)).find("no fmt chunk"), std::string::npos);
  std::string huge = ok;
  huge[16] = '\xff', huge[17] = '\xff', huge[18] = '\xff', huge[19] = '\x7f';  // fmt chunk size
  EXPECT_NE(err(huge).find("chunk 'fmt ' of 2147483647 bytes runs past the end"), std::string::npos);
  std::string small = ok;
  small[16] = 8;
  EXPECT_NE(err(small).find("fmt chunk of 8 bytes"), std::string::npos);
  EXPECT_NE(err(make_wav(2, 1, 16000, 16, "ab")).find("unsupported WAV sample format 2"), std::string::npos);
  EXPECT_NE(err(make_wav(1, 1, 16000, 12, "ab")).find("unsupported 12-bit PCM"), std::string::npos);
  EXPECT_NE(err(make_wav(3, 1, 16000, 16, "ab")).find("unsupported 16-bit float"), std::string::npos);
  EXPECT_NE(err(make_wav(1, 0, 16000, 16, "ab")).find("0 channels"), std::string::npos);
  EXPECT_NE(err(make_wav(1, 1, 0, 16, "ab")).find("sample rate 0"), std::string::npos);
  std::string align = ok;
  align[32] = 4;  // block align of a 16-bit mono file
  EXPECT_NE(err(align).find("block align 4"), std::string::npos);
  const std::string no_data = ok.substr(0, ok.find("data"));
  EXPECT_NE(err(no_data).find("no data chunk"), std::string::npos);
  // A data chunk longer than the file (an unfinished stream) keeps the whole samples present.
  std::string cut = ok.substr(0, ok.size() - 3);
  EXPECT_EQ(io::parse_wav(cut, "cut.wav").samples.size(), 2u);

  EXPECT_NE(test::error_of([] { io::read_wav("/nonexistent/x.wav"); }).find("/nonexistent/x.wav"), std::string::npos);
}

// Found by fuzzing (fuzz/wav_decode.cpp): float files holding NaN or infinity, or doubles past
// float's range, gave log-mel features of NaN; they are refused, naming the sample and its time.
TEST(Wav, NonFiniteSamplesAreRefused) {
  auto f32 = [](std::vector<float> xs) { return std::string(reinterpret_cast<const char*>(xs.data()), 4 * xs.size()); };
  auto err = [](const std::string& bytes) { return test::error_of([&] { io::parse_wav(bytes, "nan.wav"); }); };
  const std::string nan = err(make_wav(3, 1, 16000, 32, f32({0.25f, std::nanf(""), 0.5f})));
  EXPECT_NE(nan.find("nan.wav: sample 1 ("), std::string::npos) << nan;
  EXPECT_NE(nan.find("is NaN"), std::string::npos) << nan;
  const std::string inf = err(make_wav(3, 2, 8000, 32, f32({0.f, 0.f, 0.1f, INFINITY})));
  EXPECT_NE(inf.find("sample 1 (0.000125 s) is infinite"), std::string::npos) << inf;
  const double big = 1e300;
  EXPECT_NE(err(make_wav(3, 1, 16000, 64, std::string(reinterpret_cast<const char*>(&big), 8))).find("beyond float"),
            std::string::npos);
  // Large but finite samples stay as they are (soundfile does not clip float files either).
  EXPECT_EQ(io::parse_wav(make_wav(3, 1, 16000, 32, f32({3.5f})), "loud.wav").samples, std::vector<float>{3.5f});
}

}  // namespace
}  // namespace g4

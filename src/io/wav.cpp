#include "io/wav.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "io/json_input.h"
#include "io/resample.h"

namespace g4::io {

namespace {

constexpr size_t kMaxWavBytes = size_t(1) << 30;
constexpr uint16_t kFormatPcm = 1, kFormatFloat = 3, kFormatExtensible = 0xFFFE;
constexpr int kTargetRate = 16000;
// Rates outside telephone speech's lower end and the highest studio rate are taken for a corrupt
// header rather than audio worth resampling.
constexpr int kMinSampleRate = 1000, kMaxSampleRate = 384000;
constexpr int64_t kMax16kSamples = int64_t(1) << 28;

uint32_t le32(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
uint16_t le16(const unsigned char* p) { return uint16_t(p[0] | p[1] << 8); }

double sample_value(const unsigned char* p, uint16_t format, int bits) {
  if (format == kFormatFloat) {
    if (bits == 32) {
      float f;
      uint32_t u = le32(p);
      std::memcpy(&f, &u, 4);
      return f;
    }
    uint64_t u = uint64_t(le32(p)) | uint64_t(le32(p + 4)) << 32;
    double d;
    std::memcpy(&d, &u, 8);
    return d;
  }
  switch (bits) {
    case 8: return (double(p[0]) - 128.0) / 128.0;
    case 16: return double(int16_t(le16(p))) / 32768.0;
    case 24: return double(int32_t(uint32_t(p[0]) << 8 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 24) >> 8) / 8388608.0;
    default: return double(int32_t(le32(p))) / 2147483648.0;
  }
}

}  // namespace

Waveform parse_wav(std::string_view bytes, const std::string& what) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  G4_CHECK(bytes.size() >= 12 && std::memcmp(b, "RIFF", 4) == 0 && std::memcmp(b + 8, "WAVE", 4) == 0, what,
           ": not a WAV file (no RIFF/WAVE header)");
  bool have_fmt = false;
  uint16_t format = 0, channels = 0, bits = 0, block_align = 0;
  uint32_t rate = 0;
  std::string_view data;
  bool have_data = false;
  size_t pos = 12;
  while (pos + 8 <= bytes.size()) {
    const unsigned char* c = b + pos;
    const uint64_t size = le32(c + 4);
    const size_t body = pos + 8;
    // A data chunk whose size runs past the end (streams written before their length was known)
    // is cut to the bytes present, as soundfile does; any other overlong chunk is corruption.
    const bool is_data = std::memcmp(c, "data", 4) == 0;
    G4_CHECK(is_data || body + size <= bytes.size(), what, ": chunk '", std::string(reinterpret_cast<const char*>(c), 4),
             "' of ", size, " bytes runs past the end of the file (", bytes.size(), " bytes)");
    const uint64_t avail = std::min<uint64_t>(size, bytes.size() - body);
    if (std::memcmp(c, "fmt ", 4) == 0) {
      G4_CHECK(size >= 16, what, ": fmt chunk of ", size, " bytes (at least 16 expected)");
      format = le16(b + body);
      channels = le16(b + body + 2);
      rate = le32(b + body + 4);
      block_align = le16(b + body + 12);
      bits = le16(b + body + 14);
      if (format == kFormatExtensible) {
        G4_CHECK(size >= 40, what, ": WAVE_FORMAT_EXTENSIBLE fmt chunk of ", size, " bytes (40 expected)");
        format = le16(b + body + 24);  // the first two bytes of the sub-format GUID
      }
      have_fmt = true;
    } else if (is_data) {
      data = bytes.substr(body, avail);
      have_data = true;
    }
    pos = body + avail + (avail & 1);
  }
  G4_CHECK(have_fmt, what, ": no fmt chunk");
  G4_CHECK(have_data, what, ": no data chunk");
  G4_CHECK(format == kFormatPcm || format == kFormatFloat, what, ": unsupported WAV sample format ", format,
           " (PCM (1) and IEEE float (3) are read)");
  const bool bits_ok = format == kFormatPcm ? (bits == 8 || bits == 16 || bits == 24 || bits == 32) : (bits == 32 || bits == 64);
  G4_CHECK(bits_ok, what, ": unsupported ", bits, "-bit ", format == kFormatPcm ? "PCM" : "float", " samples");
  G4_CHECK(channels >= 1, what, ": 0 channels");
  G4_CHECK(rate >= 1, what, ": sample rate 0");
  const size_t frame_bytes = size_t(channels) * (bits / 8);
  G4_CHECK(block_align == frame_bytes, what, ": block align ", block_align, " does not match ", channels, " channels of ",
           bits, "-bit samples (", frame_bytes, " bytes)");
  Waveform w;
  w.sample_rate = int(rate);
  w.channels = channels;
  const size_t frames = data.size() / frame_bytes;
  w.samples.resize(frames);
  const auto* d = reinterpret_cast<const unsigned char*>(data.data());
  for (size_t i = 0; i < frames; ++i) {
    double sum = 0;
    for (int ch = 0; ch < channels; ++ch) sum += sample_value(d + i * frame_bytes + size_t(ch) * (bits / 8), format, bits);
    w.samples[i] = float(sum / channels);
    // Float files can hold NaN and infinities (or doubles past float's range): every feature
    // frame they reach would be NaN, so the clip is refused rather than trained or prompted on.
    G4_CHECK(std::isfinite(w.samples[i]), what, ": sample ", i, " (", i / double(rate), " s) is ",
             std::isnan(w.samples[i]) ? "NaN" : "infinite or beyond float's range",
             "; audio samples must be finite numbers");
  }
  return w;
}

std::string read_wav_file(const std::string& path) { return read_regular_file(path, "WAV file", kMaxWavBytes); }

Waveform read_wav(const std::string& path) {
  return parse_wav(read_wav_file(path), "WAV file " + path);
}

namespace {

// The length of w at 16 kHz, after checking that it can be resampled.
int64_t checked_16k_length(const Waveform& w, const std::string& what) {
  G4_CHECK(w.sample_rate >= kMinSampleRate && w.sample_rate <= kMaxSampleRate, what, ": sample rate ", w.sample_rate,
           " Hz; audio is resampled to the 16000 Hz of the Gemma 4 audio feature extractor from rates of ",
           kMinSampleRate, " to ", kMaxSampleRate, " Hz");
  const int64_t n = resampled_length(int64_t(w.samples.size()), w.sample_rate, kTargetRate);
  // Upsampling multiplies the samples held (16x from 1 kHz): no more than a 16 kHz file of the
  // largest size read (1 GiB of f32) may give.
  G4_CHECK(n <= kMax16kSamples, what, ": ", w.samples.size(), " samples at ", w.sample_rate, " Hz are ", n,
           " samples at 16000 Hz, more than the ", kMax16kSamples, " (4.7 hours) taken");
  return n;
}

}  // namespace

std::vector<float> samples_16k(Waveform w, const std::string& what) {
  checked_16k_length(w, what);
  if (w.sample_rate == kTargetRate) return std::move(w.samples);
  return resample(w.samples, w.sample_rate, kTargetRate);
}

int64_t samples_16k_count(const Waveform& w, const std::string& what) {
  return checked_16k_length(w, what);
}

std::vector<float> read_wav_16k(const std::string& path) { return samples_16k(read_wav(path), "WAV file " + path); }

}  // namespace g4::io

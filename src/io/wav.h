// WAV files (RIFF WAVE) decoded to float samples for the audio feature extractor.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace g4::io {

struct Waveform {
  std::vector<float> samples;  // mono, in [-1, 1]
  int sample_rate = 0;
  int channels = 0;  // in the file; several are averaged into `samples`
};

// PCM (8-bit unsigned, 16/24/32-bit signed) or IEEE float (32/64-bit), plain or
// WAVE_FORMAT_EXTENSIBLE. Integer samples are scaled as soundfile (and so librosa, which
// transformers' load_audio uses) scales them: x / 2^(bits-1), 8-bit as (x - 128) / 128. Several
// channels are averaged as librosa.to_mono does. Errors name `what` (the file).
Waveform parse_wav(std::string_view bytes, const std::string& what);
Waveform read_wav(const std::string& path);
// The bytes of a WAV file as read_wav reads them (a regular file, size-limited).
std::string read_wav_file(const std::string& path);

// The samples of w for the Gemma 4 audio feature extractor, which takes 16 kHz audio: other rates
// are resampled as transformers' load_audio does (librosa.load(sr=16000), soxr HQ; io/resample.h).
// A rate below 1000 or above 384000 Hz is an error naming `what`.
std::vector<float> samples_16k(Waveform w, const std::string& what);
// samples_16k(w, what).size(), without resampling (the soft-token count of a clip needs only this).
int64_t samples_16k_count(const Waveform& w, const std::string& what);
// read_wav, then samples_16k.
std::vector<float> read_wav_16k(const std::string& path);

}  // namespace g4::io

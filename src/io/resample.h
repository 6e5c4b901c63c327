// Sample-rate conversion of mono audio between integer rates, as transformers' audio loading does
// it (load_audio -> librosa.load(sr=16000) -> soxr at its "HQ" quality), so that a 44.1 or 48 kHz
// recording gives the Gemma 4 audio feature extractor the samples transformers would give it.
// docs/multimodal.md "Audio".
#pragma once
#include <cstdint>
#include <vector>

namespace g4::io {

// x (at from_hz) band-limited to just below the lower of the two Nyquist frequencies and resampled
// to to_hz: a linear-phase windowed-sinc FIR (Kaiser window) to soxr HQ's specification, applied
// polyphase, the signal taken as zero outside the clip. from_hz == to_hz returns x unchanged (as
// librosa does). The length is librosa's (resampled_length). Rates must be positive; an error says
// which one is not.
std::vector<float> resample(const std::vector<float>& x, int from_hz, int to_hz);

// librosa.resample's length: ceil(n * (to_hz / from_hz)), computed in double as numpy does (so one
// second at 1159 Hz gives 16001 samples at 16 kHz, the last a zero). soxr itself writes
// round(n * to_hz / from_hz) samples; librosa pads the rest with zeros, and so does resample.
int64_t resampled_length(int64_t n, int from_hz, int to_hz);

}  // namespace g4::io

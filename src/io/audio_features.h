// Gemma 4's audio feature extractor (transformers' Gemma4AudioFeatureExtractor, defaults of the
// published preprocessor_config.json): 16 kHz waveforms -> log-mel frames [B, F, 128] and their
// validity mask, plus the number of audio soft tokens each clip expands to in the prompt.
// docs/multimodal.md "Audio".
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace g4::io {

struct AudioFeatures {
  Tensor input_features;       // f32 [B, F, 128]; invalid frames are 0
  Tensor input_features_mask;  // bool [B, F]; a prefix of true per clip
  std::vector<int64_t> num_soft_tokens;  // per clip: ceil(valid frames / 4)
};

constexpr int64_t kAudioSampleRate = 16000;
constexpr int64_t kAudioMelBins = 128;
constexpr int64_t kAudioMaxSamples = 480000;  // 30 s; longer clips are truncated
// Frame i is valid when sample 160 (i + 1) exists: a clip of at most this many samples has no
// valid frame and no soft token.
constexpr int64_t kAudioHopSamples = 160;

// The batch is right-padded with zeros to the longest clip rounded up to a multiple of 128
// samples, as transformers pads it; clips are 16 kHz mono in [-1, 1].
AudioFeatures extract_audio_features(const std::vector<std::vector<float>>& clips);

// The HTK mel filter bank [257, 128] (row-major, fft bin x mel bin; no area normalisation) and
// the periodic Hann window of 320 samples in f32, both as transformers builds them.
std::vector<double> audio_mel_filters();
std::vector<float> audio_window();

// Audio soft tokens for one clip's frame mask (valid frames a prefix): the mask after the
// tower's two stride-2 convolutions, counted.
int64_t audio_soft_tokens(const std::vector<bool>& frame_mask);

// The num_soft_tokens extract_audio_features gives for a batch of clips of these sample counts,
// from the counts alone (a clip's valid frames depend only on its length), with its errors.
std::vector<int64_t> audio_soft_token_counts(const std::vector<int64_t>& samples);

}  // namespace g4::io

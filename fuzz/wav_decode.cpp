// A WAV file (what `--audio`, training data's audio fields and the server's input_audio read): the
// parse, the 16 kHz length the prompt's soft-token count is planned from, and for short clips the
// resampling and the Gemma 4 audio features themselves. A clip that parses must resample to the
// length planned, and its features must be finite (a NaN reaching the tower is a silent wrong
// answer).
#include <cmath>
#include <cstdlib>

#include "fuzz_common.h"
#include "io/audio_features.h"
#include "io/wav.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::fuzz::expect_g4_errors_only([&] {
    const g4::io::Waveform w = g4::io::parse_wav(g4::fuzz::as_view(data, size), "fuzz input");
    const int64_t n = g4::io::samples_16k_count(w, "fuzz input");
    if (w.samples.size() > 4000) return;  // resampling and features cost more than the parse under test
    const std::vector<float> clip = g4::io::samples_16k(w, "fuzz input");
    if (static_cast<int64_t>(clip.size()) != n) std::abort();
    g4::fuzz::expect_g4_errors_only([&] {
      (void)g4::io::audio_soft_token_counts({n});
      const g4::io::AudioFeatures f = g4::io::extract_audio_features({clip});
      const float* x = f.input_features.data<float>();
      for (int64_t i = 0; i < f.input_features.numel(); ++i)
        if (!std::isfinite(x[i])) std::abort();
    });
  });
  return 0;
}

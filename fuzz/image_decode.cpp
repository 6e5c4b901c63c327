// An image file (JPEG or PNG, sniffed from its first bytes): its size from the header alone (what
// training data reads at load time), then decode it (a decoded image must have that size), then the
// Gemma 4 image processor's size arithmetic at every budget and its resampler to a small fixed size
// (the full processor output at the fuzzer's rate would cost more than the decoding under test).
#include <cstdlib>

#include "fuzz_common.h"
#include "io/image.h"
#include "io/image_processor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::io::ImageSize header{};
  bool header_ok = false;
  g4::fuzz::expect_g4_errors_only([&] {
    header = g4::io::image_size(g4::fuzz::as_view(data, size), "fuzz input");
    header_ok = true;
  });
  g4::fuzz::expect_g4_errors_only([&] {
    const g4::io::RgbImage img = g4::io::decode_image(g4::fuzz::as_view(data, size), "fuzz input");
    // A file that decodes has a header that reads, with the same size.
    if (!header_ok || header.height != img.height || header.width != img.width) std::abort();
    for (int64_t budget : {70, 140, 280, 560, 1120}) {
      g4::io::ImageProcessorOptions opt;
      opt.max_soft_tokens = budget;
      g4::fuzz::expect_g4_errors_only([&] { (void)g4::io::image_target_size(img.height, img.width, opt); });
    }
    (void)g4::io::resize_bicubic_antialias(img, 5, 7);
  });
  return 0;
}

// A model directory's processor_config.json (the image, video and audio settings a multimodal
// checkpoint ships): the image and video processor options read from it, then what they drive: the
// image size arithmetic and the video frame sampling on a few frame counts and rates.
#include "fuzz_common.h"
#include "io/image_processor.h"
#include "io/video_processor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::fuzz::write_scratch("processor_config.json", g4::fuzz::as_view(data, size));
  const std::string dir = g4::fuzz::scratch_dir().string();
  g4::fuzz::expect_g4_errors_only([&] {
    const g4::io::ImageProcessorOptions image = g4::io::load_image_processor_options(dir);
    for (const std::pair<int64_t, int64_t>& hw : {std::pair<int64_t, int64_t>{1, 1}, {480, 640}, {4000, 3}})
      g4::fuzz::expect_g4_errors_only([&] { (void)g4::io::image_target_size(hw.first, hw.second, image); });
  });
  g4::fuzz::expect_g4_errors_only([&] {
    const g4::io::VideoProcessorOptions video = g4::io::load_video_processor_options(dir);
    for (const int64_t frames : {1, 7, 300})
      for (const double fps : {0.5, 24.0, 240.0})
        g4::fuzz::expect_g4_errors_only([&] { (void)g4::io::sample_frame_indices(frames, video, fps); });
  });
  return 0;
}

// The Gemma 4 video processor: frame sampling as BaseVideoProcessor.sample_frames computes it
// (indices worked out by hand from torch.arange's float32 rule), the "mm:ss" timestamps, frames
// processed as the image processor processes an image (up to the documented one-ulp rescale
// difference), the options from processor_config.json, and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io_test_util.h"
#include "support/error_message.h"
#include "support/png_file.h"

namespace g4 {
namespace {

io::VideoProcessorOptions sampling(int64_t num_frames, double sample_fps = 0) {
  io::VideoProcessorOptions o;
  o.num_frames = num_frames;
  o.sample_fps = sample_fps;
  return o;
}

std::vector<int64_t> indices(int64_t total, int64_t n) { return io::sample_frame_indices(total, sampling(n), 0); }

TEST(VideoProcessor, SampleFramesAsTorchArange) {
  EXPECT_EQ(indices(10, 3), (std::vector<int64_t>{0, 3, 6}));  // step 3.33
  EXPECT_EQ(indices(5, 2), (std::vector<int64_t>{0, 2}));      // step 2.5
  EXPECT_EQ(indices(7, 7), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
  // The default 32 of 100 frames: step 3.125.
  EXPECT_EQ(indices(100, 32), (std::vector<int64_t>{0,  3,  6,  9,  12, 15, 18, 21, 25, 28, 31,
                                                    34, 37, 40, 43, 46, 50, 53, 56, 59, 62, 65,
                                                    68, 71, 75, 78, 81, 84, 87, 90, 93, 96}));
  // 30 frames, 22 of them: 11 * (30 / 22) is 14.999999999999998 in double, 15 once rounded to the
  // float32 of torch.arange's output, so index 11 is 15, not 14.
  EXPECT_EQ(indices(30, 22), (std::vector<int64_t>{0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 15, 16, 17, 19, 20, 21, 23,
                                                   24, 25, 27, 28}));
  // By rate: 250 frames at 25 fps sampled at 2 fps -> int(250 / 25 * 2) = 20 frames, step 12.5.
  EXPECT_EQ(io::sample_frame_indices(250, sampling(0, 2.0), 25.0),
            (std::vector<int64_t>{0, 12, 25, 37, 50, 62, 75, 87, 100, 112, 125, 137, 150, 162, 175, 187, 200, 212,
                                  225, 237}));
  io::VideoProcessorOptions all = sampling(32);
  all.sample_frames = false;
  EXPECT_EQ(io::sample_frame_indices(4, all, 0), (std::vector<int64_t>{0, 1, 2, 3}));

  // transformers refuses more frames than the video has; rounding past the end fails there too
  // (17 frames, 14 of them: arange gives 15 elements, the last 17).
  EXPECT_NE(test::error_of([] { indices(20, 32); }).find("num_frames = 32 exceeds its 20 frames"), std::string::npos);
  EXPECT_NE(test::error_of([] { indices(17, 14); }).find("frame index 17"), std::string::npos);
  // 10 frames at 30 fps sampled at 1 fps: int(0.33) = 0 frames.
  EXPECT_NE(test::error_of([] { io::sample_frame_indices(10, sampling(0, 1.0), 30.0); }).find("gives 0"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { io::sample_frame_indices(10, sampling(0, 1.0), 0.0); }).find("needs the video's fps"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { io::check_video_processor_options(sampling(8, 2.0), "opts"); }).find("exactly one"),
            std::string::npos);
}

TEST(VideoProcessor, TimestampsAreMinutesAndSeconds) {
  EXPECT_EQ(io::frame_timestamp(0, 24), "00:00");
  EXPECT_EQ(io::frame_timestamp(48, 24), "00:02");
  EXPECT_EQ(io::frame_timestamp(1500, 24), "01:02");   // 62.5 s
  EXPECT_EQ(io::frame_timestamp(90000, 25), "60:00");  // an hour: minutes go past 59
  EXPECT_EQ(io::frame_timestamp(4495, 29.97), "02:29");
  EXPECT_EQ(io::frame_timestamp(2997, 29.97), "01:40");
  // 9 / 0.3: 30.000000000000004 in double but 29.999998 in the float32 tensors transformers divides.
  EXPECT_EQ(io::frame_timestamp(9, 0.3), "00:29");
}

TEST(VideoProcessor, FramesAreProcessedAsImages) {
  test::TempDir dir;
  std::vector<io::RgbImage> frames;
  io::VideoFrames video{{}, 2.0};
  for (int i = 0; i < 5; ++i) {
    // Names sort in playback order only by name, not by creation: write them out of order.
    const std::string name = dir / ("frame_" + std::to_string(4 - i) + ".png");
    frames.insert(frames.begin(), test::write_random_png(name, 70, 50, 100 + static_cast<uint32_t>(i)));
  }
  video.files = io::list_video_frames(dir.str());
  ASSERT_EQ(video.files.size(), 5u);
  EXPECT_EQ(video.files[0], dir / "frame_0.png");

  io::VideoProcessorOptions opt = sampling(3);
  const io::ProcessedVideo v = io::process_video(video, opt);
  EXPECT_EQ(v.frame_indices, (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(v.timestamps, (std::vector<std::string>{"00:00", "00:00", "00:01"}));  // 0, 0.5, 1.5 s at 2 fps
  // 50x70 at the video budget of 70 soft tokens (630 patches): 336x432, 21x27 patches, 63 tokens.
  EXPECT_EQ(v.resized_width, 336);
  EXPECT_EQ(v.resized_height, 432);
  EXPECT_EQ(v.soft_tokens_per_frame, 63);
  ASSERT_EQ(v.pixel_values.shape(), (Shape{3, 630, 768}));
  ASSERT_EQ(v.position_ids.shape(), (Shape{3, 630, 2}));

  // The same frames through the image processor at the same budget.
  const io::ProcessedImages images = io::process_images({frames[0], frames[1], frames[3]}, opt.frame);
  ASSERT_EQ(images.pixel_values.shape(), v.pixel_values.shape());
  EXPECT_EQ(std::memcmp(images.image_position_ids.raw(), v.position_ids.raw(), v.position_ids.nbytes()), 0);
  EXPECT_EQ(images.num_soft_tokens, (std::vector<int64_t>(3, 63)));
  int64_t one_ulp = 0, more = 0;
  const float* img = images.pixel_values.data<float>();
  const float* vid = v.pixel_values.data<float>();
  for (int64_t i = 0; i < v.pixel_values.numel(); ++i) {
    const auto code = static_cast<uint8_t>(std::lround(img[i] * 255.0f));
    // The video value is code / 255 in float32; the image's code * float(1/255), one ulp apart at most.
    ASSERT_EQ(vid[i], static_cast<float>(code) / 255.0f) << i;
    if (vid[i] == img[i]) continue;
    (std::nextafter(img[i], vid[i]) == vid[i] ? one_ulp : more)++;
  }
  EXPECT_GT(one_ulp, 0);
  EXPECT_EQ(more, 0);
  // Padding: rows 567.. are zero with positions (-1, -1).
  for (int64_t f = 0; f < 3; ++f) {
    EXPECT_EQ(v.pixel_values.data<float>()[(f * 630 + 567) * 768], 0.0f);
    EXPECT_EQ(v.position_ids.data<int64_t>()[(f * 630 + 629) * 2 + 1], -1);
    EXPECT_EQ(v.position_ids.data<int64_t>()[(f * 630 + 566) * 2], 20);  // the last patch: (20, 26)
    EXPECT_EQ(v.position_ids.data<int64_t>()[(f * 630 + 566) * 2 + 1], 26);
  }

  // transformers' batch stacks videos of equal length.
  const auto [values, positions] = io::stack_videos({v, v});
  EXPECT_EQ(values.shape(), (Shape{2, 3, 630, 768}));
  EXPECT_EQ(positions.shape(), (Shape{2, 3, 630, 2}));
  EXPECT_EQ(std::memcmp(values.data<float>() + 3 * 630 * 768, vid, v.pixel_values.nbytes()), 0);
  const io::ProcessedVideo shorter = io::process_video(video, sampling(2));
  EXPECT_NE(test::error_of([&] { io::stack_videos({v, shorter}); }).find("same number of frames"), std::string::npos);
}

TEST(VideoProcessor, OptionsAndBadInputs) {
  // The processor fixture's video_processor: the published defaults.
  const io::VideoProcessorOptions o =
      io::load_video_processor_options(test::data_dir() + "/hf-gemma4-mm/processor");
  EXPECT_EQ(o.frame.max_soft_tokens, 70);
  EXPECT_EQ(o.frame.patch_size, 16);
  EXPECT_EQ(o.num_frames, 32);
  EXPECT_EQ(o.sample_fps, 0.0);
  EXPECT_TRUE(o.sample_frames);
  EXPECT_EQ(io::load_video_processor_options(test::data_dir() + "/hf-gemma4-mm/processor", 280).frame.max_soft_tokens,
            280);

  test::TempDir dir;
  const auto config_error = [&](const std::string& video_processor) {
    test::write_text(dir / "processor_config.json", R"({"video_processor": )" + video_processor + "}");
    return test::error_of([&] { io::load_video_processor_options(dir.str()); });
  };
  EXPECT_NE(config_error(R"({"image_std": [2, 2, 2]})").find("image_std"), std::string::npos);
  EXPECT_NE(config_error(R"({"fps": 2})").find("exactly one of num_frames and fps"), std::string::npos);
  EXPECT_EQ(config_error(R"({"fps": 2, "num_frames": null})"), "");
  EXPECT_NE(config_error(R"({"max_soft_tokens": 100})").find("max_soft_tokens"), std::string::npos);

  // A missing frame, an empty folder, frames of two sizes: each names the culprit.
  const std::string a = dir / "a.png", b = dir / "b.png";
  test::write_random_png(a, 30, 40, 1);
  test::write_random_png(b, 31, 40, 2);
  EXPECT_NE(test::error_of([&] { io::process_video({{a, dir / "gone.png"}, 0}, sampling(1)); }).find("gone.png does not exist"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::process_video({{a, b}, 0}, sampling(2)); }).find("b.png is 40x31"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::process_video({{a}, -1}, sampling(1)); }).find("fps must be positive"),
            std::string::npos);
  std::filesystem::create_directories(dir / "empty");
  EXPECT_NE(test::error_of([&] { io::list_video_frames(dir / "empty"); }).find("holds no frame files"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::list_video_frames(dir / "nowhere"); }).find("does not exist"), std::string::npos);
}

// Frames held in memory (a `g4 serve` request's data URL): the same tensors, indices and timestamps
// as the same bytes read from files, and errors that name the video and the frame.
TEST(VideoProcessor, FramesHeldInMemoryProcessAsTheirFiles) {
  test::TempDir dir;
  io::VideoFrames files{{}, 2.0}, held{{}, 2.0};
  for (int i = 0; i < 3; ++i) {
    files.files.push_back(dir / ("f" + std::to_string(i) + ".png"));
    test::write_random_png(files.files.back(), 30, 40, 20 + static_cast<uint32_t>(i));
    held.files.push_back("frame " + std::to_string(i));
    held.encoded.push_back(io::read_image_file(files.files.back()));
  }
  const io::ProcessedVideo a = io::process_video(files, sampling(2)), b = io::process_video(held, sampling(2), "clip");
  EXPECT_EQ(a.frame_indices, b.frame_indices);
  EXPECT_EQ(a.timestamps, b.timestamps);
  EXPECT_EQ(a.soft_tokens_per_frame, b.soft_tokens_per_frame);
  ASSERT_EQ(a.pixel_values.shape(), b.pixel_values.shape());
  EXPECT_EQ(std::memcmp(a.pixel_values.data<float>(), b.pixel_values.data<float>(), a.pixel_values.nbytes()), 0);
  EXPECT_EQ(std::memcmp(a.position_ids.data<int64_t>(), b.position_ids.data<int64_t>(), a.position_ids.nbytes()), 0);

  io::VideoFrames bad = held;
  bad.encoded[1] = "not an image";
  EXPECT_NE(test::error_of([&] {
              io::process_video(bad, sampling(2), "clip");
            }).find("image clip frame 1 is neither a JPEG nor a PNG"),
            std::string::npos);
  test::write_random_png(dir / "wide.png", 30, 41, 5);
  bad.encoded[1] = io::read_image_file(dir / "wide.png");
  EXPECT_NE(test::error_of([&] {
              io::process_video(bad, sampling(2), "clip");
            }).find("clip: frame 1 is 41x30, but the first sampled frame is 40x30"),
            std::string::npos);
  bad.encoded.pop_back();
  EXPECT_NE(test::error_of([&] { io::process_video(bad, sampling(2), "clip"); }).find("2 frames held in memory but 3"),
            std::string::npos);
}

}  // namespace
}  // namespace g4

// Gemma 4's video processor (transformers' Gemma4VideoProcessor and BaseVideoProcessor.sample_frames):
// a video given as its decoded frames (image files, in order) and their frame rate -> the sampled
// frames' pixel_values_videos [F, max_patches, 3*p*p], video_position_ids [F, max_patches, 2], the
// soft tokens per frame and each sampled frame's "mm:ss" timestamp. Decoding a video file is
// upstream of the processor (MULTIMODAL.md 5 and 11); docs/multimodal.md "Video".
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/image_processor.h"

namespace g4::io {

// The frame rate assumed for frames given without one (transformers warns and takes 24).
inline constexpr double kDefaultVideoFps = 24.0;

struct VideoProcessorOptions {
  ImageProcessorOptions frame{70};  // the per-frame size rules; video's budget defaults to 70
  bool sample_frames = true;        // do_sample_frames: false keeps every frame
  // Frames sampled uniformly (num_frames), or sample_fps frames per second of video instead (then
  // num_frames is 0). transformers refuses both at once, and so does g4.
  int64_t num_frames = 32;
  double sample_fps = 0;
};

// The checked options: the "video_processor" object of a model directory's processor_config.json
// when there is one, else the defaults; max_soft_tokens > 0 overrides the file. Unsupported values
// (another resample, a normalisation other than the identity, no rescale) are errors naming the
// file and key.
VideoProcessorOptions load_video_processor_options(const std::string& model_dir, int64_t max_soft_tokens = 0);
void check_video_processor_options(const VideoProcessorOptions& opt, const std::string& where);

// BaseVideoProcessor.sample_frames over a video of `total` frames at `source_fps`:
// torch.arange(0, total, total / n).int() with n = num_frames, or int(total / source_fps * sample_fps)
// when sampling by rate; every frame when sampling is off. n above total (or 0) is an error naming
// `what`, as in transformers.
std::vector<int64_t> sample_frame_indices(int64_t total, const VideoProcessorOptions& opt, double source_fps,
                                          const std::string& what = "video");

// Gemma4Processor.replace_video_token's f"{int(t // 60):02d}:{int(t % 60):02d}" for the frame's
// time t = frame_index / fps, computed as transformers computes it (float32 tensors).
std::string frame_timestamp(int64_t frame_index, double fps);

// A video as decoded frames: image files (JPEG/PNG) in playback order and their frame rate
// (<= 0: unknown, kDefaultVideoFps is used with a logged note). Frames that came in memory (a
// `g4 serve` request's data URL) are their encoded bytes in `encoded`, one per name in `files`
// ("frame 3"), which then only names them in errors.
struct VideoFrames {
  std::vector<std::string> files;
  double fps = 0;
  std::vector<std::string> encoded{};  // {} keeps {files, fps} initialisers warning-free
};

// The frames of a directory: its regular files (names not starting with '.') sorted by name.
// A missing or empty directory is an error naming it.
std::vector<std::string> list_video_frames(const std::string& dir);

struct ProcessedVideo {
  Tensor pixel_values;  // f32 [F, max_patches, 3*p*p], code / 255; padding rows 0
  Tensor position_ids;  // i64 [F, max_patches, 2] = (x, y); padding (-1, -1)
  int64_t soft_tokens_per_frame = 0;
  std::vector<int64_t> frame_indices;   // of the sampled frames among `files`
  std::vector<std::string> timestamps;  // "mm:ss" per sampled frame
  int64_t height = 0, width = 0;        // the frames' size
  int64_t resized_height = 0, resized_width = 0;
};

// Samples, decodes the sampled frames (every listed file must exist, unless the frames are held in
// memory; all sampled frames must have one size), resizes them all to the size the image rules
// give for that size, scales, patchifies and pads each frame. `name` names the video in errors. A
// video without fps is logged (its timestamps assume kDefaultVideoFps) unless log_default_fps is
// false.
ProcessedVideo process_video(const VideoFrames& video, const VideoProcessorOptions& opt,
                             const std::string& name = "video", bool log_default_fps = true);

// process_video without the pixels: the sampled frames, their timestamps, sizes and soft tokens
// per frame (pixel_values and position_ids undefined), with process_video's checks, from
// `frame_size` of each sampled frame, given its index in `video.files` (image_size of its header:
// no pixel is decoded).
ProcessedVideo plan_video(const VideoFrames& video, const VideoProcessorOptions& opt, const std::string& name,
                          const std::function<ImageSize(int64_t frame)>& frame_size, bool log_default_fps = true);

// transformers' batch of videos: pixel_values_videos [V, F, P, D] and video_position_ids
// [V, F, P, 2]. The videos must have the same number of frames (transformers stacks them).
std::pair<Tensor, Tensor> stack_videos(const std::vector<ProcessedVideo>& videos);

}  // namespace g4::io

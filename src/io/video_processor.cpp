#include "io/video_processor.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string_view>

#include "core/error.h"
#include "core/log.h"
#include "io/image.h"
#include "io/json_input.h"

namespace g4::io {

namespace {

// How errors name frame i: inside its video's messages ("NAME: frame F.png is ..."; a frame held in
// memory is named "frame 3" already),
std::string frame_in_video(const VideoFrames& v, int64_t i) {
  return v.encoded.empty() ? "frame " + v.files[size_t(i)] : v.files[size_t(i)];
}

// and on its own, as decoding it reports it: its file, or its video's name and its own.
std::string frame_alone(const VideoFrames& v, int64_t i, const std::string& name) {
  return v.encoded.empty() ? v.files[size_t(i)] : name + " " + v.files[size_t(i)];
}

// The encoded bytes of frame i: those held, or its file's (read into `storage`).
std::string_view frame_bytes(const VideoFrames& v, int64_t i, std::string& storage) {
  if (!v.encoded.empty()) return v.encoded[size_t(i)];
  storage = read_image_file(v.files[size_t(i)]);
  return storage;
}

}  // namespace

void check_video_processor_options(const VideoProcessorOptions& opt, const std::string& where) {
  check_image_processor_options(opt.frame, where);
  G4_CHECK(opt.num_frames >= 0, where, ": num_frames must be positive, got ", opt.num_frames);
  G4_CHECK(std::isfinite(opt.sample_fps) && opt.sample_fps >= 0, where, ": fps must be positive, got ",
           opt.sample_fps);
  G4_CHECK(!opt.sample_frames || (opt.num_frames > 0) != (opt.sample_fps > 0), where,
           ": give exactly one of num_frames and fps to sample frames (transformers takes them as mutually "
           "exclusive), got num_frames ", opt.num_frames, " and fps ", opt.sample_fps);
}

VideoProcessorOptions load_video_processor_options(const std::string& model_dir, int64_t max_soft_tokens) {
  namespace fs = std::filesystem;
  VideoProcessorOptions opt;
  std::string where = "the default video processor options";
  const fs::path path = fs::path(model_dir) / "processor_config.json";
  if (fs::exists(path)) {
    where = path.string();
    const nlohmann::json doc = read_json_file(where, "processor config", kMaxConfigBytes);
    if (doc.is_object() && doc.contains("video_processor") && doc["video_processor"].is_object()) {
      const nlohmann::json& vp = doc["video_processor"];
      opt.frame.max_soft_tokens = json_int(vp, "max_soft_tokens", where, opt.frame.max_soft_tokens);
      opt.frame.patch_size = json_int(vp, "patch_size", where, opt.frame.patch_size);
      opt.frame.pooling_kernel_size = json_int(vp, "pooling_kernel_size", where, opt.frame.pooling_kernel_size);
      const auto flag = [&](const char* key, bool def) {
        if (!vp.contains(key) || vp[key].is_null()) return def;
        G4_CHECK(vp[key].is_boolean(), where, ": video_processor.", key, " must be true or false, got ", vp[key].dump());
        return vp[key].get<bool>();
      };
      opt.sample_frames = flag("do_sample_frames", true);
      if (vp.contains("num_frames"))
        opt.num_frames = vp["num_frames"].is_null() ? 0 : json_int(vp, "num_frames", where, opt.num_frames);
      if (vp.contains("fps") && !vp["fps"].is_null()) opt.sample_fps = json_number(vp, "fps", where, 0.0);
      // Anything else the file may ask for would change pixel_values_videos; g4 implements the defaults.
      G4_CHECK(flag("do_resize", true) && flag("do_rescale", true) && flag("do_convert_rgb", true), where,
               ": video_processor must resize, rescale and convert to RGB (do_resize, do_rescale, do_convert_rgb)");
      G4_CHECK(!vp.contains("resample") || vp["resample"].is_null() ||
                   (vp["resample"].is_number_integer() && vp["resample"].get<int64_t>() == 3),
               where, ": video_processor.resample must be 3 (bicubic), got ", vp["resample"].dump());
      G4_CHECK(!vp.contains("rescale_factor") || std::abs(json_number(vp, "rescale_factor", where, 0.0) - 1.0 / 255.0) < 1e-12,
               where, ": video_processor.rescale_factor must be 1/255, got ", vp["rescale_factor"].dump());
      for (const auto& [key, expected] : {std::pair{"image_mean", 0.0}, std::pair{"image_std", 1.0}}) {
        const double value = expected;  // a lambda may not capture a structured binding before C++20's P1091 in clang
        if (!vp.contains(key) || vp[key].is_null() || !flag("do_normalize", true)) continue;
        const nlohmann::json& list = vp[key];
        const bool identity = list.is_array() && std::all_of(list.begin(), list.end(), [&](const nlohmann::json& x) {
                                return x.is_number() && x.get<double>() == value;
                              });
        G4_CHECK(identity, where, ": video_processor.", key, " must be [", value, ", ", value, ", ", value,
                 "] (Gemma 4 feeds pixels in [0, 1]), got ", list.dump());
      }
    }
  }
  if (max_soft_tokens > 0) opt.frame.max_soft_tokens = max_soft_tokens;
  check_video_processor_options(opt, where);
  return opt;
}

std::vector<int64_t> sample_frame_indices(int64_t total, const VideoProcessorOptions& opt, double source_fps,
                                          const std::string& what) {
  G4_CHECK(total > 0, what, " has no frames");
  std::vector<int64_t> indices;
  if (!opt.sample_frames) {
    for (int64_t i = 0; i < total; ++i) indices.push_back(i);
    return indices;
  }
  int64_t n = opt.num_frames;
  if (opt.sample_fps > 0) {
    G4_CHECK(source_fps > 0, what, ": sampling at ", opt.sample_fps, " frames per second needs the video's fps");
    n = static_cast<int64_t>(static_cast<double>(total) / source_fps * opt.sample_fps);
  }
  G4_CHECK(n > 0, what, ": sampling gives 0 of its ", total, " frames (num_frames ", opt.num_frames, ", fps ",
           opt.sample_fps, ")");
  G4_CHECK(n <= total, what, " can't be sampled: num_frames = ", n, " exceeds its ", total,
           " frames (as transformers refuses it; give at least ", n, " frames, or sample fewer)");
  // torch.arange(0, total, step) with a float step: ceil(total / step) elements in the default dtype
  // float32, each float(0 + step * i) computed in double; .int() truncates.
  const double step = static_cast<double>(total) / static_cast<double>(n);
  const auto count = static_cast<int64_t>(std::ceil(static_cast<double>(total) / step));
  for (int64_t i = 0; i < count; ++i) {
    indices.push_back(static_cast<int64_t>(static_cast<float>(step * double(i))));
    // Rounding can make arange one element longer, ending at `total` (17 frames, num_frames 7):
    // transformers' video[indices] fails there too.
    G4_CHECK(indices.back() < total, what, ": sampling ", n, " of its ", total, " frames gives frame index ",
             indices.back(), " (torch.arange's rounding; transformers fails on it too): ask for another number");
  }
  return indices;
}

std::string frame_timestamp(int64_t frame_index, double fps) {
  // VideoMetadata.timestamps divides the int32 index tensor by fps: float32. Then Python's // and %
  // on those float32 tensors (torch's floor_divide and remainder), and int().
  const float t = static_cast<float>(frame_index) / static_cast<float>(fps);
  const float mod = std::fmod(t, 60.0f);
  const float div = (t - mod) / 60.0f;
  float minutes = std::floor(div);
  if (div - minutes > 0.5f) minutes += 1.0f;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(minutes), static_cast<long long>(mod));
  return buf;
}

std::vector<std::string> list_video_frames(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  G4_CHECK(fs::is_directory(dir, ec), "video frame directory ", dir, " does not exist or is not a directory");
  std::vector<std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.empty() && name[0] != '.' && e.is_regular_file(ec)) files.push_back(e.path().string());
  }
  G4_CHECK(!ec, "video frame directory ", dir, " cannot be read: ", ec.message());
  G4_CHECK(!files.empty(), "video frame directory ", dir, " holds no frame files");
  std::sort(files.begin(), files.end());
  return files;
}

ProcessedVideo plan_video(const VideoFrames& video, const VideoProcessorOptions& opt, const std::string& name,
                          const std::function<ImageSize(int64_t frame)>& frame_size, bool log_default_fps) {
  check_video_processor_options(opt, "video processor");
  const int64_t total = static_cast<int64_t>(video.files.size());
  G4_CHECK(total > 0, name, " has no frames");
  G4_CHECK(std::isfinite(video.fps) && video.fps >= 0, name, ": fps must be positive, got ", video.fps);
  if (!video.encoded.empty()) {
    G4_CHECK(video.encoded.size() == video.files.size(), name, ": ", video.encoded.size(),
             " frames held in memory but ", video.files.size(), " names for them");
  } else {
    for (const std::string& f : video.files) {
      std::error_code ec;
      G4_CHECK(std::filesystem::is_regular_file(f, ec), name, ": frame ", f, " does not exist");
    }
  }
  double fps = video.fps;
  if (fps <= 0) {
    if (log_default_fps)
      G4_LOG(name, ": no fps given for its frames; their timestamps assume ", kDefaultVideoFps,
             " frames per second (as transformers does)");
    fps = kDefaultVideoFps;
  }
  ProcessedVideo out;
  out.frame_indices = sample_frame_indices(total, opt, video.fps > 0 ? video.fps : 0.0, name);
  for (size_t f = 0; f < out.frame_indices.size(); ++f) {
    const int64_t index = out.frame_indices[f];
    const ImageSize size = frame_size(index);
    if (f == 0) {
      const std::string file = frame_alone(video, index, name);
      out.height = size.height;
      out.width = size.width;
      std::tie(out.resized_height, out.resized_width) = image_target_size(size.height, size.width, opt.frame, file);
      out.soft_tokens_per_frame = image_soft_tokens(size.height, size.width, opt.frame, file);
    }
    // transformers holds a video as one [F, 3, H, W] tensor: its frames share one size.
    G4_CHECK(size.height == out.height && size.width == out.width, name, ": ", frame_in_video(video, index), " is ",
             size.width, "x", size.height, ", but the first sampled frame is ", out.width, "x", out.height,
             " (a video's frames have one size)");
    out.timestamps.push_back(frame_timestamp(out.frame_indices[f], fps));
  }
  return out;
}

ProcessedVideo process_video(const VideoFrames& video, const VideoProcessorOptions& opt, const std::string& name,
                             bool log_default_fps) {
  // The plan from the frames' headers, then every sampled frame decoded (and its size checked
  // against the header's, which the plan used).
  ProcessedVideo out = plan_video(
      video, opt, name,
      [&](int64_t i) {
        std::string storage;
        return image_size(frame_bytes(video, i, storage), frame_alone(video, i, name));
      },
      log_default_fps);
  const int64_t F = static_cast<int64_t>(out.frame_indices.size()), P = opt.frame.max_patches(),
                p = opt.frame.patch_size, D = 3 * p * p;
  out.pixel_values = Tensor::zeros({F, P, D}, DType::F32);
  out.position_ids = Tensor::full({F, P, 2}, -1.0, DType::I64);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t index = out.frame_indices[size_t(f)];
    std::string storage;
    const RgbImage frame = decode_image(frame_bytes(video, index, storage), frame_alone(video, index, name));
    G4_CHECK(frame.height == out.height && frame.width == out.width, name, ": ", frame_in_video(video, index),
             " decodes to ", frame.width, "x", frame.height, ", but its header said ", out.width, "x", out.height);
    const RgbImage resized = resize_bicubic_antialias(frame, out.resized_height, out.resized_width);
    write_patches(resized, p, PixelScale::DivideBy255, out.pixel_values.data<float>() + f * P * D,
                  out.position_ids.data<int64_t>() + f * P * 2);
  }
  return out;
}

std::pair<Tensor, Tensor> stack_videos(const std::vector<ProcessedVideo>& videos) {
  G4_CHECK(!videos.empty(), "stack_videos: no videos");
  const Tensor& first = videos[0].pixel_values;
  const auto V = static_cast<int64_t>(videos.size());
  const int64_t F = first.size(0), P = first.size(1), D = first.size(2);
  Tensor values = Tensor::empty({V, F, P, D}, DType::F32), positions = Tensor::empty({V, F, P, 2}, DType::I64);
  for (int64_t v = 0; v < V; ++v) {
    const ProcessedVideo& x = videos[size_t(v)];
    G4_CHECK(x.pixel_values.shape() == first.shape(), "videos of one batch must have the same number of frames and ",
             "patches (transformers stacks them): video ", v, " has pixel values ", x.pixel_values.describe(),
             ", video 0 ", first.describe());
    std::copy_n(x.pixel_values.data<float>(), F * P * D, values.data<float>() + v * F * P * D);
    std::copy_n(x.position_ids.data<int64_t>(), F * P * 2, positions.data<int64_t>() + v * F * P * 2);
  }
  return {values, positions};
}

}  // namespace g4::io

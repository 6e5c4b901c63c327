#include "io/image_processor.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/json_input.h"

namespace g4::io {

namespace {

// One axis of the resampler: for output i, the taps start at first[i] and weights[i*kmax ..] hold
// count[i] int16 weights in fixed point with `precision` fractional bits.
struct AxisFilter {
  std::vector<int64_t> first, count;
  std::vector<int32_t> weights;
  int64_t kmax = 0;
  int precision = 0;
};

double keys_cubic(double x) {
  constexpr double a = -0.5;  // torch's antialiased bicubic (PIL's); its non-antialiased path uses -0.75
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

// torch's _compute_indices_min_size_weights_aa and _compute_index_ranges_int16_weights
// (align_corners false, no explicit scale): double weights normalised per output, then one
// precision for the whole axis, the largest (< 22) at which the largest weight stays below 2^15.
AxisFilter make_axis_filter(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double support = scale >= 1.0 ? 2.0 * scale : 2.0;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  AxisFilter f;
  f.kmax = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  f.first.resize(size_t(out_size));
  f.count.resize(size_t(out_size));
  std::vector<double> w(size_t(out_size * f.kmax), 0.0);
  double wt_max = 0.0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const int64_t lo = std::max(static_cast<int64_t>(center - support + 0.5), int64_t(0));
    const int64_t n = std::clamp(std::min(static_cast<int64_t>(center + support + 0.5), in_size) - lo, int64_t(0), f.kmax);
    double* wi = &w[size_t(i * f.kmax)];
    double total = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      wi[j] = keys_cubic((static_cast<double>(j + lo) - center + 0.5) * invscale);
      total += wi[j];
    }
    if (total != 0.0)
      for (int64_t j = 0; j < n; ++j) {
        wi[j] /= total;
        wt_max = std::max(wt_max, wi[j]);
      }
    f.first[size_t(i)] = lo;
    f.count[size_t(i)] = n;
  }
  for (f.precision = 0; f.precision < 22; ++f.precision)
    if (static_cast<int>(0.5 + wt_max * double(1 << (f.precision + 1))) >= (1 << 15)) break;
  f.weights.resize(w.size());
  for (size_t k = 0; k < w.size(); ++k) {
    const double v = w[k] * double(1 << f.precision);
    // int16 as torch stores them (the value always fits: the precision was chosen for that).
    f.weights[k] = static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return f;
}

uint8_t fixed_to_u8(int64_t acc, int precision) {
  return static_cast<uint8_t>(std::clamp<int64_t>(acc >> precision, 0, 255));
}

// One pass along x (rows stay) or along y (columns stay) over an interleaved RGB buffer.
std::vector<uint8_t> resample_axis(const std::vector<uint8_t>& in, int64_t H, int64_t W, const AxisFilter& f,
                                   bool along_x, int64_t out_len) {
  const int64_t oH = along_x ? H : out_len, oW = along_x ? out_len : W;
  std::vector<uint8_t> out(size_t(oH * oW * 3));
  const int64_t tap_stride = along_x ? 3 : W * 3;
  const int64_t rounding = int64_t(1) << (f.precision - 1);
  for (int64_t y = 0; y < oH; ++y)
    for (int64_t x = 0; x < oW; ++x) {
      const int64_t o = along_x ? x : y;
      const int32_t* k = &f.weights[size_t(o * f.kmax)];
      const uint8_t* src = along_x ? &in[size_t((y * W + f.first[size_t(o)]) * 3)]
                                   : &in[size_t((f.first[size_t(o)] * W + x) * 3)];
      for (int c = 0; c < 3; ++c) {
        int64_t acc = rounding;
        for (int64_t j = 0; j < f.count[size_t(o)]; ++j) acc += int64_t(k[j]) * src[j * tap_stride + c];
        out[size_t((y * oW + x) * 3 + c)] = fixed_to_u8(acc, f.precision);
      }
    }
  return out;
}

}  // namespace

bool is_soft_token_budget(int64_t n) {
  static constexpr int64_t kBudgets[] = {70, 140, 280, 560, 1120};
  return std::find(std::begin(kBudgets), std::end(kBudgets), n) != std::end(kBudgets);
}

void check_image_processor_options(const ImageProcessorOptions& opt, const std::string& where) {
  G4_CHECK(is_soft_token_budget(opt.max_soft_tokens), where,
           ": max_soft_tokens must be one of 70, 140, 280, 560, 1120 (as transformers requires), got ",
           opt.max_soft_tokens);
  G4_CHECK(opt.patch_size > 0 && opt.patch_size <= 64, where, ": patch_size must be in [1, 64], got ", opt.patch_size);
  G4_CHECK(opt.pooling_kernel_size > 0 && opt.pooling_kernel_size <= 8, where,
           ": pooling_kernel_size must be in [1, 8], got ", opt.pooling_kernel_size);
}

ImageProcessorOptions load_image_processor_options(const std::string& model_dir, int64_t max_soft_tokens) {
  namespace fs = std::filesystem;
  ImageProcessorOptions opt;
  std::string where = "the default image processor options";
  for (const char* name : {"processor_config.json", "preprocessor_config.json"}) {
    const fs::path path = fs::path(model_dir) / name;
    if (!fs::exists(path)) continue;
    where = path.string();
    const nlohmann::json doc = read_json_file(where, "processor config", kMaxConfigBytes);
    const nlohmann::json* ip = &doc;
    if (doc.is_object() && doc.contains("image_processor")) ip = &doc["image_processor"];
    if (!ip->is_object()) break;
    opt.max_soft_tokens = json_int(*ip, "max_soft_tokens", where, opt.max_soft_tokens);
    opt.patch_size = json_int(*ip, "patch_size", where, opt.patch_size);
    opt.pooling_kernel_size = json_int(*ip, "pooling_kernel_size", where, opt.pooling_kernel_size);
    // Anything else the file may ask for would change pixel_values; g4 implements the defaults.
    // (A value of another type, or an integer that only narrows to 3, is refused too: found reading
    // the parser for fuzz/processor_config.cpp, it was taken for the default.)
    const nlohmann::json none;
    const nlohmann::json& normalize = ip->contains("do_normalize") ? (*ip)["do_normalize"] : none;
    G4_CHECK(normalize.is_null() || (normalize.is_boolean() && !normalize.get<bool>()), where,
             ": do_normalize must be false (Gemma 4 feeds pixels in [0, 1]), got ", normalize.dump());
    const nlohmann::json& resample = ip->contains("resample") ? (*ip)["resample"] : none;
    G4_CHECK(resample.is_null() || (resample.is_number_integer() && resample.get<int64_t>() == 3), where,
             ": resample must be 3 (bicubic), got ", resample.dump());
    break;
  }
  if (max_soft_tokens > 0) opt.max_soft_tokens = max_soft_tokens;
  check_image_processor_options(opt, where);
  return opt;
}

ImageProcessorOptions model_image_processor_options(const std::string& model_dir, const VisionConfig& vision,
                                                    int64_t max_soft_tokens) {
  namespace fs = std::filesystem;
  const bool has_file = !model_dir.empty() && (fs::exists(fs::path(model_dir) / "processor_config.json") ||
                                               fs::exists(fs::path(model_dir) / "preprocessor_config.json"));
  if (!has_file) {
    ImageProcessorOptions opt;
    opt.patch_size = vision.patch_size;
    opt.pooling_kernel_size = vision.pooling_kernel_size;
    opt.position_embedding_size = vision.position_embedding_size;
    if (max_soft_tokens > 0) opt.max_soft_tokens = max_soft_tokens;
    check_image_processor_options(opt, "the default image processor options");
    return opt;
  }
  ImageProcessorOptions opt = load_image_processor_options(model_dir, max_soft_tokens);
  opt.position_embedding_size = vision.position_embedding_size;
  G4_CHECK(opt.patch_size == vision.patch_size && opt.pooling_kernel_size == vision.pooling_kernel_size, model_dir,
           ": the processor config's patch_size ", opt.patch_size, " and pooling_kernel_size ", opt.pooling_kernel_size,
           " differ from the vision tower's ", vision.patch_size, " and ", vision.pooling_kernel_size);
  return opt;
}

std::pair<int64_t, int64_t> image_target_size(int64_t height, int64_t width, const ImageProcessorOptions& opt,
                                              const std::string& what) {
  const int64_t max_patches = opt.max_patches();
  const double target_px = static_cast<double>(max_patches * opt.patch_size * opt.patch_size);
  const double factor = std::sqrt(target_px / static_cast<double>(height * width));
  const int64_t side = opt.pooling_kernel_size * opt.patch_size;
  int64_t th = static_cast<int64_t>(std::floor(factor * static_cast<double>(height) / static_cast<double>(side))) * side;
  int64_t tw = static_cast<int64_t>(std::floor(factor * static_cast<double>(width) / static_cast<double>(side))) * side;
  G4_CHECK(th > 0 || tw > 0, "image ", what, " (", width, "x", height, ") cannot be resized: both sides round to 0");
  const int64_t max_side = (max_patches / (opt.pooling_kernel_size * opt.pooling_kernel_size)) * side;
  if (th == 0) {
    th = side;
    tw = std::min((width / height) * side, max_side);  // floor(w / h) of positive integers
  } else if (tw == 0) {
    tw = side;
    th = std::min((height / width) * side, max_side);
  }
  G4_CHECK(static_cast<double>(th * tw) <= target_px, "image ", what, " (", width, "x", height, ") resized to ", tw,
           "x", th, " exceeds the budget of ", max_patches, " patches");
  const int64_t E = opt.position_embedding_size;
  G4_CHECK(E <= 0 || (th / opt.patch_size <= E && tw / opt.patch_size <= E), "image ", what, " (", width, "x",
           height, ") resized to ", tw, "x", th, " is ", tw / opt.patch_size, "x", th / opt.patch_size,
           " patches, more along a side than the vision tower's position_embedding_size ", E,
           " (an image this thin needs a smaller soft-token budget or a wider crop)");
  return {th, tw};
}

RgbImage resize_bicubic_antialias(const RgbImage& in, int64_t height, int64_t width) {
  RgbImage out{in.height, in.width, in.pixels};
  if (width != in.width) {
    out.pixels = resample_axis(out.pixels, out.height, out.width, make_axis_filter(in.width, width), true, width);
    out.width = width;
  }
  if (height != in.height) {
    out.pixels = resample_axis(out.pixels, out.height, out.width, make_axis_filter(in.height, height), false, height);
    out.height = height;
  }
  return out;
}

float scaled_pixel(uint8_t code, PixelScale scale) {
  // torch multiplies in f32 by float(1/255) (rescale); the fused normalize divides by 255 in f32.
  return scale == PixelScale::MultiplyByInverse ? static_cast<float>(code) * static_cast<float>(1.0 / 255.0)
                                                : static_cast<float>(code) / 255.0f;
}

int64_t image_soft_tokens(int64_t height, int64_t width, const ImageProcessorOptions& opt, const std::string& what) {
  const auto [th, tw] = image_target_size(height, width, opt, what);
  const int64_t p = opt.patch_size, k = opt.pooling_kernel_size;
  return (th / p) * (tw / p) / (k * k);
}

int64_t write_patches(const RgbImage& resized, int64_t patch_size, PixelScale scale, float* values,
                      int64_t* positions) {
  const int64_t p = patch_size, ph = resized.height / p, pw = resized.width / p, D = 3 * p * p;
  for (int64_t py = 0; py < ph; ++py)
    for (int64_t px = 0; px < pw; ++px) {
      const int64_t patch = py * pw + px;
      positions[patch * 2] = px;
      positions[patch * 2 + 1] = py;
      float* dst = values + patch * D;
      for (int64_t dy = 0; dy < p; ++dy) {
        const uint8_t* row = &resized.pixels[size_t(((py * p + dy) * resized.width + px * p) * 3)];
        for (int64_t k = 0; k < p * 3; ++k) dst[dy * p * 3 + k] = scaled_pixel(row[k], scale);
      }
    }
  return ph * pw;
}

ProcessedImages process_images(const std::vector<RgbImage>& images, const ImageProcessorOptions& opt,
                               const std::vector<std::string>& names) {
  check_image_processor_options(opt, "image processor");
  const int64_t N = static_cast<int64_t>(images.size()), P = opt.max_patches(), p = opt.patch_size;
  const int64_t D = 3 * p * p;
  ProcessedImages out;
  out.pixel_values = Tensor::zeros({N, P, D}, DType::F32);
  out.image_position_ids = Tensor::full({N, P, 2}, -1.0, DType::I64);
  for (int64_t n = 0; n < N; ++n) {
    const RgbImage& img = images[size_t(n)];
    const std::string name = n < static_cast<int64_t>(names.size()) ? names[size_t(n)] : "#" + std::to_string(n);
    G4_CHECK(img.height > 0 && img.width > 0 && img.pixels.size() == size_t(img.height * img.width * 3), "image ",
             name, " has ", img.pixels.size(), " bytes for ", img.width, "x", img.height, " RGB pixels");
    const auto [th, tw] = image_target_size(img.height, img.width, opt, name);
    const RgbImage resized = resize_bicubic_antialias(img, th, tw);
    const int64_t patches = write_patches(resized, p, PixelScale::MultiplyByInverse,
                                          out.pixel_values.data<float>() + n * P * D,
                                          out.image_position_ids.data<int64_t>() + n * P * 2);
    out.num_soft_tokens.push_back(patches / (opt.pooling_kernel_size * opt.pooling_kernel_size));
    out.resized_hw.emplace_back(th, tw);
  }
  return out;
}

}  // namespace g4::io

// Gemma 4's image processor (transformers' Gemma4ImageProcessor, the default torchvision backend):
// RGB8 images -> pixel_values [N, max_patches, 3*16*16], image_position_ids [N, max_patches, 2]
// and the number of soft tokens each image expands to in the prompt. MULTIMODAL.md section 2;
// docs/multimodal.md "Images".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "io/image.h"

namespace g4::io {

struct ImageProcessorOptions {
  int64_t max_soft_tokens = 280;  // one of 70, 140, 280, 560, 1120
  int64_t patch_size = 16;
  int64_t pooling_kernel_size = 3;
  // The vision tower's position_embedding_size when the options are a model's
  // (model_image_processor_options), 0 otherwise: a resized image with more patches than this
  // along a side has positions the tower has no embedding for. Only a tiny tower meets it (the
  // released 10240 hold the longest side any budget gives, 3360 patches).
  int64_t position_embedding_size = 0;
  int64_t max_patches() const { return max_soft_tokens * pooling_kernel_size * pooling_kernel_size; }
};

// The checked options: the "image_processor" object of a model directory's processor_config.json
// (or a preprocessor_config.json holding the keys directly) when there is one, else the defaults;
// max_soft_tokens > 0 overrides the file. Unsupported values are errors naming the file and key.
ImageProcessorOptions load_image_processor_options(const std::string& model_dir, int64_t max_soft_tokens = 0);
void check_image_processor_options(const ImageProcessorOptions& opt, const std::string& where);
// The image processor of a model directory for its vision tower: the directory's processor config
// when it has one (its patch_size and pooling_kernel_size must be the tower's), else the defaults
// with the tower's. max_soft_tokens > 0 overrides the budget.
ImageProcessorOptions model_image_processor_options(const std::string& model_dir, const VisionConfig& vision,
                                                    int64_t max_soft_tokens = 0);
// Whether n is one of the soft-token budgets transformers accepts: 70, 140, 280, 560, 1120.
bool is_soft_token_budget(int64_t n);

// get_aspect_ratio_preserving_size: the size (height, width) an h x w image is resized to, both
// multiples of patch_size * pooling_kernel_size, as close to the patch budget as the aspect ratio
// allows. Errors (an image too thin for the budget) name `what`.
std::pair<int64_t, int64_t> image_target_size(int64_t height, int64_t width, const ImageProcessorOptions& opt,
                                              const std::string& what = "image");

// The soft tokens an h x w image expands to: (th/p)*(tw/p)/k^2 at its image_target_size, what
// process_images counts, from the size alone (training data counts them before using the pixels).
int64_t image_soft_tokens(int64_t height, int64_t width, const ImageProcessorOptions& opt,
                          const std::string& what = "image");

// torchvision's resize(uint8 tensor, BICUBIC, antialias=True) on the CPU: PIL-style separable
// filtering (Keys cubic, a = -0.5, support widened by the downscale factor), weights in int16
// fixed point, the horizontal pass first, each pass rounded and clamped to uint8.
RgbImage resize_bicubic_antialias(const RgbImage& in, int64_t height, int64_t width);

// How uint8 codes become pixel values in [0, 1]. Images: rescale, code * float(1/255) in f32.
// Video frames: Gemma4VideoProcessor has do_normalize true with mean 0 and std 1, which transformers
// fuses with the rescale into normalize(x, 0, 255): code / 255 in f32, one ulp away from the image
// value for some codes (MULTIMODAL.md 5.1).
enum class PixelScale { MultiplyByInverse, DivideBy255 };
float scaled_pixel(uint8_t code, PixelScale scale);

// Writes the patches of an image already at its target size (both sides multiples of patch_size),
// row-major over the patches with (dy*p + dx)*3 + c inside a patch, to values [n, 3*p*p], and
// their (x, y) to positions [n, 2]; returns n.
int64_t write_patches(const RgbImage& resized, int64_t patch_size, PixelScale scale, float* values,
                      int64_t* positions);

struct ProcessedImages {
  Tensor pixel_values;        // f32 [N, max_patches, 3*p*p], in [0, 1]; padding rows 0
  Tensor image_position_ids;  // i64 [N, max_patches, 2] = (x, y) per patch; padding (-1, -1)
  std::vector<int64_t> num_soft_tokens;                  // per image: (th/p)*(tw/p)/k^2
  std::vector<std::pair<int64_t, int64_t>> resized_hw;  // per image
};

// Resize (skipped when the size already fits), rescale by 1/255 in f32 (torch's uint8 * float),
// patchify (patches row-major, (dy*p + dx)*3 + c within a patch), pad to max_patches.
// `names` (optional, one per image) name the images in errors.
ProcessedImages process_images(const std::vector<RgbImage>& images, const ImageProcessorOptions& opt,
                               const std::vector<std::string>& names = {});

}  // namespace g4::io

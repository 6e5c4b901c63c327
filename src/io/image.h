// Image files (JPEG through libjpeg-turbo, PNG through libpng) decoded to 8-bit RGB, as
// transformers' load_image + the Gemma 4 processor's do_convert_rgb see them (Pillow's
// ImageOps.exif_transpose, then Image.convert("RGB")). docs/multimodal.md "Images".
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace g4::io {

struct RgbImage {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3], row-major
  uint8_t at(int64_t y, int64_t x, int c) const { return pixels[static_cast<size_t>((y * width + x) * 3 + c)]; }
};

// Conversions follow Pillow's convert("RGB"): alpha is dropped, not composited (checked on the
// processor fixture's RGBA image); grey is replicated; palettes are looked up; 16-bit RGB keeps
// the high byte of each sample while 16-bit grey (Pillow's mode I;16) is clipped to 255. An EXIF
// orientation (JPEG APP1, PNG eXIf) is applied as exif_transpose applies it; CMYK JPEGs convert
// with Pillow's formula. Other formats are refused. Errors name `what` (the file).
RgbImage decode_image(std::string_view bytes, const std::string& what);
RgbImage read_image(const std::string& path);
// The bytes of an image file (read_image reads them so: a regular file of at most 512 MiB).
std::string read_image_file(const std::string& path);

// The size decode_image gives (EXIF orientation applied: 5..8 swap height and width), from the
// header alone: no pixel is decoded (what training data needs to count an image's soft tokens
// before its pixels are used). Errors as decode_image's for what the header shows.
struct ImageSize {
  int64_t height = 0, width = 0;
};
ImageSize image_size(std::string_view bytes, const std::string& what);

}  // namespace g4::io

// RGB8 PNG files of random pixels written with libpng, for tests that need image files on disk
// (video frames, images in chat data). Returns the pixels written, as read_image decodes them.
#pragma once
#include <png.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/image.h"

namespace g4::test {

inline io::RgbImage write_random_png(const std::string& path, int64_t height, int64_t width, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, 255);
  io::RgbImage img{height, width, std::vector<uint8_t>(static_cast<size_t>(height * width * 3))};
  for (uint8_t& v : img.pixels) v = static_cast<uint8_t>(d(rng));
  FILE* f = std::fopen(path.c_str(), "wb");
  G4_CHECK(f != nullptr, "cannot write ", path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < height; ++y) png_write_row(png, &img.pixels[static_cast<size_t>(y * width * 3)]);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
  return img;
}

}  // namespace g4::test

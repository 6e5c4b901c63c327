#include "io/image.h"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE declared first
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstring>
#include <string>

#include "core/error.h"
#include "io/json_input.h"

namespace g4::io {

namespace {

// 67 M pixels: more than camera photos have (the processor shrinks them to at most 1120 soft
// tokens anyway); a header claiming more is refused before anything is allocated, which keeps one
// decode under 0.5 GB (the fuzz targets' allocation limit).
constexpr int64_t kMaxImagePixels = int64_t(1) << 26;
constexpr size_t kMaxImageFileBytes = 512 * kMiB;

void check_size(int64_t height, int64_t width, const std::string& what) {
  G4_CHECK(height > 0 && width > 0 && height * width <= kMaxImagePixels, "image ", what, " has an unsupported size ",
           width, "x", height, " (at most ", kMaxImagePixels, " pixels)");
}

// ---- EXIF orientation (the TIFF structure inside JPEG APP1 "Exif\0\0" or a PNG eXIf chunk)

uint32_t read_u(const uint8_t* p, int bytes, bool big_endian) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint32_t(p[big_endian ? i : bytes - 1 - i]) << (8 * (bytes - 1 - i));
  return v;
}

// The Orientation tag (0x0112) of IFD0, or 1 where there is none or the block is malformed: Pillow
// also ignores EXIF it cannot read rather than refusing the image.
int exif_orientation(const uint8_t* tiff, size_t n) {
  if (n < 8) return 1;
  bool big;
  if (tiff[0] == 'I' && tiff[1] == 'I') big = false;
  else if (tiff[0] == 'M' && tiff[1] == 'M') big = true;
  else return 1;
  if (read_u(tiff + 2, 2, big) != 42) return 1;
  const uint32_t ifd = read_u(tiff + 4, 4, big);
  if (ifd > n || n - ifd < 2) return 1;
  const uint32_t entries = read_u(tiff + ifd, 2, big);
  for (uint32_t i = 0; i < entries; ++i) {
    const size_t at = size_t(ifd) + 2 + size_t(i) * 12;
    if (at + 12 > n) return 1;
    if (read_u(tiff + at, 2, big) != 0x0112) continue;
    const uint32_t type = read_u(tiff + at + 2, 2, big);
    if (type == 3) return static_cast<int>(read_u(tiff + at + 8, 2, big));  // SHORT
    if (type == 4) return static_cast<int>(read_u(tiff + at + 8, 4, big));  // LONG
    return 1;
  }
  return 1;
}

// ImageOps.exif_transpose: orientations 2..8 map to one of the seven flips/rotations (5, 6, 7 and
// 8 swap height and width); others leave the image as it is.
RgbImage apply_orientation(RgbImage in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const int64_t H = in.height, W = in.width;
  const bool swap = orientation >= 5;
  RgbImage out;
  out.height = swap ? W : H;
  out.width = swap ? H : W;
  out.pixels.resize(in.pixels.size());
  for (int64_t y = 0; y < out.height; ++y)
    for (int64_t x = 0; x < out.width; ++x) {
      int64_t sy = 0, sx = 0;  // the source pixel of output (y, x)
      switch (orientation) {
        case 2: sy = y, sx = W - 1 - x; break;              // mirror left-right
        case 3: sy = H - 1 - y, sx = W - 1 - x; break;      // rotate 180
        case 4: sy = H - 1 - y, sx = x; break;              // mirror top-bottom
        case 5: sy = x, sx = y; break;                      // transpose
        case 6: sy = H - 1 - x, sx = y; break;              // rotate 90 clockwise
        case 7: sy = H - 1 - x, sx = W - 1 - y; break;      // transverse
        default: sy = x, sx = W - 1 - y; break;             // 8: rotate 90 counter-clockwise
      }
      std::memcpy(&out.pixels[size_t((y * out.width + x) * 3)], &in.pixels[size_t((sy * W + sx) * 3)], 3);
    }
  return out;
}

// ---- JPEG. libjpeg reports errors through a callback that must not return: it longjmps back to
// the one function below that calls libjpeg, which holds no C++ object, and the message is turned
// into a g4::Error by the caller.

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
  char corrupt[JMSG_LENGTH_MAX];  // the first warning that the entropy-coded data is damaged, or ""
};

extern "C" void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// libjpeg pads a file that ends early with gray and only warns; Pillow refuses it ("image file is
// truncated"), so that warning is remembered. Damaged entropy-coded data (a bad Huffman code, a
// marker inside the scan, a lost restart marker) also only warns, and libjpeg then fills the rest
// with gray or decodes garbage; Pillow passes those on as pixels, g4 refuses them, since a model
// trained or prompted on them would see something other than the picture without a word. Other
// warnings (extraneous bytes between markers) pass, as in Pillow.
extern "C" void jpeg_on_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level >= 0) return;
  const int code = cinfo->err->msg_code;
  if (code == JWRN_JPEG_EOF) err->truncated = true;
  if ((code == JWRN_HUFF_BAD_CODE || code == JWRN_HIT_MARKER || code == JWRN_MUST_RESYNC) && !err->corrupt[0])
    (*cinfo->err->format_message)(cinfo, err->corrupt);
}

struct JpegResult {
  int64_t height = 0, width = 0;
  int orientation = 1;
  bool cmyk = false, adobe = false;
};

// Returns false with err.message set on a libjpeg error. Only libjpeg's frames lie between the
// setjmp and a longjmp, so no C++ destructor is skipped; `pixels` belongs to the caller.
// header_only: stops after the header (size, orientation, colour space); no pixel is decoded.
bool jpeg_decode(const uint8_t* data, size_t n, JpegError& err, JpegResult& res, std::vector<uint8_t>& pixels,
                 int64_t max_pixels, bool header_only = false) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_message;
  err.truncated = false;
  err.corrupt[0] = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(n));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      res.orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  res.height = cinfo.image_height;
  res.width = cinfo.image_width;
  res.cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  res.adobe = cinfo.saw_Adobe_marker;
  if (header_only || res.height <= 0 || res.width <= 0 || res.height * res.width > max_pixels) {
    jpeg_destroy_decompress(&cinfo);
    return true;  // the caller refuses the size
  }
  // Pillow's defaults: RGB output (grey replicated) or CMYK as stored, the accurate integer IDCT,
  // fancy upsampling.
  const size_t channels = res.cmyk ? 4 : 3;
  cinfo.out_color_space = res.cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);
  pixels.resize(size_t(res.height * res.width) * channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = pixels.data() + size_t(cinfo.output_scanline) * size_t(res.width) * channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

// Pillow reads an Adobe CMYK JPEG as inverted CMYK ("CMYK;I"), then convert("RGB") computes
// (255 - k) - c * (255 - k) / 255 per channel with its rounded integer division by 255.
void cmyk_to_rgb(std::vector<uint8_t>& px, bool inverted) {
  const size_t n = px.size() / 4;
  for (size_t i = 0; i < n; ++i) {
    int v[4];
    for (int c = 0; c < 4; ++c) v[c] = inverted ? 255 - px[4 * i + size_t(c)] : px[4 * i + size_t(c)];
    const int nk = 255 - v[3];
    for (int c = 0; c < 3; ++c) {
      const int t = v[c] * nk + 128;
      px[3 * i + size_t(c)] = static_cast<uint8_t>(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
    }
  }
  px.resize(n * 3);
}

RgbImage decode_jpeg(std::string_view bytes, const std::string& what) {
  JpegError err{};
  JpegResult res;
  RgbImage img;
  if (!jpeg_decode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), err, res, img.pixels,
                   kMaxImagePixels))
    G4_FAIL("JPEG image ", what, " cannot be decoded: ", err.message);
  check_size(res.height, res.width, what);
  G4_CHECK(!err.truncated, "JPEG image ", what, " is truncated (its data ends before the image does)");
  G4_CHECK(!err.corrupt[0], "JPEG image ", what, " has corrupt image data (libjpeg: ", err.corrupt, ")");
  img.height = res.height;
  img.width = res.width;
  if (res.cmyk) cmyk_to_rgb(img.pixels, res.adobe);
  return apply_orientation(std::move(img), res.orientation);
}

// ---- PNG, with the same longjmp discipline as JPEG.

struct PngReader {
  const uint8_t* data;
  size_t size, pos;
  char message[256];
};

extern "C" void png_on_error(png_structp png, png_const_charp msg) {
  auto* r = static_cast<PngReader*>(png_get_error_ptr(png));
  std::snprintf(r->message, sizeof(r->message), "%s", msg);
  png_longjmp(png, 1);
}

extern "C" void png_on_warning(png_structp, png_const_charp) {}

extern "C" void png_read_bytes(png_structp png, png_bytep out, size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->size - r->pos < n) png_error(png, "the file ends early (truncated)");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

struct PngResult {
  int64_t height = 0, width = 0;
  int orientation = 1;
};

// Whether every chunk up to IEND fits in the file (else reader.message says which does not).
// libpng allocates a chunk's declared length before it reads the chunk: a 153-byte file declaring
// a 1 GiB eXIf chunk made it allocate 1 GiB, only to find the file ends early (fuzz_image_decode,
// 2026-12-05).
bool png_chunks_fit(PngReader& reader) {
  size_t pos = 8;  // after the signature
  while (reader.size - pos >= 8) {
    const uint8_t* c = reader.data + pos;
    const uint64_t length = (uint64_t{c[0]} << 24) | (uint64_t{c[1]} << 16) | (uint64_t{c[2]} << 8) | c[3];
    // A chunk is its length, type, data and CRC: 12 bytes more than its data.
    if (length + 12 > reader.size - pos) {
      std::string name;  // a corrupt type may hold any bytes
      for (int i = 4; i < 8; ++i) name += std::isprint(c[i]) ? static_cast<char>(c[i]) : '?';
      std::snprintf(reader.message, sizeof(reader.message),
                    "chunk '%s' at byte %zu declares %llu bytes of data, past the end of the file (%zu bytes): the "
                    "file is truncated or corrupt",
                    name.c_str(), pos, static_cast<unsigned long long>(length), reader.size);
      return false;
    }
    if (std::memcmp(c + 4, "IEND", 4) == 0) break;
    pos += length + 12;
  }
  return true;
}

// header_only: stops after the chunks before the image data (size, eXIf); no pixel is decoded.
bool png_decode(PngReader& reader, PngResult& res, std::vector<uint8_t>& pixels, std::vector<uint8_t>& row,
                int64_t max_pixels, bool header_only = false) {
  if (!png_chunks_fit(reader)) return false;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, png_on_error, png_on_warning);
  if (!png) {
    std::snprintf(reader.message, sizeof(reader.message), "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  if (!info) png_error(png, "out of memory");
  png_set_read_fn(png, &reader, png_read_bytes);
  png_read_info(png, info);
  res.width = png_get_image_width(png, info);
  res.height = png_get_image_height(png, info);
  if (res.height * res.width > max_pixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    return true;  // the caller refuses the size
  }
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_size, &exif) && exif) res.orientation = exif_orientation(exif, exif_size);
  if (header_only) {
    png_destroy_read_struct(&png, &info, nullptr);
    return true;
  }

  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  // Pillow opens 16-bit grey as mode I;16, whose conversion to RGB clips at 255; every other
  // 16-bit mode keeps the high byte of each sample.
  const bool grey16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16 && !grey16) png_set_strip_16(png);
  if (!grey16 && (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)) png_set_gray_to_rgb(png);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t channels = png_get_channels(png, info), rowbytes = png_get_rowbytes(png, info);
  const size_t W = size_t(res.width), H = size_t(res.height);
  if (grey16 ? (channels != 1 || rowbytes != W * 2) : ((channels != 3 && channels != 4) || rowbytes != W * channels))
    png_error(png, "unexpected pixel layout after conversion");
  // Interlaced files are read into the whole image at its decoded layout, then converted.
  row.resize(rowbytes * (passes > 1 ? H : 1));
  pixels.resize(H * W * 3);
  for (size_t y = 0; y < H * size_t(passes > 1 ? passes : 1); ++y) {
    const size_t line = y % H;
    png_bytep dst = row.data() + (passes > 1 ? line * rowbytes : 0);
    png_read_row(png, dst, nullptr);
    if (passes > 1 && y < H * size_t(passes) - H) continue;
    uint8_t* out = pixels.data() + line * W * 3;
    for (size_t x = 0; x < W; ++x) {
      if (grey16) {
        const unsigned v = (unsigned(dst[2 * x]) << 8) | dst[2 * x + 1];
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = static_cast<uint8_t>(v > 255 ? 255 : v);
      } else {
        std::memcpy(out + 3 * x, dst + channels * x, 3);  // alpha, if any, is dropped
      }
    }
  }
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

RgbImage decode_png(std::string_view bytes, const std::string& what) {
  PngReader reader{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, {}};
  PngResult res;
  RgbImage img;
  std::vector<uint8_t> row;
  if (!png_decode(reader, res, img.pixels, row, kMaxImagePixels))
    G4_FAIL("PNG image ", what, " cannot be decoded: ", reader.message);
  check_size(res.height, res.width, what);
  img.height = res.height;
  img.width = res.width;
  return apply_orientation(std::move(img), res.orientation);
}

// The size apply_orientation gives an image of height x width.
ImageSize oriented_size(int64_t height, int64_t width, int orientation) {
  const bool swap = orientation >= 5 && orientation <= 8;
  return swap ? ImageSize{width, height} : ImageSize{height, width};
}

}  // namespace

ImageSize image_size(std::string_view bytes, const std::string& what) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<uint8_t> none;
  if (bytes.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) {
    JpegError err{};
    JpegResult res;
    if (!jpeg_decode(b, bytes.size(), err, res, none, kMaxImagePixels, /*header_only=*/true))
      G4_FAIL("JPEG image ", what, " cannot be decoded: ", err.message);
    check_size(res.height, res.width, what);
    return oriented_size(res.height, res.width, res.orientation);
  }
  if (bytes.size() >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) {
    PngReader reader{b, bytes.size(), 0, {}};
    PngResult res;
    std::vector<uint8_t> row;
    if (!png_decode(reader, res, none, row, kMaxImagePixels, /*header_only=*/true))
      G4_FAIL("PNG image ", what, " cannot be decoded: ", reader.message);
    check_size(res.height, res.width, what);
    return oriented_size(res.height, res.width, res.orientation);
  }
  G4_FAIL("image ", what, " is neither a JPEG nor a PNG file (g4 reads those two formats)");
}

RgbImage decode_image(std::string_view bytes, const std::string& what) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return decode_jpeg(bytes, what);
  if (bytes.size() >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return decode_png(bytes, what);
  G4_FAIL("image ", what, " is neither a JPEG nor a PNG file (g4 reads those two formats)");
}

std::string read_image_file(const std::string& path) { return read_regular_file(path, "image", kMaxImageFileBytes); }

RgbImage read_image(const std::string& path) {
  return decode_image(read_image_file(path), path);
}

}  // namespace g4::io

// Image decoding and the Gemma 4 image processor against transformers 5.17 (Pillow decoding,
// torchvision resize): the processor fixture's three images (reference-image.safetensors, a
// subset of shared/fixtures/hf-gemma4-mm/processor, see its README), the spec's size table, images
// written here with libjpeg/libpng (conversions, EXIF orientation) and bad files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
// clang-format off
#include <jpeglib.h>  // after <cstdio>, which it needs
// clang-format on
#include <png.h>
#include <random>
#include <vector>

#include "io/image.h"
#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "support/error_message.h"

namespace g4 {
namespace {

std::string processor_dir() { return test::data_dir() + "/hf-gemma4-mm/processor"; }

io::SafetensorsReader reference() {
  return io::SafetensorsReader::open(processor_dir() + "/reference-image.safetensors");
}

struct FixtureImage {
  const char* key;
  const char* file;
  int64_t height, width;
};
constexpr FixtureImage kImages[] = {
    {"png", "scene_333x517.png", 517, 333}, {"jpg", "scene_1200x280.jpg", 280, 1200}, {"rgba", "rgba_97x150.png", 150, 97}};

io::RgbImage random_image(int64_t h, int64_t w, std::mt19937& rng) {
  io::RgbImage img{h, w, std::vector<uint8_t>(size_t(h * w * 3))};
  std::uniform_int_distribution<int> d(0, 255);
  for (auto& v : img.pixels) v = static_cast<uint8_t>(d(rng));
  return img;
}

// ---------------------------------------------------------------------------------------------
// Decoding

TEST(ImageDecode, FixtureImagesEqualPillow) {
  const io::SafetensorsReader ref = reference();
  for (const FixtureImage& f : kImages) {
    const io::RgbImage img = io::read_image(processor_dir() + "/" + f.file);
    ASSERT_EQ(img.height, f.height) << f.file;
    ASSERT_EQ(img.width, f.width) << f.file;
    const std::string path = processor_dir() + "/" + f.file;
    const io::ImageSize size = io::image_size(io::read_image_file(path), path);
    EXPECT_EQ(size.height, f.height) << f.file << ": the size from the header alone";
    EXPECT_EQ(size.width, f.width) << f.file;
    const std::string k = std::string("img.") + f.key;
    const Tensor rows = ref.get(k + ".decoded_row_index"), rgb = ref.get(k + ".decoded_rgb_rows");
    int64_t differing = 0, max_code = 0;
    for (int64_t r = 0; r < rows.numel(); ++r) {
      const int64_t y = rows.data<int32_t>()[r];
      for (int64_t i = 0; i < f.width * 3; ++i) {
        const int d = std::abs(int(img.pixels[size_t(y * f.width * 3 + i)]) - int(rgb.data<uint8_t>()[r * f.width * 3 + i]));
        differing += d != 0;
        max_code = std::max<int64_t>(max_code, d);
      }
    }
    std::printf("[ decode   ] %s: %lld rows compared, %lld values differ, max code difference %lld\n", f.file,
                static_cast<long long>(rows.numel()), static_cast<long long>(differing),
                static_cast<long long>(max_code));
    EXPECT_EQ(max_code, 0) << f.file;
  }
  // A few pixels by hand: the RGBA image keeps its colour where alpha is 0 (top quarter), so alpha
  // is dropped, not composited onto a background.
  const io::RgbImage rgba = io::read_image(processor_dir() + "/rgba_97x150.png");
  const Tensor rows = ref.get("img.rgba.decoded_rgb_rows");
  for (int64_t y : {0, 10, 37, 149})
    for (int64_t x : {0, 50, 96})
      for (int c = 0; c < 3; ++c) EXPECT_EQ(rgba.at(y, x, c), rows.data<uint8_t>()[(y * 97 + x) * 3 + c]);
}

// libpng writes a PNG of the given colour type and depth from raw rows (network byte order for
// 16-bit samples), with an optional palette/tRNS/eXIf, optionally Adam7-interlaced.
struct PngSpec {
  int width = 0, height = 0, color = PNG_COLOR_TYPE_RGB, depth = 8;
  bool interlace = false;
  std::vector<png_color> palette;
  std::vector<png_byte> trns;
  std::vector<png_byte> exif;
};

std::vector<char> write_png(const PngSpec& s, const std::vector<uint8_t>& raw) {
  struct Sink {
    static void write(png_structp png, png_bytep data, size_t n) {
      auto* out = static_cast<std::vector<char>*>(png_get_io_ptr(png));
      out->insert(out->end(), data, data + n);
    }
    static void flush(png_structp) {}
  };
  std::vector<char> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &out, Sink::write, Sink::flush);
  png_set_IHDR(png, info, png_uint_32(s.width), png_uint_32(s.height), s.depth, s.color,
               s.interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s.palette.empty()) png_set_PLTE(png, info, s.palette.data(), int(s.palette.size()));
  if (!s.trns.empty()) png_set_tRNS(png, info, s.trns.data(), int(s.trns.size()), nullptr);
  if (!s.exif.empty()) png_set_eXIf_1(png, info, png_uint_32(s.exif.size()), const_cast<png_bytep>(s.exif.data()));
  png_write_info(png, info);
  const size_t rowbytes = raw.size() / size_t(s.height);
  std::vector<png_bytep> rows;
  for (int y = 0; y < s.height; ++y) rows.push_back(const_cast<png_bytep>(raw.data() + size_t(y) * rowbytes));
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// Also checks that the header alone gives the decoded size (io::image_size: every PNG mode and
// JPEG kind below, every EXIF orientation, both byte orders).
io::RgbImage decode(const std::vector<char>& bytes, const std::string& what = "test image") {
  const std::string_view view(bytes.data(), bytes.size());
  io::RgbImage img = io::decode_image(view, what);
  const io::ImageSize size = io::image_size(view, what);
  EXPECT_EQ(size.height, img.height) << what;
  EXPECT_EQ(size.width, img.width) << what;
  return img;
}

// A TIFF block with one IFD0 entry, Orientation = o (as cameras write it in EXIF).
std::vector<uint8_t> exif_orientation_block(int o, bool big_endian) {
  std::vector<uint8_t> t = big_endian ? std::vector<uint8_t>{'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0,
                                                              0, 1, 0, uint8_t(o), 0, 0, 0, 0, 0, 0, 0, 0}
                                      : std::vector<uint8_t>{'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0,
                                                              0, 0, uint8_t(o), 0, 0, 0, 0, 0, 0, 0, 0, 0};
  return t;
}

// Where output pixel (y, x) of exif_transpose comes from, for an H x W source (Pillow's methods).
std::pair<int64_t, int64_t> oriented_source(int o, int64_t y, int64_t x, int64_t H, int64_t W) {
  switch (o) {
    case 2: return {y, W - 1 - x};          // FLIP_LEFT_RIGHT
    case 3: return {H - 1 - y, W - 1 - x};  // ROTATE_180
    case 4: return {H - 1 - y, x};          // FLIP_TOP_BOTTOM
    case 5: return {x, y};                  // TRANSPOSE
    case 6: return {H - 1 - x, y};          // ROTATE_270 (counter-clockwise degrees)
    case 7: return {H - 1 - x, W - 1 - y};  // TRANSVERSE
    case 8: return {x, W - 1 - y};          // ROTATE_90
    default: return {y, x};
  }
}

TEST(ImageDecode, PngModesConvertAsPillow) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255);
  const int W = 7, H = 5;
  std::vector<uint8_t> raw;
  auto fill = [&](size_t n) {
    raw.resize(n);
    for (auto& v : raw) v = uint8_t(byte(rng));
  };
  for (bool interlace : {false, true}) {
    // RGBA: alpha dropped.
    fill(size_t(W * H * 4));
    io::RgbImage img = decode(write_png({W, H, PNG_COLOR_TYPE_RGBA, 8, interlace, {}, {}, {}}, raw));
    for (int i = 0; i < W * H; ++i)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(img.pixels[size_t(i * 3 + c)], raw[size_t(i * 4 + c)]) << interlace;
    // 8-bit grey: replicated.
    fill(size_t(W * H));
    img = decode(write_png({W, H, PNG_COLOR_TYPE_GRAY, 8, interlace, {}, {}, {}}, raw));
    for (int i = 0; i < W * H; ++i)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(img.pixels[size_t(i * 3 + c)], raw[size_t(i)]);
    // 16-bit RGB: the high byte.
    fill(size_t(W * H * 6));
    img = decode(write_png({W, H, PNG_COLOR_TYPE_RGB, 16, interlace, {}, {}, {}}, raw));
    for (int i = 0; i < W * H * 3; ++i) ASSERT_EQ(img.pixels[size_t(i)], raw[size_t(i * 2)]);
    // 16-bit grey (Pillow's I;16): clipped at 255.
    fill(size_t(W * H * 2));
    raw[0] = 0, raw[1] = 200;  // a value below 256 stays
    img = decode(write_png({W, H, PNG_COLOR_TYPE_GRAY, 16, interlace, {}, {}, {}}, raw));
    for (int i = 0; i < W * H; ++i) {
      const int v = (raw[size_t(2 * i)] << 8) | raw[size_t(2 * i + 1)];
      ASSERT_EQ(img.pixels[size_t(i * 3)], std::min(v, 255)) << i;
    }
    // Palette with transparency, 4 bits per index: looked up, transparency ignored.
    std::vector<png_color> pal(16);
    for (auto& p : pal) p = {png_byte(byte(rng)), png_byte(byte(rng)), png_byte(byte(rng))};
    const int row4 = (W + 1) / 2;
    fill(size_t(row4 * H));
    img = decode(write_png({W, H, PNG_COLOR_TYPE_PALETTE, 4, interlace, pal, {0, 128, 255}, {}}, raw));
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const int idx = (raw[size_t(y * row4 + x / 2)] >> (x % 2 ? 0 : 4)) & 15;
        ASSERT_EQ(img.at(y, x, 0), pal[size_t(idx)].red);
        ASSERT_EQ(img.at(y, x, 1), pal[size_t(idx)].green);
        ASSERT_EQ(img.at(y, x, 2), pal[size_t(idx)].blue);
      }
    // 2-bit grey: scaled by 85 as Pillow's L;2.
    const int row2 = (W + 3) / 4;
    fill(size_t(row2 * H));
    img = decode(write_png({W, H, PNG_COLOR_TYPE_GRAY, 2, interlace, {}, {}, {}}, raw));
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        ASSERT_EQ(img.at(y, x, 1), ((raw[size_t(y * row2 + x / 4)] >> (6 - 2 * (x % 4))) & 3) * 85);
  }
}

TEST(ImageDecode, ExifOrientationIsApplied) {
  std::mt19937 rng(12);
  const int W = 6, H = 4;
  const io::RgbImage src = random_image(H, W, rng);
  for (int o = 1; o <= 8; ++o)
    for (bool big : {false, true}) {
      const io::RgbImage img =
          decode(write_png({W, H, PNG_COLOR_TYPE_RGB, 8, false, {}, {}, exif_orientation_block(o, big)}, src.pixels));
      const bool swap = o >= 5;
      ASSERT_EQ(img.height, swap ? W : H) << o;
      ASSERT_EQ(img.width, swap ? H : W) << o;
      for (int64_t y = 0; y < img.height; ++y)
        for (int64_t x = 0; x < img.width; ++x) {
          const auto [sy, sx] = oriented_source(o, y, x, H, W);
          for (int c = 0; c < 3; ++c) ASSERT_EQ(img.at(y, x, c), src.at(sy, sx, c)) << o << " " << y << " " << x;
        }
    }
}

// libjpeg's baseline JPEG of `raw` (height rows of width * components samples in `space`), with
// `app1` as an APP1 marker when it is not empty.
std::vector<char> encode_jpeg(const std::vector<uint8_t>& raw, int height, int width, int components,
                              J_COLOR_SPACE space, int quality, const std::vector<uint8_t>& app1 = {}) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &buf, &size);
  c.image_width = JDIMENSION(width);
  c.image_height = JDIMENSION(height);
  c.input_components = components;
  c.in_color_space = space;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, quality, TRUE);
  jpeg_start_compress(&c, TRUE);
  if (!app1.empty()) jpeg_write_marker(&c, JPEG_APP0 + 1, app1.data(), unsigned(app1.size()));
  while (c.next_scanline < c.image_height) {
    JSAMPROW r = const_cast<JSAMPROW>(&raw[size_t(c.next_scanline) * size_t(width * components)]);
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::vector<char> out(buf, buf + size);
  std::free(buf);
  return out;
}

// An RGB (or, with grey, its red channel as greyscale) JPEG with an EXIF orientation when > 0.
std::vector<char> write_jpeg(const io::RgbImage& img, int orientation, bool grey = false) {
  std::vector<uint8_t> app1;
  if (orientation > 0) {
    app1 = {'E', 'x', 'i', 'f', 0, 0};
    const std::vector<uint8_t> tiff = exif_orientation_block(orientation, true);
    app1.insert(app1.end(), tiff.begin(), tiff.end());
  }
  if (!grey) return encode_jpeg(img.pixels, int(img.height), int(img.width), 3, JCS_RGB, 95, app1);
  std::vector<uint8_t> red(size_t(img.height * img.width));
  for (size_t i = 0; i < red.size(); ++i) red[i] = img.pixels[i * 3];
  return encode_jpeg(red, int(img.height), int(img.width), 1, JCS_GRAYSCALE, 95, app1);
}

TEST(ImageDecode, JpegGreyAndExifOrientation) {
  std::mt19937 rng(13);
  const io::RgbImage src = random_image(16, 24, rng);
  const io::RgbImage plain = decode(write_jpeg(src, 0));
  ASSERT_EQ(plain.height, 16);
  ASSERT_EQ(plain.width, 24);
  for (int o : {3, 6, 8}) {
    const io::RgbImage img = decode(write_jpeg(src, o));
    ASSERT_EQ(img.height, o >= 5 ? 24 : 16);
    for (int64_t y = 0; y < img.height; ++y)
      for (int64_t x = 0; x < img.width; ++x) {
        const auto [sy, sx] = oriented_source(o, y, x, 16, 24);
        for (int c = 0; c < 3; ++c) ASSERT_EQ(img.at(y, x, c), plain.at(sy, sx, c));
      }
  }
  const io::RgbImage grey = decode(write_jpeg(src, 0, true));
  for (int64_t i = 0; i < grey.height * grey.width; ++i) {
    ASSERT_EQ(grey.pixels[size_t(i * 3)], grey.pixels[size_t(i * 3 + 1)]);
    ASSERT_EQ(grey.pixels[size_t(i * 3)], grey.pixels[size_t(i * 3 + 2)]);
  }
}

// An Adobe CMYK JPEG (as libjpeg writes CMYK) of one flat colour, which survives compression at
// quality 100 within a code: Pillow reads it as inverted CMYK and converts with
// (255 - k) - c(255 - k)/255.
TEST(ImageDecode, CmykJpegConvertsAsPillow) {
  const int cmyk[4] = {40, 130, 220, 70};
  std::vector<uint8_t> raw(8 * 16 * 4);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint8_t(cmyk[i % 4]);
  const io::RgbImage img = decode(encode_jpeg(raw, 8, 16, 4, JCS_CMYK, 100));
  ASSERT_EQ(img.height, 8);
  ASSERT_EQ(img.width, 16);
  const double nk = 255.0 - (255 - cmyk[3]);
  for (int ch = 0; ch < 3; ++ch) {
    const double want = nk - (255 - cmyk[ch]) * nk / 255.0;
    for (int64_t i = 0; i < 8 * 16; ++i) EXPECT_NEAR(img.pixels[size_t(i * 3 + ch)], want, 1.5) << ch;
  }
}

TEST(ImageDecode, BadFilesNameTheFile) {
  test::TempDir dir;
  const std::vector<char> jpg = test::read_bytes(processor_dir() + "/scene_1200x280.jpg");
  const std::vector<char> png = test::read_bytes(processor_dir() + "/scene_333x517.png");
  const std::string cut_jpg = dir / "cut.jpg", cut_png = dir / "cut.png", text = dir / "notes.jpg",
                    header_only = dir / "header.jpg";
  test::write_bytes(cut_jpg, std::vector<char>(jpg.begin(), jpg.begin() + long(jpg.size() / 2)));
  test::write_bytes(cut_png, std::vector<char>(png.begin(), png.begin() + long(png.size() / 2)));
  test::write_bytes(header_only, std::vector<char>(jpg.begin(), jpg.begin() + 20));
  test::write_text(text, "not an image at all");
  std::string e = test::error_of([&] { io::read_image(cut_jpg); });
  EXPECT_NE(e.find(cut_jpg), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  e = test::error_of([&] { io::read_image(cut_png); });
  EXPECT_NE(e.find(cut_png), std::string::npos) << e;
  e = test::error_of([&] { io::read_image(header_only); });
  EXPECT_NE(e.find(header_only), std::string::npos) << e;
  e = test::error_of([&] { io::read_image(text); });
  EXPECT_NE(e.find(text), std::string::npos) << e;
  EXPECT_NE(e.find("neither a JPEG nor a PNG"), std::string::npos) << e;
  e = test::error_of([&] { io::read_image(dir / "missing.png"); });
  EXPECT_NE(e.find(dir / "missing.png"), std::string::npos) << e;
  // A whole file (it ends with EOI) whose scan data is noise or zeros: libjpeg only warns (a bad
  // Huffman code, the end marker inside the scan) and fills in garbage or grey, which Pillow passes
  // on as pixels. Found by tools/probe_train_media.py.
  const char sos[] = {'\xff', '\xda'};
  const auto scan = std::search(jpg.begin(), jpg.end(), sos, sos + 2);
  ASSERT_NE(scan, jpg.end());
  const long data = (scan - jpg.begin()) + 14;  // the SOS segment of 3 components is 14 bytes with its marker
  for (const auto& [name, fill] : {std::pair<std::string, int>{"noise.jpg", 7919}, {"zeros.jpg", 0}}) {
    std::vector<char> bad(jpg.begin(), jpg.begin() + data);
    for (int i = 0; i < 3000; ++i) bad.push_back(char((i * fill + 13 * (fill != 0)) % 255));  // no 0xFF
    bad.insert(bad.end(), {'\xff', '\xd9'});
    test::write_bytes(dir / name, bad);
    e = test::error_of([&] { io::read_image(dir / name); });
    EXPECT_NE(e.find("JPEG image " + (dir / name) + " has corrupt image data (libjpeg: Corrupt JPEG data"),
              std::string::npos)
        << e;
  }
  // A PNG whose eXIf chunk declares 2^30 + 26 bytes in a file of 45: libpng allocated the declared
  // gigabyte before finding the file short (fuzz_image_decode, from a 153-byte input). The chunk
  // list is checked against the file's size first, for the header as for the pixels.
  std::vector<char> bomb(png.begin(), png.begin() + 33);  // the signature and IHDR of a real file
  for (const char c : {'\x40', '\x00', '\x00', '\x1a', 'e', 'X', 'I', 'f', 'M', 'M', '\0', '*'}) bomb.push_back(c);
  test::write_bytes(dir / "bomb.png", bomb);
  for (const bool header : {false, true}) {
    e = test::error_of([&] {
      if (header)
        io::image_size(io::read_image_file(dir / "bomb.png"), dir / "bomb.png");
      else
        io::read_image(dir / "bomb.png");
    });
    EXPECT_NE(e.find("PNG image " + (dir / "bomb.png") + " cannot be decoded: chunk 'eXIf' at byte 33 declares "
                     "1073741850 bytes of data, past the end of the file (45 bytes)"),
              std::string::npos)
        << e;
  }
}

// ---------------------------------------------------------------------------------------------
// The processor

TEST(ImageProcessor, TargetSizesFollowTheSpecTable) {
  // MULTIMODAL.md 2.2, worked examples: (h, w) -> (th, tw) at 70, 140, 280, 560, 1120.
  struct Row {
    int64_t h, w;
    int64_t sizes[5][2];
  };
  const Row rows[] = {
      {224, 224, {{384, 384}, {528, 528}, {768, 768}, {1104, 1104}, {1584, 1584}}},
      {480, 640, {{336, 432}, {480, 624}, {672, 912}, {960, 1296}, {1344, 1824}}},
      {3000, 4000, {{336, 432}, {480, 624}, {672, 912}, {960, 1296}, {1344, 1824}}},
      {1080, 1920, {{288, 528}, {384, 720}, {576, 1056}, {816, 1488}, {1200, 2112}}},
      {100, 2000, {{48, 1776}, {96, 2496}, {144, 3552}, {240, 5040}, {336, 7152}}},
  };
  const int64_t budgets[] = {70, 140, 280, 560, 1120};
  const int64_t tokens_224[] = {64, 121, 256, 529, 1089};
  for (const Row& r : rows)
    for (int b = 0; b < 5; ++b) {
      io::ImageProcessorOptions opt;
      opt.max_soft_tokens = budgets[b];
      const auto [th, tw] = io::image_target_size(r.h, r.w, opt);
      EXPECT_EQ(th, r.sizes[b][0]) << r.h << "x" << r.w << " @" << budgets[b];
      EXPECT_EQ(tw, r.sizes[b][1]) << r.h << "x" << r.w << " @" << budgets[b];
      if (r.h == 224) {
        EXPECT_EQ(th * tw / (48 * 48), tokens_224[b]);
        EXPECT_EQ(io::image_soft_tokens(r.h, r.w, opt), tokens_224[b]);
      }
    }
  // A very thin image: one side rounds to 0 and takes one pooled cell.
  io::ImageProcessorOptions opt;
  opt.max_soft_tokens = 70;
  EXPECT_EQ(io::image_target_size(10, 4000, opt), (std::pair<int64_t, int64_t>{48, 3360}));
  EXPECT_EQ(io::image_target_size(4000, 10, opt), (std::pair<int64_t, int64_t>{3360, 48}));
  opt.max_soft_tokens = 100;
  EXPECT_NE(test::error_of([&] { io::check_image_processor_options(opt, "cfg.json"); }).find("max_soft_tokens"),
            std::string::npos);
}

// The fixture's pixel_values codes, positions, resized sizes and soft-token counts (torchvision
// backend); the codes may differ by at most 2 (the spec's tolerance), the rest exactly.
TEST(ImageProcessor, FixtureImagesEqualTransformers) {
  const io::SafetensorsReader ref = reference();
  struct Case {
    const char* key;
    const char* file;
    int64_t budget;
  };
  const Case cases[] = {{"png", "scene_333x517.png", 70},
                        {"png", "scene_333x517.png", 280},
                        {"jpg", "scene_1200x280.jpg", 70},
                        {"jpg", "scene_1200x280.jpg", 280},
                        {"rgba", "rgba_97x150.png", 70}};
  const float inv255 = static_cast<float>(1.0 / 255.0);
  for (const Case& c : cases) {
    const std::string k = std::string("img.") + c.key + ".tv." + std::to_string(c.budget);
    io::ImageProcessorOptions opt;
    opt.max_soft_tokens = c.budget;
    const io::ProcessedImages out = io::process_images({io::read_image(processor_dir() + "/" + c.file)}, opt);
    const Tensor hw = ref.get(k + ".resized_hw"), soft = ref.get(k + ".num_soft_tokens");
    ASSERT_EQ(out.resized_hw[0].first, hw.data<int64_t>()[0]) << k;
    ASSERT_EQ(out.resized_hw[0].second, hw.data<int64_t>()[1]) << k;
    ASSERT_EQ(out.num_soft_tokens[0], soft.data<int64_t>()[0]) << k;
    // The count from the size alone (training data's, before the pixels are used).
    const io::ImageSize size = io::image_size(io::read_image_file(processor_dir() + "/" + c.file), c.file);
    EXPECT_EQ(io::image_soft_tokens(size.height, size.width, opt), soft.data<int64_t>()[0]) << k;
    const int64_t P = opt.max_patches();
    ASSERT_EQ(out.pixel_values.shape(), (Shape{1, P, 768}));

    const Tensor pos = ref.get(k + ".image_position_ids");
    ASSERT_EQ(pos.numel(), out.image_position_ids.numel()) << k;
    for (int64_t i = 0; i < pos.numel(); ++i)
      ASSERT_EQ(out.image_position_ids.data<int64_t>()[i], pos.data<int64_t>()[i]) << k << " " << i;

    const Tensor index = ref.get(k + ".patch_index"), codes = ref.get(k + ".pixel_values_u8");
    int64_t max_code = 0, differing = 0;
    const float* pv = out.pixel_values.data<float>();
    for (int64_t r = 0; r < index.numel(); ++r) {
      const int64_t patch = index.data<int32_t>()[r];
      for (int64_t j = 0; j < 768; ++j) {
        const float v = pv[patch * 768 + j];
        const long code = std::lround(v * 255.0f);
        ASSERT_EQ(v, static_cast<float>(code) * inv255) << "not an exact u8 * (1/255) value";
        const int64_t d = std::abs(code - long(codes.data<uint8_t>()[r * 768 + j]));
        differing += d != 0;
        max_code = std::max(max_code, d);
      }
    }
    // Padding rows stay 0.
    const int64_t valid = out.num_soft_tokens[0] * 9;
    for (int64_t i = valid * 768; i < P * 768; ++i) ASSERT_EQ(pv[i], 0.0f) << k;
    std::printf("[ pixels   ] %s: %lld patches compared, %lld of %lld codes differ, max code difference %lld\n",
                k.c_str(), static_cast<long long>(index.numel()), static_cast<long long>(differing),
                static_cast<long long>(index.numel() * 768), static_cast<long long>(max_code));
    EXPECT_LE(max_code, 2) << k;
  }
}

// The fixed-point resampler against the same filter in double precision on random images, up and
// down in each direction: the int16 weights and the uint8 rounding between the passes cost at
// most a code or two.
TEST(ImageProcessor, ResizeMatchesFloatFilter) {
  std::mt19937 rng(14);
  auto cubic = [](double x) {
    x = std::abs(x);
    if (x < 1) return (1.5 * x - 2.5) * x * x + 1;
    if (x < 2) return ((-0.5 * x + 2.5) * x - 4) * x + 2;
    return 0.0;
  };
  // Weights of output i over the input, as PIL defines the antialiased filter.
  auto weights = [&](int64_t in, int64_t out, int64_t i) {
    const double scale = double(in) / double(out), support = 2 * std::max(scale, 1.0);
    const double center = scale * (double(i) + 0.5);
    std::vector<double> w(size_t(in), 0.0);
    double total = 0;
    for (int64_t j = 0; j < in; ++j) {
      if (double(j) + 0.5 < center - support || double(j) + 0.5 > center + support) continue;
      w[size_t(j)] = cubic((double(j) + 0.5 - center) / std::max(scale, 1.0));
      total += w[size_t(j)];
    }
    for (auto& v : w) v /= total;
    return w;
  };
  const std::pair<int64_t, int64_t> shapes[][2] = {{{23, 31}, {48, 96}}, {{97, 61}, {48, 48}}, {{40, 50}, {96, 24}}};
  for (const auto& s : shapes) {
    const io::RgbImage img = random_image(s[0].first, s[0].second, rng);
    const int64_t H = img.height, W = img.width, oh = s[1].first, ow = s[1].second;
    const io::RgbImage got = io::resize_bicubic_antialias(img, oh, ow);
    ASSERT_EQ(got.height, oh);
    ASSERT_EQ(got.width, ow);
    int max_d = 0;
    for (int64_t y = 0; y < oh; ++y) {
      const std::vector<double> wy = weights(H, oh, y);
      for (int64_t x = 0; x < ow; ++x) {
        const std::vector<double> wx = weights(W, ow, x);
        for (int c = 0; c < 3; ++c) {
          double v = 0;
          for (int64_t sy = 0; sy < H; ++sy) {
            if (wy[size_t(sy)] == 0) continue;
            double row = 0;
            for (int64_t sx = 0; sx < W; ++sx) row += wx[size_t(sx)] * img.at(sy, sx, c);
            v += wy[size_t(sy)] * std::clamp(row, 0.0, 255.0);
          }
          const int want = int(std::lround(std::clamp(v, 0.0, 255.0)));
          max_d = std::max(max_d, std::abs(want - int(got.at(y, x, c))));
        }
      }
    }
    EXPECT_LE(max_d, 2) << H << "x" << W << " -> " << oh << "x" << ow;
  }
  // An image that already has the target size is not filtered.
  const io::RgbImage same = random_image(48, 96, rng);
  EXPECT_EQ(io::resize_bicubic_antialias(same, 48, 96).pixels, same.pixels);
}

TEST(ImageProcessor, BatchPadsAndOptionsLoad) {
  std::mt19937 rng(15);
  io::ImageProcessorOptions opt;
  opt.max_soft_tokens = 70;
  const io::ProcessedImages out = io::process_images({random_image(30, 40, rng), random_image(96, 48, rng)}, opt);
  ASSERT_EQ(out.pixel_values.shape(), (Shape{2, 630, 768}));
  ASSERT_EQ(out.image_position_ids.shape(), (Shape{2, 630, 2}));
  EXPECT_EQ(out.num_soft_tokens, (std::vector<int64_t>{63, 55}));  // 336x432 and 528x240
  const int64_t* pos = out.image_position_ids.data<int64_t>() + 630 * 2;  // second image
  const int64_t pw = out.resized_hw[1].second / 16;
  for (int64_t i = 0; i < 630; ++i) {
    const bool valid = i < out.num_soft_tokens[1] * 9;
    EXPECT_EQ(pos[2 * i], valid ? i % pw : -1);
    EXPECT_EQ(pos[2 * i + 1], valid ? i / pw : -1);
  }
  // The fixture directory's processor_config.json says 280; an explicit budget overrides it.
  EXPECT_EQ(io::load_image_processor_options(processor_dir()).max_soft_tokens, 280);
  EXPECT_EQ(io::load_image_processor_options(processor_dir(), 1120).max_soft_tokens, 1120);
  test::TempDir dir;
  test::write_text(dir / "processor_config.json", R"({"image_processor": {"max_soft_tokens": 300}})");
  const std::string e = test::error_of([&] { io::load_image_processor_options(dir.str()); });
  EXPECT_NE(e.find(dir / "processor_config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("max_soft_tokens"), std::string::npos) << e;
}

// Found reading the parser for fuzz/processor_config.cpp: a resample that only narrowed to 3
// (2^32 + 3), or one of another type, and a do_normalize that was not a boolean were taken for the
// defaults.
TEST(ImageProcessor, SettingsOfAnotherTypeOrRangeAreRefused) {
  test::TempDir dir;
  const auto refused = [&](const std::string& json, const std::string& key) {
    test::write_text(dir / "processor_config.json", json);
    const std::string e = test::error_of([&] {
      io::load_image_processor_options(dir.str());
      io::load_video_processor_options(dir.str());
    });
    EXPECT_NE(e.find(key), std::string::npos) << json << " -> " << e;
  };
  refused(R"({"image_processor": {"resample": 4294967299}})", "resample must be 3");
  refused(R"({"image_processor": {"resample": "bicubic"}})", "resample must be 3");
  refused(R"({"image_processor": {"do_normalize": "no"}})", "do_normalize must be false");
  refused(R"({"image_processor": {"do_normalize": true}})", "do_normalize must be false");
  refused(R"({"video_processor": {"resample": 4294967299}})", "video_processor.resample must be 3");
  test::write_text(dir / "processor_config.json",
                   R"({"image_processor": {"resample": null, "do_normalize": false},
                       "video_processor": {"resample": 3}})");
  EXPECT_EQ(io::load_image_processor_options(dir.str()).max_soft_tokens, 280);
  EXPECT_EQ(io::load_video_processor_options(dir.str()).num_frames, 32);
}

}  // namespace
}  // namespace g4

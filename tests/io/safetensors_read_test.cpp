// Reading the HF fixtures, cross-checked against an independent parse of the same bytes.
#include <cstring>

#include "io/io_test_util.h"
#include "io/safetensors.h"

namespace g4::io {
namespace {

using test::fixture_dir;

const char* kFixtures[] = {"tiny-dense-ple", "tiny-dense-keqv", "tiny-moe"};

TEST(SafetensorsRead, FixturesMatchIndependentParse) {
  for (const char* name : kFixtures) {
    SCOPED_TRACE(name);
    const std::string file = fixture_dir(name) + "/model.safetensors";
    const test::RawSafetensors raw = test::parse_raw_safetensors(file);
    const SafetensorsReader r = SafetensorsReader::open(file);

    EXPECT_EQ(r.names().size(), raw.header.size() - 1);  // minus __metadata__
    EXPECT_EQ(r.metadata().at("format"), "pt");
    for (const auto& [key, v] : raw.header.items()) {
      if (key == "__metadata__") continue;
      ASSERT_TRUE(r.has(key)) << key;
      const TensorInfo& ti = r.info(key);
      EXPECT_EQ(ti.shape, v["shape"].get<Shape>()) << key;
      EXPECT_EQ(ti.stored_dtype, v["dtype"].get<std::string>());
      EXPECT_EQ(ti.file, file);
      ASSERT_EQ(ti.dtype, DType::F32) << key;  // all fixtures are f32

      // Every element equals the bytes at the offsets the header gives.
      const Tensor t = r.get(key);
      const size_t begin = raw.data_start + v["data_offsets"][0].get<size_t>();
      ASSERT_EQ(t.nbytes(), v["data_offsets"][1].get<size_t>() - v["data_offsets"][0].get<size_t>());
      EXPECT_EQ(std::memcmp(t.raw(), raw.bytes.data() + begin, t.nbytes()), 0) << key;
    }
  }
}

TEST(SafetensorsRead, KnownShapesAndDirectoryOpen) {
  const SafetensorsReader moe = SafetensorsReader::open(fixture_dir("tiny-moe"));  // directory
  EXPECT_EQ(moe.names().size(), 132u);
  const TensorInfo& gu = moe.info("model.language_model.layers.0.experts.gate_up_proj");
  EXPECT_EQ(gu.dtype, DType::F32);
  EXPECT_EQ(gu.shape, (Shape{8, 64, 64}));
  EXPECT_EQ(moe.info("model.language_model.layers.0.experts.down_proj").shape, (Shape{8, 64, 32}));
  EXPECT_EQ(moe.info("model.language_model.embed_tokens.weight").shape, (Shape{256, 64}));

  const SafetensorsReader ple = SafetensorsReader::open(fixture_dir("tiny-dense-ple"));
  EXPECT_EQ(ple.info("model.embed_tokens_per_layer.weight").shape, (Shape{256, 48}));  // L x P = 6 x 8
  // Full-attention layer 2 has head_dim 32.
  const SafetensorsReader keqv = SafetensorsReader::open(fixture_dir("tiny-dense-keqv"));
  EXPECT_EQ(keqv.info("model.layers.2.self_attn.k_norm.weight").shape, (Shape{32}));
  EXPECT_FALSE(keqv.has("model.layers.2.self_attn.v_proj.weight"));  // k_eq_v: no v_proj

  const std::vector<std::string> names = keqv.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

TEST(SafetensorsRead, ViewsAreZeroCopyAndOutliveTheReader) {
  Tensor t;
  float first = 0;
  {
    const SafetensorsReader r = SafetensorsReader::open(fixture_dir("tiny-dense-keqv"));
    const Tensor a = r.get("model.embed_tokens.weight");
    const Tensor b = r.get("model.embed_tokens.weight");
    EXPECT_EQ(a.raw(), b.raw());  // both point into the mapping
    t = a;
    first = a.data<float>()[0];
  }
  // The reader is gone; the tensor's owner keeps the mapping alive.
  EXPECT_EQ(t.data<float>()[0], first);
  EXPECT_EQ(t.shape(), (Shape{256, 64}));
  // Writing into a view is private to this process and does not touch the file.
  t.data<float>()[0] = 12345.0f;
  const SafetensorsReader again = SafetensorsReader::open(fixture_dir("tiny-dense-keqv"));
  EXPECT_EQ(again.get("model.embed_tokens.weight").data<float>()[0], first);
}

TEST(SafetensorsRead, GetF32ChecksShapeAndCopies) {
  const SafetensorsReader r = SafetensorsReader::open(fixture_dir("tiny-moe"));
  const std::string key = "model.language_model.layers.0.router.per_expert_scale";
  const Tensor view = r.get(key);
  const Tensor t = r.get_f32(key, {8});
  EXPECT_FALSE(t.same_storage(view));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(t.data<float>()[i], view.data<float>()[i]);
}

}  // namespace
}  // namespace g4::io

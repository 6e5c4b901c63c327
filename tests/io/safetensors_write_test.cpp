// Writing: bit-exact round trips for every dtype, alignment, sharding with an index, atomicity.
#include <cstring>
#include <random>

#include "io/io_test_util.h"
#include "io/safetensors.h"

namespace g4::io {
namespace {

using test::TempDir;

// A tensor of random bytes: any bit pattern (NaN payloads, denormals, odd bools) must survive.
Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(rng());
  return t;
}

std::vector<std::pair<std::string, Tensor>> all_dtypes() {
  const DType dtypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16,
                          DType::I32, DType::I64, DType::U8,   DType::Bool};
  std::vector<std::pair<std::string, Tensor>> out;
  uint32_t seed = 1;
  for (DType d : dtypes) {
    out.emplace_back(std::string("t.") + dtype_name(d), random_tensor({3, 5}, d, seed++));
    out.emplace_back(std::string("odd.") + dtype_name(d), random_tensor({7}, d, seed++));  // breaks alignment
  }
  out.emplace_back("scalar", Tensor::scalar(2.5));
  out.emplace_back("empty", Tensor::empty({0, 4}, DType::BF16));
  return out;
}

void expect_same(const SafetensorsReader& r, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  EXPECT_EQ(r.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(r.has(name));
    const Tensor back = r.get(name);
    EXPECT_EQ(back.dtype(), t.dtype());
    EXPECT_EQ(back.shape(), t.shape());
    ASSERT_EQ(back.nbytes(), t.nbytes());
    if (t.nbytes()) {
      EXPECT_EQ(std::memcmp(back.raw(), t.raw(), t.nbytes()), 0);
      // Views must be naturally aligned even after odd-sized tensors before them.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(back.raw()) % dtype_size(back.dtype()), 0u);
    }
  }
}

TEST(SafetensorsWrite, SingleFileRoundTripsEveryDtype) {
  TempDir tmp;
  const auto tensors = all_dtypes();
  save_safetensors(tmp / "a.safetensors", tensors, {{"note", "hello"}});
  const SafetensorsReader r = SafetensorsReader::open(tmp / "a.safetensors");
  expect_same(r, tensors);
  EXPECT_EQ(r.metadata().at("note"), "hello");
  EXPECT_EQ(r.metadata().at("format"), "pt");  // transformers requires it

  // Header padded so the data buffer starts 8-aligned; data laid out in insertion order.
  const test::RawSafetensors raw = test::parse_raw_safetensors(tmp / "a.safetensors");
  EXPECT_EQ(raw.data_start % 8, 0u);
  size_t expect_offset = 0;
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(raw.header[name]["data_offsets"][0].get<size_t>(), expect_offset) << name;
    expect_offset += t.nbytes();
  }
  EXPECT_EQ(raw.bytes.size(), raw.data_start + expect_offset);
  EXPECT_EQ(raw.header["t.bool"]["dtype"], "BOOL");
  EXPECT_EQ(raw.header["t.bf16"]["dtype"], "BF16");
}

TEST(SafetensorsWrite, WriterUnshardedWritesModelSafetensors) {
  TempDir tmp;
  const auto tensors = all_dtypes();
  SafetensorsWriter w(tmp / "ckpt");  // directory is created
  for (const auto& [n, t] : tensors) w.add(n, t);
  w.finish();
  EXPECT_TRUE(test::fs::exists(tmp / "ckpt/model.safetensors"));
  EXPECT_FALSE(test::fs::exists(tmp / "ckpt/model.safetensors.index.json"));
  expect_same(SafetensorsReader::open(tmp / "ckpt"), tensors);
}

TEST(SafetensorsWrite, ShardedRoundTripWithIndex) {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back(std::string("w").append(std::to_string(i)), random_tensor({4, 4}, DType::F32, i));
  tensors.emplace_back("big", random_tensor({40}, DType::I64, 99));  // 320 bytes > limit: own shard
  tensors.emplace_back("tail", random_tensor({3}, DType::BF16, 7));

  const std::string dir = tmp / "sharded";
  SafetensorsWriter w(dir, 150);  // two 64-byte tensors per shard
  for (const auto& [n, t] : tensors) w.add(n, t);
  w.set_metadata("producer", "g4-test");
  w.finish();

  // w0 w1 | w2 w3 | w4 | big | tail  -> 5 shards
  const auto index = nlohmann::json::parse(test::read_bytes(dir + "/model.safetensors.index.json"));
  size_t total = 0;
  for (const auto& kv : tensors) total += kv.second.nbytes();
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), total);
  EXPECT_EQ(index["weight_map"]["w0"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["w1"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["w3"], "model-00002-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["tail"], "model-00005-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  for (const auto& e : test::fs::directory_iterator(dir))  // no temporaries left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();

  const SafetensorsReader r = SafetensorsReader::open(dir);
  expect_same(r, tensors);
  EXPECT_EQ(r.info("big").file, dir + "/model-00004-of-00005.safetensors");
  EXPECT_EQ(r.metadata().at("producer"), "g4-test");

  // Re-saving unsharded into the same directory replaces the index; sharding again replaces
  // the single file, so the directory never holds two competing checkpoints.
  SafetensorsWriter one(dir);
  one.add("only", tensors[0].second);
  one.finish();
  EXPECT_FALSE(test::fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsReader::open(dir).names(), std::vector<std::string>{"only"});
  SafetensorsWriter again(dir, 100);
  for (const auto& [n, t] : tensors) again.add(n, t);
  again.finish();
  EXPECT_FALSE(test::fs::exists(dir + "/model.safetensors"));
  expect_same(SafetensorsReader::open(dir), tensors);
}

TEST(SafetensorsWrite, RejectsDuplicateNames) {
  TempDir tmp;
  SafetensorsWriter w(tmp / "d");
  w.add("x", Tensor::scalar(1));
  EXPECT_G4_ERROR(w.add("x", Tensor::scalar(2)), "'x'", "twice");
  EXPECT_G4_ERROR(w.add("u", Tensor()), "'u'", "undefined");
}

TEST(SafetensorsWrite, ReadsNarrowIntegersWidened) {
  TempDir tmp;
  // I16 [3] = {-2, 300, 7} and U32 [1] = {4000000000}.
  const int16_t a[3] = {-2, 300, 7};
  const uint32_t b[1] = {4000000000u};
  test::write_raw_safetensors(tmp / "n.safetensors",
                              R"({"a":{"dtype":"I16","shape":[3],"data_offsets":[0,6]},)"
                              R"("b":{"dtype":"U32","shape":[1],"data_offsets":[6,10]}})",
                              test::bytes_of(a) + test::bytes_of(b));

  const SafetensorsReader r = SafetensorsReader::open(tmp / "n.safetensors");
  EXPECT_EQ(r.info("a").dtype, DType::I32);
  EXPECT_EQ(r.info("a").stored_dtype, "I16");
  const Tensor ta = r.get("a");
  EXPECT_EQ(ta.data<int32_t>()[0], -2);
  EXPECT_EQ(ta.data<int32_t>()[1], 300);
  EXPECT_EQ(ta.data<int32_t>()[2], 7);
  EXPECT_EQ(r.get("b").data<int64_t>()[0], 4000000000LL);
}

TEST(SafetensorsWrite, MisalignedDataIsCopiedNotViewed) {
  TempDir tmp;
  // Header of 61 bytes: data starts at byte 69, so f32 data is not 4-aligned in the mapping.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append(61 - header.size(), ' ');
  const float v[2] = {1.5f, -3.25f};
  test::write_raw_safetensors(tmp / "m.safetensors", header, test::bytes_of(v));
  const Tensor t = SafetensorsReader::open(tmp / "m.safetensors").get("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  EXPECT_EQ(t.data<float>()[1], -3.25f);
}

}  // namespace
}  // namespace g4::io

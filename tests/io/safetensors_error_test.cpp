// Corrupt and inconsistent checkpoints: each must fail with a g4::Error naming file and key.
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <vector>

#include "io/io_test_util.h"
#include "io/safetensors.h"

namespace g4::io {
namespace {

using test::TempDir;

// Two f32 tensors "a" [2,2] then "b" [3], written by our own writer.
std::string valid_file(const TempDir& tmp) {
  const std::string path = tmp / "ok.safetensors";
  save_safetensors(path, {{"a", Tensor::full({2, 2}, 1.0)}, {"b", Tensor::full({3}, 2.0)}});
  return path;
}

TEST(SafetensorsErrors, TruncatedInHeader) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const auto bytes = test::read_bytes(path);
  test::write_bytes(path, {bytes.begin(), bytes.begin() + 40});
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "header length");
  test::write_bytes(path, {bytes.begin(), bytes.begin() + 5});
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "too short");
  test::write_bytes(path, {});
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "too short");
}

TEST(SafetensorsErrors, TruncatedInData) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const auto bytes = test::read_bytes(path);
  test::write_bytes(path, {bytes.begin(), bytes.end() - 5});  // cuts into "b"
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'b'", "out of range", "truncated");
}

TEST(SafetensorsErrors, OffsetsOutOfRange) {
  TempDir tmp;
  const std::string path = tmp / "r.safetensors";
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}})", 16);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "[0, 1000]", "out of range");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 16);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "[8, 4]", "end before");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 16);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "data_offsets");
}

TEST(SafetensorsErrors, OffsetsInconsistentWithShape) {
  TempDir tmp;
  const std::string path = tmp / "s.safetensors";
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "12 bytes", "F32[2, 2]", "needs 16");
}

TEST(SafetensorsErrors, OverlappingTensors) {
  TempDir tmp;
  const std::string path = tmp / "o.safetensors";
  test::write_raw_safetensors(path,
                              R"({"p":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("q":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                              16);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'p'", "'q'", "overlap");
}

// The safetensors library's own rule: the tensors fill the data buffer end to end, to the end of the file.
TEST(SafetensorsErrors, BytesOfNoTensorAreRefused) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  auto bytes = test::read_bytes(path);
  bytes.insert(bytes.end(), {'x', 'y', 'z'});
  test::write_bytes(path, bytes);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "3 bytes after the data of tensor 'b'", "appended");
  test::write_raw_safetensors(path,
                              R"({"p":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("q":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                              12);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "4 bytes", "before tensor 'q'", "corrupt header");
  test::write_raw_safetensors(path, R"({"__metadata__":{"format":"pt"}})", 8);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "8 bytes after the header");
}

TEST(SafetensorsErrors, UnknownAndUnsupportedDtypes) {
  TempDir tmp;
  const std::string path = tmp / "d.safetensors";
  test::write_raw_safetensors(path, R"({"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}})", 2);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), "unsupported dtype Q7 for key w in file " + path);

  // A real safetensors dtype g4 cannot hold: the checkpoint opens, only get() refuses.
  test::write_raw_safetensors(path,
                              R"({"f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},)"
                              R"("ok":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                              4);
  const SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_FALSE(r.info("f8").supported);
  EXPECT_EQ(r.get("ok").data<uint8_t>()[1], 3);
  EXPECT_G4_ERROR(r.get("f8"), "unsupported dtype F8_E4M3 for key f8 in file " + path);
}

TEST(SafetensorsErrors, HeaderLengthLargerThanFile) {
  TempDir tmp;
  const std::string path = tmp / "h.safetensors";
  test::write_raw_safetensors(path, "{}", 0, 1000000);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "header length 1000000");
  test::write_raw_safetensors(path, "{}", 0, UINT64_MAX - 1);  // must not overflow
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "header length");
}

TEST(SafetensorsErrors, MalformedHeaders) {
  TempDir tmp;
  const std::string path = tmp / "j.safetensors";
  test::write_raw_safetensors(path, "{not json at all", 8);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "not valid JSON");
  test::write_raw_safetensors(path, "[1, 2]", 8);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "not a JSON object");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "no 'shape'");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "negative dimension");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "non-integer");
  test::write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", 4);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "'w'", "too large");
  test::write_raw_safetensors(path, R"({"__metadata__":{"format":1}})", 0);
  EXPECT_G4_ERROR(SafetensorsReader::open(path), path, "__metadata__", "format");
}

TEST(SafetensorsErrors, MissingTensorAndWrongShape) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_G4_ERROR(r.get("nope"), "'nope'", "not found", path);
  EXPECT_G4_ERROR(r.info("nope"), "'nope'", path);
  EXPECT_G4_ERROR(r.get_f32("a", {4}), "'a'", path, "has shape [2, 2]", "expected [4]");
}

// An infinite final norm weight came out as finite logits through the softcap: weights are checked as they load.
TEST(SafetensorsErrors, NonFiniteWeightsAreNamed) {
  TempDir tmp;
  const std::string path = tmp / "w.safetensors";
  for (const float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    for (const DType dtype : {DType::F32, DType::BF16}) {
      save_safetensors(path, {{"w", Tensor::from_vector(std::vector<float>{1.f, 2.f, bad, 4.f}, {4}).to(dtype)}});
      const SafetensorsReader r = SafetensorsReader::open(path);
      EXPECT_G4_ERROR(r.get_f32("w", {4}), "'w'", path, std::isnan(bad) ? "holds a NaN" : "holds an infinity",
                      "element 2 of 4", "damaged");
      // A clipped linear's bounds may be infinite (transformers saves its initial ±inf as they are); never NaN.
      if (std::isnan(bad)) {
        EXPECT_G4_ERROR(r.get_f32("w", {4}, SafetensorsReader::Infinities::kAllowed), "'w'", "holds a NaN",
                        "element 2 of 4");
      } else {
        EXPECT_EQ(r.get_f32("w", {4}, SafetensorsReader::Infinities::kAllowed).data<float>()[2], bad);
      }
    }
  }
}

TEST(SafetensorsErrors, MissingPaths) {
  TempDir tmp;
  EXPECT_G4_ERROR(SafetensorsReader::open(tmp / "absent.safetensors"), tmp / "absent.safetensors");
  EXPECT_G4_ERROR(SafetensorsReader::open(tmp.str()), tmp.str(), "model.safetensors");
}

// A two-shard checkpoint written by us, then damaged.
std::string sharded_dir(const TempDir& tmp) {
  const std::string dir = tmp / "ckpt";
  SafetensorsWriter w(dir, 16);
  w.add("a", Tensor::full({4}, 1.0));
  w.add("b", Tensor::full({4}, 2.0));
  w.finish();
  return dir;
}

TEST(SafetensorsErrors, IndexPointsAtMissingShard) {
  TempDir tmp;
  const std::string dir = sharded_dir(tmp);
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), "model-00002-of-00002.safetensors", "missing",
                  "model.safetensors.index.json");
}

// Found by fuzzing (fuzz/shard_index.cpp): a shard name the system refuses to look up (longer than a
// file name may be) threw the standard library's filesystem_error; it is a missing shard with the reason.
TEST(SafetensorsErrors, IndexNamesAShardTheSystemCannotLookUp) {
  TempDir tmp;
  const std::string dir = sharded_dir(tmp);
  const std::string index = dir + "/model.safetensors.index.json";
  auto j = nlohmann::json::parse(test::read_bytes(index));
  j["weight_map"]["a"] = std::string(300, 'x') + ".safetensors";
  test::write_text(index, j.dump());
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), "missing", "File name too long", index);
}

TEST(SafetensorsErrors, IndexNamesKeyItsShardLacks) {
  TempDir tmp;
  const std::string dir = sharded_dir(tmp);
  const std::string index = dir + "/model.safetensors.index.json";
  auto j = nlohmann::json::parse(test::read_bytes(index));
  j["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
  test::write_text(index, j.dump());
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), "'ghost'", "model-00001-of-00002.safetensors", index);

  j["weight_map"].erase("ghost");
  j["weight_map"]["a"] = "model-00002-of-00002.safetensors";  // a lives in shard 1
  test::write_text(index, j.dump());
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), "'a'", "model-00002-of-00002.safetensors");

  test::write_text(index, "{\"weight_map\": ");
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), index, "not valid JSON");
  test::write_text(index, "{}");
  EXPECT_G4_ERROR(SafetensorsReader::open(dir), index, "weight_map");
}

// Every proper prefix of a valid file is rejected with a g4::Error, never a crash.
TEST(SafetensorsErrors, EveryTruncationIsAnError) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const auto bytes = test::read_bytes(path);
  const std::string cut = tmp / "cut.safetensors";
  for (size_t n = 0; n < bytes.size(); ++n) {
    test::write_bytes(cut, {bytes.begin(), bytes.begin() + static_cast<long>(n)});
    EXPECT_THROW(SafetensorsReader::open(cut), g4::Error) << "prefix of " << n << " bytes";
  }
}

// Random byte corruption of the length field and header: opening and reading every tensor
// either works or throws g4::Error (a crash or another exception type fails the test).
TEST(SafetensorsErrors, RandomCorruptionNeverCrashes) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const auto bytes = test::read_bytes(path);
  const size_t header_end = test::parse_raw_safetensors(path).data_start;
  const std::string bad = tmp / "bad.safetensors";
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    auto b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < flips; ++i) b[rng() % header_end] = static_cast<char>(rng());
    test::write_bytes(bad, b);
    try {
      const SafetensorsReader r = SafetensorsReader::open(bad);
      for (const std::string& name : r.names()) {
        const TensorInfo& ti = r.info(name);
        if (ti.supported) {
          EXPECT_EQ(r.get(name).nbytes(), shape_numel(ti.shape) * dtype_size(ti.dtype));
        }
      }
    } catch (const g4::Error&) {
    }
  }
}

}  // namespace
}  // namespace g4::io

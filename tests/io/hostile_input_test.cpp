// Hostile input at the reading layer (issue 19): one bad input per class of failure, each of
// which used to crash, hang, load garbage or print a library's exception text. Every message
// must name the file (and key) and contain no raw library text.
#include <sys/stat.h>

#include <filesystem>

#include "io/hf_config.h"
#include "io/hf_tokenizer.h"
#include "io/io_test_util.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/state_dict_adapter.h"
#include "train/checkpoint.h"
#include "train/optimizer_state.h"

namespace g4::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

// A message for the user: no text of a library's exception may reach it.
void expect_no_library_text(const std::string& msg) {
  for (const char* raw : {"json.exception", "basic_", "bad_alloc", "std::"})
    EXPECT_EQ(msg.find(raw), std::string::npos) << "library text '" << raw << "' in: " << msg;
}
// EXPECT_G4_ERROR, and the message holds no library text.
#define EXPECT_CLEAN_ERROR(stmt, ...)                                                    \
  do {                                                                                   \
    SCOPED_TRACE(#stmt);                                                                 \
    expect_no_library_text(::g4::test::expect_g4_error([&]() { stmt; }, {__VA_ARGS__})); \
  } while (0)

// `inner` wrapped in `depth` arrays: deep enough to overflow the stack of a recursive walker.
std::string nested(size_t depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}
constexpr size_t kDeep = 200000;

std::string small_tokenizer_json() {
  return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})";
}

// ---------------------------------------------------------------------------------------------
// Class 1: deep nesting and size, in every kind of JSON the reading layer parses.

TEST(HostileInput, DeepNestingInEveryJsonKind) {
  TempDir tmp;
  const std::string deep = nested(kDeep);

  const std::string st = tmp / "deep.safetensors";
  test::write_raw_safetensors(st, "{\"__metadata__\": " + deep + "}", 0);
  EXPECT_CLEAN_ERROR(SafetensorsReader::open(st), st, "header", "deeper than the limit of 128");

  const std::string model = tmp / "model";
  fs::create_directories(model);
  test::write_text(model + "/config.json", "{\"model_type\": \"gemma4_text\", \"x\": " + deep + "}");
  EXPECT_CLEAN_ERROR(load_model_config(model), model + "/config.json", "deeper than the limit");

  test::write_text(model + "/model.safetensors.index.json", "{\"weight_map\": {\"w\": " + deep + "}}");
  EXPECT_CLEAN_ERROR(SafetensorsReader::open(model), "model.safetensors.index.json", "deeper than the limit");

  const std::string tok = tmp / "tok";
  fs::create_directories(tok);
  test::write_text(tok + "/tokenizer.json", "{\"added_tokens\": " + deep + "}");
  EXPECT_CLEAN_ERROR(load_tokenizer(tok), tok + "/tokenizer.json", "deeper than the limit");
  test::write_text(tok + "/tokenizer.json", small_tokenizer_json());
  test::write_text(tok + "/tokenizer_config.json", "{\"bos_token\": " + deep + "}");
  EXPECT_CLEAN_ERROR(load_tokenizer(tok), tok + "/tokenizer_config.json", "deeper than the limit");

  const std::string ckpt = tmp / "step-00000001";
  fs::create_directories(ckpt);
  test::write_text(ckpt + "/trainer_state.json", "{\"step\": " + deep + "}");
  EXPECT_CLEAN_ERROR(train::read_trainer_state(ckpt), ckpt + "/trainer_state.json", "deeper than the limit");
}

TEST(HostileInput, NestingLimitCountsOnlyStructure) {
  // Brackets inside strings (escaped quotes included) are text, not nesting.
  const std::string in_string = "{\"s\": \"" + std::string(1000, '[') + "\\\"" + std::string(1000, '{') + "\"}";
  EXPECT_EQ(parse_json(in_string, "test", kMiB).at("s").get<std::string>().size(), 2001u);
  EXPECT_NO_THROW(parse_json(nested(kMaxJsonDepth), "test", kMiB));
  EXPECT_CLEAN_ERROR(parse_json(nested(kMaxJsonDepth + 1), "doc.json", kMiB), "doc.json", "128 levels");
}

TEST(HostileInput, SizeLimit) {
  EXPECT_CLEAN_ERROR(parse_json(std::string(100, ' ') + "1", "doc.json", 64), "doc.json", "101 bytes",
                     "limit of 64 bytes");
  TempDir tmp;
  test::write_text(tmp / "big.json", "[" + std::string(3 * kMiB, ' ') + "]");
  EXPECT_CLEAN_ERROR(read_json_file(tmp / "big.json", "config", 2 * kMiB), tmp / "big.json", "limit of 2 MiB");
}

TEST(HostileInput, SyntaxErrorsKeepNoLibraryTag) {
  EXPECT_CLEAN_ERROR(parse_json("{\"a\": ", "config x.json", kMiB), "config x.json", "not valid JSON", "parse error");
}

// A token id is an index into a dense table: a huge one must not allocate billions of strings.
TEST(HostileInput, HugeTokenIdIsRefused) {
  json doc = json::parse(small_tokenizer_json());
  doc["model"]["vocab"]["ab"] = 2000000000;
  EXPECT_CLEAN_ERROR(HfTokenizer(doc, "t/tokenizer.json"), "t/tokenizer.json", "'ab'", "too large");
}

// ---------------------------------------------------------------------------------------------
// Class 4: fields of the wrong type name the file, the key and what was expected.

TEST(HostileInput, WrongTypeFieldsNameFileAndKey) {
  TempDir tmp;
  const std::string ckpt = tmp / "step-00000002";
  fs::create_directories(ckpt);
  test::write_text(ckpt + "/trainer_state.json", R"({"step": null, "data_index": "7", "elapsed_s": [1]})");
  const json state = train::read_trainer_state(ckpt);
  const std::string where = train::trainer_state_path(ckpt);
  EXPECT_CLEAN_ERROR(json_int(state, "step", where), where, "'step' must be an integer, got null");
  EXPECT_CLEAN_ERROR(json_int(state, "data_index", where), where, "'data_index' must be an integer, got \"7\"");
  EXPECT_CLEAN_ERROR(json_number(state, "elapsed_s", where, 0), where, "'elapsed_s' must be a number");
  EXPECT_CLEAN_ERROR(json_int(state, "optimizer_steps", where), where, "'optimizer_steps' is missing");
  EXPECT_EQ(json_int(state, "ranks", where, 1), 1);
  EXPECT_EQ(json_int(json{{"n", 4.0}}, "n", where), 4);  // integral floats are integers
  EXPECT_CLEAN_ERROR(json_int(json{{"n", 4.5}}, "n", where), where, "'n' must be an integer, got 4.5");

  test::write_text(ckpt + "/trainer_state.json", "[1, 2]");
  EXPECT_CLEAN_ERROR(train::read_trainer_state(ckpt), ckpt + "/trainer_state.json", "must be a JSON object");

  const std::string config = tmp / "config.json";
  test::write_text(config, R"({"model_type": "gemma4_text", "vocab_size": 8, "hidden_size": "wide"})");
  EXPECT_CLEAN_ERROR(load_model_config(config), config, "'hidden_size' must be an integer", "\"wide\"");
}

// ---------------------------------------------------------------------------------------------
// Class 2: a FIFO or a directory where a file is expected is refused at once.

TEST(HostileInput, FifoInsteadOfFileIsRefused) {
  TempDir tmp;
  const std::string fifo = tmp / "model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_CLEAN_ERROR(SafetensorsReader::open(fifo), fifo, "not a regular file");
  EXPECT_CLEAN_ERROR(SafetensorsReader::open(tmp.str()), fifo, "not a regular file");

  const std::string config = tmp / "config.json";
  ASSERT_EQ(::mkfifo(config.c_str(), 0600), 0);
  EXPECT_CLEAN_ERROR(load_model_config(tmp.str()), config, "not a regular file");

  const std::string tok = tmp / "tokenizer.json";
  ASSERT_EQ(::mkfifo(tok.c_str(), 0600), 0);
  EXPECT_CLEAN_ERROR(load_tokenizer(tmp.str()), tok, "not a regular file");
  const std::string sp = tmp / "tokenizer.model";
  ASSERT_EQ(::mkfifo(sp.c_str(), 0600), 0);
  EXPECT_CLEAN_ERROR(load_tokenizer(sp), sp, "not a regular file");
}

TEST(HostileInput, DirectoryInsteadOfFileIsRefused) {
  TempDir tmp;
  fs::create_directories(tmp / "model.safetensors");
  EXPECT_CLEAN_ERROR(SafetensorsReader::open(tmp.str()), tmp / "model.safetensors", "directory");
  test::write_text(tmp / "tokenizer.json", small_tokenizer_json());
  fs::create_directories(tmp / "tokenizer_config.json");
  EXPECT_CLEAN_ERROR(load_tokenizer(tmp.str()), tmp / "tokenizer_config.json", "is a directory");
  EXPECT_CLEAN_ERROR(read_json_file(tmp.str(), "config", kMiB), tmp.str(), "is a directory");
  const std::string ckpt = tmp / "step-00000003";
  fs::create_directories(ckpt + "/trainer_state.json");
  EXPECT_CLEAN_ERROR(train::read_trainer_state(ckpt), ckpt + "/trainer_state.json", "is a directory");
}

// ---------------------------------------------------------------------------------------------
// Class 6: garbage that used to load.

TEST(HostileInput, IndexEntriesStayInsideTheModelDirectory) {
  TempDir tmp;
  const std::string model = tmp / "model";
  fs::create_directories(model);
  save_safetensors(tmp / "outside.safetensors", {{"w", Tensor::full({2}, 1.0)}});
  const std::string index = model + "/model.safetensors.index.json";
  for (const std::string& shard : {std::string("../outside.safetensors"), tmp / "outside.safetensors",
                                   std::string("sub/../../outside.safetensors")}) {
    test::write_text(index, json{{"weight_map", {{"w", shard}}}}.dump());
    EXPECT_CLEAN_ERROR(SafetensorsReader::open(model), index, "'w'", shard);
  }
}

TEST(HostileInput, IntegerTensorIsNotAWeight) {
  TempDir tmp;
  const std::string path = tmp / "ints.safetensors";
  Tensor ids = Tensor::empty({2, 2}, DType::I64);
  for (int64_t i = 0; i < 4; ++i) ids.data<int64_t>()[i] = i;
  save_safetensors(path, {{"w", ids}});
  const SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_CLEAN_ERROR(r.get_f32("w", {2, 2}), path, "'w'", "I64", "floating-point");
  EXPECT_EQ(r.get("w").dtype(), DType::I64);  // read as what it is, it is fine
}

TEST(HostileInput, OptimizerStateOfTheWrongKind) {
  TempDir tmp;
  Tensor ints = Tensor::empty({4}, DType::I32);
  for (int64_t i = 0; i < 4; ++i) ints.data<int32_t>()[i] = 1;
  save_safetensors(tmp / "optimizer.safetensors", {{"exp_avg.w", ints}});
  const train::OptimizerStateReader moments(tmp.str(), 1, 0, 1);
  EXPECT_CLEAN_ERROR(moments.replicated("exp_avg", "w", 0, 4), tmp / "optimizer.safetensors", "'exp_avg.w'", "I32",
                     "floating-point");

  // A sharded layout whose fields have the wrong type.
  TempDir sharded;
  const std::string file = sharded / train::optimizer_shard_name(0, 1);
  save_safetensors(file, {{"x", Tensor::full({1}, 0.0)}},
                   {{train::kOptimizerMetadataKey, R"({"format": 2, "experts": {"num_experts": 0}})"}});
  EXPECT_CLEAN_ERROR(train::OptimizerStateReader(sharded.str(), 1, 0, 1), file, "'format' must be a string, got 2");
  save_safetensors(file, {{"x", Tensor::full({1}, 0.0)}},
                   {{train::kOptimizerMetadataKey, R"({"format": "g4-sharded-adamw-2", "experts": {"num_experts": 0},
                     "mesh": {"dp": null}})"}});
  EXPECT_CLEAN_ERROR(train::OptimizerStateReader(sharded.str(), 1, 0, 1), file, "'dp' must be an integer, got null");
}

// transformers saves layer_scalar (a persistent buffer) with the weights; a checkpoint without
// it is incomplete, and assuming 1 would compute another model.
TEST(HostileInput, MissingLayerScalarIsAnError) {
  TempDir tmp;
  const std::string src = test::fixture_dir("tiny-dense-keqv");
  const std::string model = tmp / "model";
  fs::create_directories(model);
  fs::copy_file(src + "/config.json", model + "/config.json");
  const SafetensorsReader full = SafetensorsReader::open(src);
  std::vector<std::pair<std::string, Tensor>> kept;
  for (const std::string& name : full.names())
    if (name.find("layers.1.layer_scalar") == std::string::npos) kept.emplace_back(name, full.get(name).clone());
  ASSERT_EQ(kept.size() + 1, full.names().size());
  save_safetensors(model + "/model.safetensors", kept);
  EXPECT_CLEAN_ERROR(model::load_hf_model(model), model, "layers.1.layer_scalar");
}

// A write that fails (here: the temporary file is a link to /dev/full, whose writes fail with
// ENOSPC, as a full disk's do) names the file and the reason, removes the temporary file and
// leaves the earlier file as it was; so does a writer that throws.
TEST(HostileInput, FailedAtomicWriteLeavesTheOldFileAndNoTemporary) {
  TempDir tmp;
  const std::string path = tmp / "out.jsonl";
  const std::string temporary = path + ".tmp." + std::to_string(::getpid());
  write_file_atomic(path, "old\n");
  if (fs::exists("/dev/full")) {
    fs::create_symlink("/dev/full", temporary);
    EXPECT_CLEAN_ERROR(write_file_atomic(path, std::string(1 << 16, 'x')), temporary, "No space left on device");
    EXPECT_FALSE(fs::exists(fs::symlink_status(temporary))) << "the temporary file stays";
  }
  EXPECT_THROW(write_file_atomic(path, [](std::ostream& f) {
                 f << "half a line";
                 G4_FAIL("the writer failed");
               }),
               Error);
  EXPECT_FALSE(fs::exists(temporary)) << "the temporary file stays";
  EXPECT_EQ(read_regular_file(path, "test file", 100), "old\n");
}

// What atomic writes sync: a file's data and a folder's entries; a path that is not there is an error
// naming it (a write never reaches that: it syncs what it just wrote).
TEST(HostileInput, SyncToDiskTakesFilesAndFolders) {
  TempDir tmp;
  const std::string path = tmp / "synced.txt";
  write_file_atomic(path, "data\n");
  EXPECT_NO_THROW(sync_to_disk(path));
  EXPECT_NO_THROW(sync_to_disk(tmp.str()));
  EXPECT_CLEAN_ERROR(sync_to_disk(tmp / "absent"), tmp / "absent", "No such file or directory");
  EXPECT_EQ(parent_folder(path), tmp.str());
  EXPECT_EQ(parent_folder("bare.json"), ".");
}

}  // namespace
}  // namespace g4::io

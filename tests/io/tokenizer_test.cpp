// Tokenizers against ids computed by Hugging Face `tokenizers` and `sentencepiece`
// (tools/make_tokenizer_references.py writes tests/data/tokenizers/references.json), how
// load_tokenizer picks files and special ids, and the errors for input g4 cannot read.
#include "io/tokenizer.h"

#include <filesystem>

#include "io/hf_tokenizer.h"
#include "io/io_test_util.h"
#include "support/test_paths.h"

namespace g4::io {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string repo_path(const std::string& relative) {
  return test::source_dir() + "/" + relative;
}
std::string data_path(const std::string& name) {
  return test::data_dir() + "/tokenizers/" + name;
}
const std::string kKjvDir = repo_path("recipes/data/kjv-tokenizer");

const json& references() {
  static const json refs = [] {
    const std::vector<char> bytes = test::read_bytes(data_path("references.json"));
    return json::parse(bytes.begin(), bytes.end());
  }();
  return refs;
}

json read_json(const std::string& path) {
  const std::vector<char> bytes = test::read_bytes(path);
  return json::parse(bytes.begin(), bytes.end());
}

// ---------------------------------------------------------------------------------------------
// Reference ids and strings, one test set per tokenizer.

class Reference : public ::testing::TestWithParam<std::string> {
 protected:
  const json& ref() const { return references()["tokenizers"][GetParam()]; }
  const json& texts() const { return ref().contains("texts") ? ref()["texts"] : references()["texts"]; }
  std::unique_ptr<Tokenizer> load() const { return load_tokenizer(repo_path(ref()["file"].get<std::string>())); }
};

TEST_P(Reference, EncodesAsReference) {
  auto tok = load();
  ASSERT_EQ(texts().size(), ref()["encode"].size());
  for (size_t i = 0; i < texts().size(); ++i) {
    SCOPED_TRACE("text " + texts()[i].dump());
    EXPECT_EQ(tok->encode(texts()[i].get<std::string>()), ref()["encode"][i].get<std::vector<int32_t>>());
  }
}

TEST_P(Reference, DecodesAsReference) {
  auto tok = load();
  for (size_t i = 0; i < texts().size(); ++i) {
    SCOPED_TRACE("text " + texts()[i].dump());
    const auto ids = ref()["encode"][i].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), ref()["decode"][i].get<std::string>());
    EXPECT_EQ(tok->decode(ids, /*skip_special=*/true), ref()["decode_skip_special"][i].get<std::string>());
  }
  // Id lists encoding never produces: cut-off byte sequences, specials between bytes, <unk>s.
  for (const json& c : ref()["decode_cases"]) {
    SCOPED_TRACE("ids " + c["ids"].dump());
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["text"].get<std::string>());
    EXPECT_EQ(tok->decode(ids, true), c["text_skip_special"].get<std::string>());
  }
}

TEST_P(Reference, Lookups) {
  auto tok = load();
  EXPECT_EQ(tok->vocab_size(), ref()["vocab_size"].get<int64_t>());
  for (const auto& [token, id] : ref()["token_to_id"].items()) {
    SCOPED_TRACE(token);
    if (id.is_null()) {
      EXPECT_FALSE(tok->token_to_id(token).has_value());
    } else {
      EXPECT_EQ(tok->token_to_id(token), id.get<int32_t>());
    }
  }
  for (const auto& [id, token] : ref()["id_to_token"].items()) {
    if (!token.is_null()) {
      EXPECT_EQ(tok->id_to_token(std::stoi(id)), token.get<std::string>()) << "id " << id;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Reference, ::testing::Values("kjv", "varied", "plain", "ranks", "sentencepiece"),
                         [](const auto& info) { return info.param; });

// transformers 5 writes Gemma tokenizers with a Split(" ", MergedWithPrevious) pre-tokenizer
// after the Replace(" " -> "▁") normalizer; no space is left to split on, so ids are unchanged.
TEST(HfTokenizer, TransformersGemmaPreTokenizerChangesNothing) {
  json doc = read_json(kKjvDir + "/tokenizer.json");
  doc["pre_tokenizer"] = json::parse(
      R"({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false})");
  const HfTokenizer tok(doc, "kjv with Split");
  const json& ref = references()["tokenizers"]["kjv"];
  for (size_t i = 0; i < references()["texts"].size(); ++i)
    EXPECT_EQ(tok.encode(references()["texts"][i].get<std::string>()), ref["encode"][i].get<std::vector<int32_t>>());
}

// ---------------------------------------------------------------------------------------------
// load_tokenizer: which file, which special ids.

TEST(LoadTokenizer, KjvDefaultHasGemmaSpecialIds) {
  auto tok = load_tokenizer(kKjvDir);
  EXPECT_NE(dynamic_cast<HfTokenizer*>(tok.get()), nullptr);
  EXPECT_EQ(tok->vocab_size(), 2048);
  EXPECT_EQ(tok->pad_id, 0);
  EXPECT_EQ(tok->eos_id, 1);
  EXPECT_EQ(tok->bos_id, 2);
  EXPECT_EQ(tok->token_to_id("<unk>"), 3);
  EXPECT_EQ(tok->token_to_id("<start_of_turn>"), 4);
  EXPECT_EQ(tok->token_to_id("<end_of_turn>"), 5);
  EXPECT_EQ(tok->decode(tok->encode("And God said, Let there be light.")), "And God said, Let there be light.");
}

TEST(LoadTokenizer, DirectoryPrefersTokenizerJson) {
  test::TempDir dir;
  fs::copy_file(data_path("sp.model"), dir / "tokenizer.model");
  auto sp = load_tokenizer(dir.str());
  EXPECT_EQ(dynamic_cast<HfTokenizer*>(sp.get()), nullptr);
  EXPECT_EQ(sp->vocab_size(), 600);
  fs::copy_file(data_path("varied.json"), dir / "tokenizer.json");
  auto hf = load_tokenizer(dir.str());
  EXPECT_NE(dynamic_cast<HfTokenizer*>(hf.get()), nullptr);
  EXPECT_EQ(hf->vocab_size(), 707);
}

TEST(LoadTokenizer, SpecialIdsFromTokensThenConfigThenMap) {
  test::TempDir dir;
  fs::copy_file(data_path("varied.json"), dir / "tokenizer.json");
  auto tok = load_tokenizer(dir.str());  // the <bos>/<eos>/<pad> added tokens
  EXPECT_EQ(tok->bos_id, 700);
  EXPECT_EQ(tok->eos_id, 701);
  EXPECT_EQ(tok->pad_id, 702);

  test::write_text(dir / "tokenizer_config.json",
                   R"({"bos_token": "<start_of_turn>", "eos_token": {"content": "<end_of_turn>"}, "pad_token": null})");
  tok = load_tokenizer(dir.str());
  EXPECT_EQ(tok->bos_id, 703);
  EXPECT_EQ(tok->eos_id, 704);
  EXPECT_EQ(tok->pad_id, 702);

  test::write_text(dir / "special_tokens_map.json", R"({"eos_token": {"content": "<eos>", "lstrip": false}})");
  tok = load_tokenizer(dir.str());
  EXPECT_EQ(tok->bos_id, 703);
  EXPECT_EQ(tok->eos_id, 701);
}

TEST(LoadTokenizer, SentencePieceSpecialIdsFromModel) {
  auto tok = load_tokenizer(data_path("sp.model"));
  EXPECT_EQ(tok->pad_id, 0);
  EXPECT_EQ(tok->eos_id, 1);
  EXPECT_EQ(tok->bos_id, 2);
  EXPECT_EQ(tok->encode("<start_of_turn>"), std::vector<int32_t>{4});
}

// ---------------------------------------------------------------------------------------------
// Errors name the file and what in it is wrong.

json kjv_doc() {
  return read_json(kKjvDir + "/tokenizer.json");
}

// Constructs from `doc`; the error must name the source and contain `parts`.
#define EXPECT_TOKENIZER_ERROR(doc, ...) \
  EXPECT_G4_ERROR(HfTokenizer(doc, "some/tokenizer.json"), "some/tokenizer.json", __VA_ARGS__)

TEST(TokenizerErrors, MissingFiles) {
  EXPECT_G4_ERROR(load_tokenizer("/nonexistent/tokenizer.json"), "/nonexistent/tokenizer.json", "does not exist");
  test::TempDir dir;
  EXPECT_G4_ERROR(load_tokenizer(dir.str()), dir.str(), "no tokenizer.json or tokenizer.model");
  test::write_text(dir / "vocab.txt", "a\n");
  EXPECT_G4_ERROR(load_tokenizer(dir / "vocab.txt"), dir / "vocab.txt", "unknown kind");
}

TEST(TokenizerErrors, MalformedFiles) {
  test::TempDir dir;
  test::write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {)");
  EXPECT_G4_ERROR(load_tokenizer(dir.str()), dir / "tokenizer.json", "not valid JSON");
  test::write_text(dir / "broken.model", "this is not a protobuf");
  EXPECT_G4_ERROR(load_tokenizer(dir / "broken.model"), dir / "broken.model", "not a valid SentencePiece model");

  fs::copy_file(kKjvDir + "/tokenizer.json", dir / "kjv.json");
  test::write_text(dir / "tokenizer_config.json", R"({"bos_token": "<nope>"})");
  EXPECT_G4_ERROR(load_tokenizer(dir / "kjv.json"), dir / "tokenizer_config.json", "'bos_token'", "<nope>");
  test::write_text(dir / "tokenizer_config.json", R"({"eos_token": 7})");
  EXPECT_G4_ERROR(load_tokenizer(dir / "kjv.json"), dir / "tokenizer_config.json", "'eos_token'", "token string");
  test::write_text(dir / "tokenizer_config.json", "{");
  EXPECT_G4_ERROR(load_tokenizer(dir / "kjv.json"), dir / "tokenizer_config.json", "not valid JSON");
}

TEST(TokenizerErrors, UnsupportedModels) {
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    json doc = kjv_doc();
    doc["model"]["type"] = type;
    EXPECT_TOKENIZER_ERROR(doc, "model.type", type, "not supported");
  }
  json doc = kjv_doc();
  doc["model"]["continuing_subword_prefix"] = "##";
  EXPECT_TOKENIZER_ERROR(doc, "model.continuing_subword_prefix", "not supported");
  doc = kjv_doc();
  doc["model"]["dropout"] = 0.1;
  EXPECT_TOKENIZER_ERROR(doc, "model.dropout", "not supported");
  doc = kjv_doc();
  doc.erase("model");
  EXPECT_TOKENIZER_ERROR(doc, "model", "missing");
}

TEST(TokenizerErrors, ByteLevelGpt2Tokenizer) {
  const json gpt2 = json::parse(R"({
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
  EXPECT_TOKENIZER_ERROR(gpt2, "pre_tokenizer.type", "'ByteLevel'", "not supported");
  json doc = kjv_doc();
  doc["decoder"]["decoders"][1] = {{"type", "ByteLevel"}};
  EXPECT_TOKENIZER_ERROR(doc, "decoder.decoders[1].type", "'ByteLevel'", "not supported");
}

TEST(TokenizerErrors, UnsupportedPipelineComponents) {
  json doc = kjv_doc();
  doc["normalizer"] = {{"type", "Sequence"}, {"normalizers", {doc["normalizer"], {{"type", "NFKC"}}}}};
  EXPECT_TOKENIZER_ERROR(doc, "normalizer.normalizers[1].type", "'NFKC'", "not supported");
  doc = kjv_doc();
  doc["normalizer"]["pattern"] = {{"Regex", "\\s+"}};
  EXPECT_TOKENIZER_ERROR(doc, "normalizer.pattern", "regex");
  doc = kjv_doc();
  doc["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}, {"invert", false}};
  EXPECT_TOKENIZER_ERROR(doc, "pre_tokenizer.behavior", "'Sideways'");
  doc["pre_tokenizer"]["behavior"] = "Removed";
  doc["pre_tokenizer"]["invert"] = true;
  EXPECT_TOKENIZER_ERROR(doc, "pre_tokenizer.invert");
  doc = kjv_doc();
  doc["post_processor"] = {{"type", "RobertaProcessing"}};
  EXPECT_TOKENIZER_ERROR(doc, "post_processor.type", "'RobertaProcessing'");
  doc = kjv_doc();
  doc["truncation"] = {{"max_length", 8}};
  EXPECT_TOKENIZER_ERROR(doc, "truncation", "null");
}

TEST(TokenizerErrors, InconsistentVocabulary) {
  json doc = kjv_doc();
  doc["model"]["merges"][3] = {"▁", "nonexistent"};
  EXPECT_TOKENIZER_ERROR(doc, "model.merges[3]", "'nonexistent'", "not in model.vocab");
  doc["model"]["merges"][3] = "t h e";
  EXPECT_TOKENIZER_ERROR(doc, "model.merges[3]", "one space");
  doc = kjv_doc();
  doc["model"]["unk_token"] = "<missing>";
  EXPECT_TOKENIZER_ERROR(doc, "model.unk_token", "'<missing>'");
  doc = kjv_doc();
  doc["model"]["vocab"]["the"] = -4;
  EXPECT_TOKENIZER_ERROR(doc, "model.vocab.the", "non-negative integer");
  doc = kjv_doc();
  doc["added_tokens"][4]["id"] = 99;
  EXPECT_TOKENIZER_ERROR(doc, "added_tokens[4].id", "disagrees with model.vocab");
  doc = kjv_doc();
  doc["added_tokens"][4]["lstrip"] = true;
  EXPECT_TOKENIZER_ERROR(doc, "added_tokens[4].lstrip");
}

TEST(TokenizerErrors, BadTextAndIds) {
  auto hf = load_tokenizer(kKjvDir);
  EXPECT_G4_ERROR(hf->encode("ok \xC3("), "tokenizer.json", "not valid UTF-8", "byte offset 3");
  EXPECT_G4_ERROR(hf->encode("\xED\xA0\x80"), "not valid UTF-8", "byte offset 0");  // a surrogate
  EXPECT_G4_ERROR(hf->decode({5, 2048}), "token id 2048", "2048 ids");
  EXPECT_G4_ERROR(hf->id_to_token(-1), "token id -1");
  auto sp = load_tokenizer(data_path("sp.model"));
  EXPECT_G4_ERROR(sp->encode("\xFF"), "sp.model", "not valid UTF-8");
  EXPECT_G4_ERROR(sp->decode({600}), "sp.model", "token id 600");
}

}  // namespace
}  // namespace g4::io

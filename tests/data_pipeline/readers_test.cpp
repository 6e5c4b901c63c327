// Reading files into documents: plain-text splitting, JSONL text and chat, format detection, and the
// errors for bad input (each naming the file and line).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "data/dataset.h"
#include "data_pipeline/test_tokenizer.h"
#include "io/io_test_util.h"

namespace g4::data {
namespace {

using test::ByteTokenizer;

DataOptions options_for(const std::string& file, const std::string& format = "auto") {
  DataOptions o;
  o.files = {file};
  o.format = format;
  o.add_bos = o.add_eos = false;  // documents are then exactly their text's bytes
  return o;
}

std::vector<std::string> texts(const std::vector<Document>& docs) {
  const ByteTokenizer tok;
  std::vector<std::string> out;
  for (const Document& d : docs) out.push_back(tok.decode(d.ids));
  return out;
}

std::vector<std::string> sources(const std::vector<Document>& docs) {
  std::vector<std::string> out;
  for (const Document& d : docs) out.push_back(d.source);
  return out;
}

const std::string kText = "\xEF\xBB\xBFtitle line\r\nsecond line\n  \t \nnext paragraph\n\n\n\nlast\n";

TEST(PlainText, SplitsByParagraphLineOrFile) {
  test::TempDir dir;
  const std::string f = dir / "corpus.txt";
  test::write_text(f, kText);
  const ByteTokenizer tok;
  DataOptions o = options_for(f);
  std::vector<Document> docs = load_documents(o, tok);  // paragraph is the default
  EXPECT_EQ(texts(docs), (std::vector<std::string>{"title line\nsecond line", "next paragraph", "last"}));
  EXPECT_EQ(sources(docs), (std::vector<std::string>{f + ":1", f + ":4", f + ":8"}));
  o.text_split = "line";
  docs = load_documents(o, tok);
  EXPECT_EQ(texts(docs), (std::vector<std::string>{"title line", "second line", "next paragraph", "last"}));
  EXPECT_EQ(sources(docs).back(), f + ":8");
  o.text_split = "file";
  EXPECT_EQ(texts(load_documents(o, tok)),
            (std::vector<std::string>{"title line\nsecond line\n  \t \nnext paragraph\n\n\n\nlast"}));
}

TEST(PlainText, BosEosAndEveryTokenTrained) {
  test::TempDir dir;
  test::write_text(dir / "a.txt", "hi\n");
  const ByteTokenizer tok;
  DataOptions o = options_for(dir / "a.txt");
  o.add_bos = true;
  o.add_eos = true;
  const std::vector<Document> docs = load_documents(o, tok);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].ids, (std::vector<int32_t>{tok.bos_id, 'h' + 10, 'i' + 10, tok.eos_id}));
  EXPECT_EQ(docs[0].trained, (std::vector<uint8_t>{1, 1, 1, 1}));
  o.add_bos = false;
  EXPECT_EQ(load_documents(o, tok)[0].ids.front(), 'h' + 10);
}

TEST(PlainText, RefusesInvalidUtf8WithItsLine) {
  test::TempDir dir;
  test::write_text(dir / "bad.txt", "fine\nstill fine\nbroken \xC3(\n");
  EXPECT_G4_ERROR(load_documents(options_for(dir / "bad.txt"), ByteTokenizer()), dir / "bad.txt:3", "UTF-8");
  test::write_text(dir / "cut.txt", "ends mid character \xE2\x82");
  EXPECT_G4_ERROR(load_documents(options_for(dir / "cut.txt"), ByteTokenizer()), dir / "cut.txt:1", "UTF-8");
}

TEST(JsonlText, BlankLinesUnicodeAndExtraKeys) {
  test::TempDir dir;
  const std::string f = dir / "d.jsonl";
  test::write_text(f,
                   "{\"text\": \"caf\\u00e9 \\ud83c\\udf0d\", \"id\": 7}\n"
                   "\n   \r\n"
                   "{\"text\": \"raw UTF-8: Grüße 你好\"}\r\n"
                   "{\"text\": \"\"}\n"  // empty: skipped
                   "{\"meta\": {\"text\": 1}, \"text\": \"line\\nbreak\"}");
  const std::vector<Document> docs = load_documents(options_for(f), ByteTokenizer());
  EXPECT_EQ(texts(docs), (std::vector<std::string>{"caf\xC3\xA9 \xF0\x9F\x8C\x8D", "raw UTF-8: Grüße 你好",
                                                   "line\nbreak"}));
  EXPECT_EQ(sources(docs), (std::vector<std::string>{f + ":1", f + ":4", f + ":6"}));
}

TEST(JsonlChat, RendersConversationsAndSkipsThoseWithoutAReply) {
  test::TempDir dir;
  const std::string f = dir / "chat.jsonl";
  test::write_text(f,
                   "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                   "{\"role\": \"assistant\", \"content\": \"Hello\"}]}\n"
                   "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, "
                   "{\"role\": \"user\", \"content\": \"Q\"}]}\n");
  const ByteTokenizer tok;
  DataOptions o = options_for(f);
  o.add_bos = o.add_eos = true;  // ignored for chat: the template writes <bos> and <turn|>
  const std::vector<Document> docs = load_documents(o, tok);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(tok.decode(docs[0].ids), "<bos><|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n");
  EXPECT_EQ(docs[0].source, f + ":1");
}

TEST(FormatDetection, ByExtensionAndFirstObject) {
  test::TempDir dir;
  test::write_text(dir / "notes.md", "{\"text\": \"looks like JSON but is text\"}\n");
  EXPECT_EQ(texts(load_documents(options_for(dir / "notes.md"), ByteTokenizer())),
            (std::vector<std::string>{"{\"text\": \"looks like JSON but is text\"}"}));
  test::write_text(dir / "c.json", "\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                                   "{\"role\": \"assistant\", \"content\": \"b\"}]}\n");
  EXPECT_EQ(load_documents(options_for(dir / "c.json"), ByteTokenizer()).size(), 1u);
  // An explicit format wins over the extension.
  test::write_text(dir / "t.data", "plain\n\ntext\n");
  EXPECT_EQ(load_documents(options_for(dir / "t.data", "text"), ByteTokenizer()).size(), 2u);
  EXPECT_G4_ERROR(load_documents(options_for(dir / "t.data"), ByteTokenizer()), dir / "t.data",
                  "extension '.data'", "set the data format");
  test::write_text(dir / "neither.jsonl", "{\"prompt\": \"a\"}\n");
  EXPECT_G4_ERROR(load_documents(options_for(dir / "neither.jsonl"), ByteTokenizer()), dir / "neither.jsonl:1",
                  "neither 'text' nor 'messages'");
  // Several files, each detected on its own.
  DataOptions both = options_for(dir / "notes.md");
  both.files.push_back(dir / "c.json");
  EXPECT_EQ(load_documents(both, ByteTokenizer()).size(), 2u);
}

// Writes `content` as a .jsonl file and expects loading it (format `format`) to fail with `parts`.
template <class... Parts>
void expect_jsonl_error(const std::string& content, const std::string& format, const Parts&... parts) {
  test::TempDir dir;
  const std::string f = dir / "bad.jsonl";
  test::write_text(f, content);
  EXPECT_G4_ERROR(load_documents(options_for(f, format), ByteTokenizer()), f + ":2", std::string(parts)...);
}

TEST(JsonlErrors, NameFileLineAndKey) {
  const std::string ok = "{\"text\": \"fine\"}\n";
  expect_jsonl_error(ok + "{\"text\": \"unterminated}\n", "jsonl", "invalid JSON", "column 24");
  expect_jsonl_error(ok + "{\"text\": \"a\"} trailing\n", "jsonl", "invalid JSON");
  expect_jsonl_error(ok + "[1, 2]\n", "jsonl", "expected a JSON object", "array");
  expect_jsonl_error(ok + "{\"txt\": \"a\"}\n", "jsonl", "missing key 'text'");
  expect_jsonl_error(ok + "{\"messages\": []}\n", "jsonl", "missing key 'text'", "set the data format to chat");
  expect_jsonl_error(ok + "{\"text\": 5}\n", "jsonl", "'text' must be a string", "number");
  expect_jsonl_error(ok + "{\"text\": null}\n", "auto", "'text' must be a string", "null");
  expect_jsonl_error(ok + "{\"text\": \"\xff\"}\n", "jsonl", "invalid JSON");  // not UTF-8
  // Found by fuzz/data_lines.cpp: nlohmann reports a number past a double's range as out_of_range,
  // which escaped as "[json.exception.out_of_range.406] ...".
  expect_jsonl_error(ok + "{\"text\": \"a\", \"n\": 1e309}\n", "jsonl", "invalid JSON",
                     "number overflow parsing '1e309'");
  expect_jsonl_error(ok + "{\"text\": \"a\", \"n\": -1e400}\n", "auto", "invalid JSON");
}

TEST(JsonlErrors, ChatMessagesAreChecked) {
  const std::string ok = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n";
  expect_jsonl_error(ok + "{\"text\": \"a\"}\n", "chat", "missing key 'messages'");
  expect_jsonl_error(ok + "{\"messages\": {\"role\": \"user\"}}\n", "chat", "'messages' must be an array");
  expect_jsonl_error(ok + "{\"messages\": []}\n", "chat", "'messages' is empty");
  expect_jsonl_error(ok + "{\"messages\": [\"hi\"]}\n", "chat", "messages[0] must be a {role, content} object");
  expect_jsonl_error(ok + "{\"messages\": [{\"content\": \"a\"}]}\n", "chat", "messages[0]", "missing key 'role'");
  expect_jsonl_error(ok + "{\"messages\": [{\"role\": \"user\"}]}\n", "chat", "messages[0]", "missing key 'content'");
  expect_jsonl_error(ok + "{\"messages\": [{\"role\": 1, \"content\": \"a\"}]}\n", "chat", "'role' must be a string");
  // Content lists are parts (multimodal_data_test.cpp); a bad part or another type is refused.
  expect_jsonl_error(ok + "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}\n", "auto",
                     "messages[0].content[0]", "missing key 'text'");
  expect_jsonl_error(ok + "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n", "auto", "messages[0]",
                     "'content' must be a string or a list of parts", "number");
  expect_jsonl_error(ok + "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                          "{\"role\": \"bot\", \"content\": \"b\"}]}\n",
                     "chat", "messages[1]", "unknown role 'bot'");
}

TEST(DataErrors, MissingFileAndEmptyData) {
  test::TempDir dir;
  EXPECT_G4_ERROR(load_documents(options_for(dir / "nope.txt"), ByteTokenizer()), dir / "nope.txt",
                  "cannot open");
  test::write_text(dir / "blank.txt", "\n  \n\t\n");
  test::write_text(dir / "empty.jsonl", "{\"text\": \"\"}\n");
  DataOptions o = options_for(dir / "blank.txt");
  o.files.push_back(dir / "empty.jsonl");
  EXPECT_EQ(load_documents(o, ByteTokenizer()).size(), 0u);
  EXPECT_G4_ERROR(PackedDataset(o, ByteTokenizer()), "no documents", dir / "blank.txt", dir / "empty.jsonl");
  o.files.clear();
  EXPECT_G4_ERROR(PackedDataset(o, ByteTokenizer()), "no files");
}

TEST(DataErrors, OptionsAreChecked) {
  test::TempDir dir;
  test::write_text(dir / "a.txt", "a\n");
  const auto expect_option_error = [&](auto change, const char* key, const char* what) {
    DataOptions o = options_for(dir / "a.txt");
    change(o);
    EXPECT_G4_ERROR(PackedDataset(o, ByteTokenizer()), std::string("data option ") + key, what);
  };
  expect_option_error([](DataOptions& o) { o.format = "csv"; }, "format", "'csv' is not one of auto, text");
  expect_option_error([](DataOptions& o) { o.text_split = "sentence"; }, "text_split", "'sentence'");
  expect_option_error([](DataOptions& o) { o.overlong = "drop"; }, "overlong", "'drop'");
  expect_option_error([](DataOptions& o) { o.seq_len = 1; }, "seq_len", "too small");
  expect_option_error([](DataOptions& o) { o.validation_fraction = 1.0; }, "validation_fraction", "[0, 1)");
  expect_option_error([](DataOptions& o) { o.validation_fraction = -0.1; }, "validation_fraction", "[0, 1)");
}

TEST(DataErrors, OverlongErrorNamesTheLine) {
  test::TempDir dir;
  test::write_text(dir / "a.txt", "short\n\nthis paragraph is far too long\n");
  DataOptions o = options_for(dir / "a.txt");
  o.seq_len = 8;
  o.overlong = "error";
  o.validation_fraction = 0;
  EXPECT_G4_ERROR(PackedDataset(o, ByteTokenizer()), dir / "a.txt:3", "30 tokens", "seq_len 8");
}

// Issue 19: a deeply nested line is refused before parsing (nlohmann's recursive parts would
// overflow the stack), and a FIFO or directory named as a data file is refused without blocking.
TEST(HostileData, DeepNestingFifoAndDirectory) {
  const std::string ok = "{\"text\": \"fine\"}\n";
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  expect_jsonl_error(ok + "{\"text\": \"a\", \"meta\": " + deep + "}\n", "jsonl", "deeper than the limit of 128");

  test::TempDir dir;
  const std::string fifo = dir / "pipe.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_G4_ERROR(load_documents(options_for(fifo), ByteTokenizer()), fifo, "not a regular file");
  std::filesystem::create_directories(dir / "folder.jsonl");
  EXPECT_G4_ERROR(load_documents(options_for(dir / "folder.jsonl"), ByteTokenizer()), dir / "folder.jsonl",
                  "is a directory");
}

}  // namespace
}  // namespace g4::data

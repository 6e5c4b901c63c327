// The Gemma 4 chat template: byte-for-byte against renderings of the real template (made with jinja2
// by tools/render_chat_reference.py), role errors, and which tokens a conversation trains.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data_pipeline/test_tokenizer.h"
#include "io/io_test_util.h"
#include "support/test_paths.h"

namespace g4::data {
namespace {

using nlohmann::json;
using test::ByteTokenizer;

const std::string kThought = "<|channel>thought\n<channel|>";

json reference_cases() {
  const auto bytes = test::read_bytes(test::source_dir() + "/tests/data_pipeline/chat_template_cases.json");
  return json::parse(bytes.begin(), bytes.end());
}

std::vector<ChatMessage> messages_of(const json& c) {
  std::vector<ChatMessage> m;
  for (const json& x : c["messages"]) m.push_back({x["role"], x["content"]});
  return m;
}

TEST(ChatTemplate, MatchesTheRealTemplateByteForByte) {
  const json cases = reference_cases()["cases"];
  ASSERT_GE(cases.size(), 20u);
  for (const json& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>() + (c["add_generation_prompt"].get<bool>() ? " +prompt" : ""));
    const bool gen = c["add_generation_prompt"];
    const std::string expected = c["expected"];
    // The reference template is the 26B-A4B/31B one; E2B/E4B's differs only in leaving out the
    // empty thought channel after the generation prompt.
    EXPECT_EQ(render_chat(messages_of(c), gen, ChatVariant::Large), expected);
    const std::string small = gen ? expected.substr(0, expected.size() - kThought.size()) : expected;
    if (gen) {
      EXPECT_EQ(expected.substr(small.size()), kThought);
    }
    EXPECT_EQ(render_chat(messages_of(c), gen), small);
  }
}

TEST(ChatTemplate, MarksEachReplyAndItsClosingTurn) {
  const RenderedChat r = render_chat_marked(
      {{"system", "S"}, {"user", "Q1"}, {"assistant", " A1 "}, {"user", "Q2"}, {"assistant", "A2"}}, true);
  ASSERT_EQ(r.replies.size(), 2u);
  EXPECT_EQ(r.text.substr(r.replies[0].header, r.replies[0].begin - r.replies[0].header), "model\n");
  EXPECT_EQ(r.text.substr(r.replies[0].begin, r.replies[0].end - r.replies[0].begin), "A1<turn|>");
  EXPECT_EQ(r.text.substr(r.replies[1].begin, r.replies[1].end - r.replies[1].begin), "A2<turn|>");
  EXPECT_EQ(r.text.substr(r.replies[1].end), "\n<|turn>model\n");  // the prompt is not a reply
  EXPECT_EQ(r.text.substr(r.replies[0].header - 7, 7), "<|turn>");
}

TEST(ChatTemplate, RefusesWhatItCannotRender) {
  EXPECT_G4_ERROR(render_chat({}), "no messages");
  EXPECT_G4_ERROR(render_chat({{"user", "a"}, {"tool", "b"}}), "messages[1]", "unknown role 'tool'");
  EXPECT_G4_ERROR(render_chat({{"user", "a"}, {"developer", "b"}}), "messages[1]", "developer only as the first");
  EXPECT_G4_ERROR(render_chat({{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}}), "messages[1] and messages[2]",
                  "both assistant");
  EXPECT_G4_ERROR(render_chat({{"User", "a"}}), "unknown role 'User'");
}

std::string decode_where(const Document& d, const ByteTokenizer& tok, bool trained) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < d.ids.size(); ++i)
    if (static_cast<bool>(d.trained[i]) == trained) ids.push_back(d.ids[i]);
  return tok.decode(ids);
}

TEST(ChatDocument, TrainsOnlyAssistantRepliesAndTheirEndOfTurn) {
  const ByteTokenizer tok;
  const RenderedChat r = render_chat_marked(
      {{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}, {"assistant", "See you."}});
  const Document d = chat_document(r, tok);
  EXPECT_EQ(d.ids, tok.encode(r.text));  // the same tokens as the whole string
  ASSERT_EQ(d.trained.size(), d.ids.size());
  EXPECT_EQ(decode_where(d, tok, true), "Hello!<turn|>See you.<turn|>");
  EXPECT_EQ(decode_where(d, tok, false),
            "<bos><|turn>system\nBe kind.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n\n<|turn>user\nBye<turn|>\n"
            "<|turn>model\n\n");
  EXPECT_EQ(d.ids.front(), tok.bos_id);  // the template's own <bos>, once
  EXPECT_EQ(std::count(d.ids.begin(), d.ids.end(), tok.bos_id), 1);
}

TEST(ChatDocument, SpecialStringsInsideRepliesStayExact) {
  const ByteTokenizer tok;
  const RenderedChat r = render_chat_marked({{"user", "x"}, {"assistant", "a <|turn> b"}, {"user", "y"}});
  const Document d = chat_document(r, tok);
  EXPECT_EQ(d.ids, tok.encode(r.text));
  EXPECT_EQ(decode_where(d, tok, true), "a <|turn> b<turn|>");
}

TEST(ChatDocument, ATokenMergedAcrossTheHeaderBelongsToTheReply) {
  // "\nS" is one token here, so "model\n" + "Sure" tokenises as m,o,d,e,l,"\nS",u,r,e: the merged
  // token overlaps the reply and is trained (as Hugging Face's character-span masks mark it).
  const ByteTokenizer tok(ByteTokenizer::Options{true, true});
  const RenderedChat r = render_chat_marked({{"user", "go"}, {"assistant", "Sure"}});
  const Document d = chat_document(r, tok);
  EXPECT_EQ(d.ids, tok.encode(r.text));
  const auto merged = std::find(d.ids.begin(), d.ids.end(), ByteTokenizer::kMergedNewlineS);
  ASSERT_NE(merged, d.ids.end());
  EXPECT_TRUE(d.trained[static_cast<size_t>(merged - d.ids.begin())]);
  EXPECT_FALSE(d.trained[static_cast<size_t>(merged - d.ids.begin()) - 1]);  // the "l" of "model"
  EXPECT_EQ(decode_where(d, tok, true), "\nSure<turn|>");
}

TEST(ChatDocument, NeedsAGemma4Tokenizer) {
  const ByteTokenizer tok(ByteTokenizer::Options{false, false});
  EXPECT_G4_ERROR(chat_document(render_chat_marked({{"user", "a"}, {"assistant", "b"}}), tok), "Gemma 4 tokenizer",
                  "'<|turn>'");
}

}  // namespace
}  // namespace g4::data

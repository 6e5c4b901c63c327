// The request reader shared by `g4 serve` and `g4 generate --prompts`, and the OpenAI response
// and error shapes. The server itself is driven end to end by openai_client_test.py.
#include "serve/request.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/multimodal.h"
#include "io/audio_features.h"
#include "io/resample.h"
#include "io/wav.h"
#include "serve/openai.h"
#include "serve/prompts_file.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/png_file.h"
#include "support/test_paths.h"
#include "support/wav_file.h"

namespace g4::serve {
namespace {

using nlohmann::json;

class RequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_ = io::load_tokenizer(test::data_dir() + "/tokenizers/plain.json");
    info_.tokenizer = tok_.get();
    info_.vocab_size = tok_->vocab_size();
    info_.context_len = 64;
    info_.chat_stop_ids = {tok_->eos_id};
  }

  ParsedRequest parse(const std::string& body, Api api = Api::Completions) {
    return parse_request(json::parse(body), api, info_, api_defaults(api));
  }

  // The RequestError a body gets: "param|status|code|message".
  std::string refusal(const std::string& body, Api api = Api::Completions) {
    try {
      parse(body, api);
    } catch (const RequestError& e) {
      return e.param() + "|" + std::to_string(e.status()) + "|" + e.code() + "|" + e.what();
    }
    return "accepted";
  }

  std::unique_ptr<io::Tokenizer> tok_;
  ModelInfo info_;
};

TEST_F(RequestTest, CompletionPromptsAsTextIdsOrABatchOfOne) {
  const ParsedRequest text = parse(R"({"prompt": "In the beginning"})");
  ASSERT_GT(text.request.prompt.size(), 1u);
  EXPECT_EQ(text.request.prompt[0], tok_->bos_id);
  EXPECT_EQ(text.request.options.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(parse(R"({"prompt": [5, 6, 7]})").request.prompt, (std::vector<int64_t>{5, 6, 7}));
  EXPECT_EQ(parse(R"({"prompt": [[5, 6]]})").request.prompt, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(parse(R"({"prompt": ["In the beginning"]})").request.prompt, text.request.prompt);
  EXPECT_NE(refusal(R"({"prompt": ["a", "b"]})").find("prompt|400||'prompt' holds 2 prompts; batches"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": [1, 9999]})").find("prompt[1] = 9999 is outside the vocabulary"), std::string::npos);
  EXPECT_EQ(refusal(R"({"prompt": []})"), "prompt|400||'prompt' is empty");
  EXPECT_EQ(refusal(R"({"prompt": 5})"), "prompt|400||'prompt' must be a string or a list of token ids, got a number");
  EXPECT_EQ(refusal(R"({})"), "prompt|400||missing 'prompt'");
}

TEST_F(RequestTest, SamplingFieldsAndTheirRanges) {
  const gen::RequestOptions o =
      parse(R"({"prompt": "a", "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1, "seed": 42, "n": 3.0,
                "max_tokens": 7, "stop": "x", "stop_token_ids": [9], "ignore_eos": true, "logprobs": 2})")
          .request.options;
  EXPECT_DOUBLE_EQ(o.sampling.temperature, 0.5);
  EXPECT_DOUBLE_EQ(o.sampling.top_p, 0.9);
  EXPECT_EQ(o.sampling.top_k, 40);
  EXPECT_DOUBLE_EQ(o.sampling.min_p, 0.1);
  EXPECT_EQ(o.sampling.seed, 42u);
  EXPECT_EQ(o.n, 3);
  EXPECT_EQ(o.max_tokens, 7);
  EXPECT_EQ(o.stop_strings, (std::vector<std::string>{"x"}));
  EXPECT_EQ(o.stop_ids, (std::vector<int64_t>{9}));
  EXPECT_TRUE(o.ignore_eos);
  EXPECT_EQ(o.logprobs, 2);
  EXPECT_EQ(parse(R"({"prompt": "a", "top_k": -1})").request.options.sampling.top_k, 0);  // vLLM's "no cut"
  EXPECT_EQ(parse(R"({"prompt": "a", "temperature": null})").request.options.sampling.temperature, 1.0);
  EXPECT_EQ(parse(R"({"prompt": "a"})").request.options.logprobs, -1);

  EXPECT_EQ(refusal(R"({"prompt": "a", "temperature": "hot"})"),
            "temperature|400||'temperature' must be a number, got a string");
  EXPECT_EQ(refusal(R"({"prompt": "a", "temperature": -1})"),
            "temperature|400||'temperature' must be in [0, 100], got -1");
  EXPECT_EQ(refusal(R"({"prompt": "a", "top_p": 0})"), "top_p|400||'top_p' must be in (0, 1], got 0");
  EXPECT_EQ(refusal(R"({"prompt": "a", "top_k": -2})"), "top_k|400||'top_k' must be >= 0 (or -1 for no cut), got -2");
  EXPECT_EQ(refusal(R"({"prompt": "a", "min_p": 1.5})"), "min_p|400||'min_p' must be in [0, 1], got 1.5");
  EXPECT_EQ(refusal(R"({"prompt": "a", "n": 2.5})"), "n|400||'n' must be an integer, got a float");
  EXPECT_EQ(refusal(R"({"prompt": "a", "n": 0})"), "n|400||'n' must be in [1, 128], got 0");
  EXPECT_EQ(refusal(R"({"prompt": "a", "max_tokens": 0})"), "max_tokens|400||'max_tokens' must be >= 1, got 0");
  EXPECT_EQ(refusal(R"({"prompt": "a", "seed": true})"), "seed|400||'seed' must be an integer, got a boolean");
  EXPECT_EQ(refusal(R"({"prompt": "a", "stop": [1]})"),
            "stop|400||'stop' must be a string or a list of strings, got a list holding a number");
  EXPECT_EQ(refusal(R"({"prompt": "a", "stop": [""]})"), "stop|400||'stop' strings must not be empty");
  EXPECT_EQ(refusal(R"({"prompt": "a", "logprobs": 21})"), "logprobs|400||'logprobs' must be in [0, 20], got 21");
  EXPECT_NE(refusal(R"({"prompt": "a", "logprobs": true})").find("chat form"), std::string::npos);
}

TEST_F(RequestTest, UnsupportedParametersAreRefusedNotIgnored) {
  EXPECT_EQ(refusal(R"({"prompt": "a", "echo": true})"), "echo|400||'echo' is not supported");
  EXPECT_EQ(refusal(R"({"prompt": "a", "presence_penalty": 0.5})"),
            "presence_penalty|400||'presence_penalty' is not supported");
  EXPECT_EQ(refusal(R"({"prompt": "a", "best_of": 3})"), "best_of|400||'best_of' other than n is not supported");
  EXPECT_EQ(refusal(R"({"prompt": "a", "logit_bias": {"5": 1}})"), "logit_bias|400||'logit_bias' is not supported");
  // Neutral values and unknown fields (clients send extras such as "user") are accepted.
  EXPECT_EQ(refusal(R"({"prompt": "a", "echo": false, "presence_penalty": 0, "user": "u", "best_of": 1})"), "accepted");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]})", Api::Chat),
            "tools|400||'tools' (tool calling) is not supported");
}

// vLLM's extensions and tool fields that would change the answer if honoured: refused by name
// (probed by tools/probe_serve.py, which found them silently ignored); neutral values pass.
TEST_F(RequestTest, OutputChangingExtensionsAreRefusedNotIgnored) {
  for (const char* field : {R"("min_tokens": 3)", R"("use_beam_search": true)", R"("include_stop_str_in_output": true)",
                            R"("prompt_logprobs": 1)", R"("guided_json": {})", R"("guided_choice": ["a"])",
                            R"("allowed_token_ids": [5])", R"("bad_words": ["x"])", R"("truncate_prompt_tokens": 4)",
                            R"("structured_outputs": {"regex": "a"})", R"("skip_special_tokens": true)"}) {
    const std::string got = refusal(std::string(R"({"prompt": "a", )") + field + "}");
    const std::string key = std::string(field).substr(1, std::string(field).find('"', 1) - 1);
    EXPECT_EQ(got.rfind(key + "|400||'" + key + "'", 0), 0u) << field << ": " << got;
  }
  EXPECT_EQ(refusal(R"({"prompt": "a", "min_tokens": 0, "use_beam_search": false, "bad_words": [],
                        "include_stop_str_in_output": false, "skip_special_tokens": false})"),
            "accepted");
  const std::string chat = R"({"messages": [{"role": "user", "content": "a"}], )";
  EXPECT_EQ(refusal(chat + R"("tool_choice": "required"})", Api::Chat),
            "tool_choice|400||'tool_choice' other than \"none\" or \"auto\" (tool calling) is not supported");
  EXPECT_EQ(refusal(chat + R"("tool_choice": {"type": "function", "function": {"name": "f"}}})", Api::Chat)
                .rfind("tool_choice|400|", 0),
            0u);
  EXPECT_EQ(refusal(chat + R"("tool_choice": "none", "function_call": "auto"})", Api::Chat), "accepted");
  EXPECT_EQ(refusal(chat + R"("continue_final_message": true})", Api::Chat),
            "continue_final_message|400||'continue_final_message' is not supported (the last turn is always closed)");
  EXPECT_EQ(refusal(chat + R"("echo": true})", Api::Chat), "echo|400||'echo' is not supported");
  EXPECT_EQ(refusal(chat + R"("chat_template": "{{ x }}"})", Api::Chat).rfind("chat_template|400|", 0), 0u);
  EXPECT_EQ(refusal(chat + R"("chat_template_kwargs": {"enable_thinking": true}})", Api::Chat),
            "chat_template_kwargs|400||'chat_template_kwargs' key 'enable_thinking' = true is not supported (the "
            "template renders with thinking off)");
  EXPECT_EQ(refusal(chat + R"("chat_template_kwargs": {"enable_thinking": false}, "continue_final_message": false})",
                    Api::Chat),
            "accepted");
  const ParsedRequest ids = parse(R"({"prompt": "a", "return_tokens_as_token_ids": true})");
  EXPECT_TRUE(ids.tokens_as_ids);
  EXPECT_FALSE(parse(R"({"prompt": "a"})").tokens_as_ids);
}

TEST_F(RequestTest, ChatMessagesTemplateLogprobsAndLengths) {
  const ParsedRequest p = parse(R"({"messages": [{"role": "user", "content": "Hello"}], "logprobs": true,
                                    "top_logprobs": 3, "max_completion_tokens": 5, "max_tokens": 9})",
                                Api::Chat);
  EXPECT_TRUE(p.chat);
  EXPECT_EQ(p.request.prompt, [&] {
    std::vector<int64_t> ids;
    for (int32_t id : tok_->encode(data::render_chat({{"user", "Hello"}}, true))) ids.push_back(id);
    return ids;
  }());
  EXPECT_EQ(p.request.options.logprobs, 3);
  EXPECT_EQ(p.request.options.max_tokens, 5);  // max_completion_tokens wins over the older max_tokens
  EXPECT_EQ(p.request.options.stop_ids, (std::vector<int64_t>{tok_->eos_id}));  // the end of turn
  // ignore_eos ignores the end of turn too, as vLLM's does (it is a generation_config eos id).
  EXPECT_TRUE(parse(R"({"messages": [{"role": "user", "content": "Hello"}], "ignore_eos": true})", Api::Chat)
                  .request.options.stop_ids.empty());
  // Chat's default length is the rest of the context.
  const ParsedRequest d =
      parse(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})", Api::Chat);
  EXPECT_EQ(d.request.options.max_tokens, 64 - static_cast<int64_t>(d.request.prompt.size()));
  EXPECT_EQ(d.request.options.logprobs, -1);

  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})", Api::Chat),
            "top_logprobs|400||'top_logprobs' needs 'logprobs': true");
  EXPECT_EQ(refusal(R"({"messages": []})", Api::Chat), "messages|400||'messages' is empty");
  EXPECT_NE(refusal(R"({"messages": [{"role": "wizard", "content": "a"}]})", Api::Chat)
                .find("messages|400||messages[0]: unknown role 'wizard'"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", Api::Chat)
                .find("messages[0].content[0]: the model has no vision tower; it takes no images"),
            std::string::npos);
}

TEST_F(RequestTest, LengthsAreCheckedAgainstTheContext) {
  const json long_prompt = {{"prompt", std::vector<int64_t>(64, 1)}};
  EXPECT_EQ(refusal(long_prompt.dump()),
            "prompt|400|context_length_exceeded|the prompt has 64 tokens; the model's context is 64 tokens, so it "
            "leaves no room for a new token");
  EXPECT_EQ(refusal(R"({"prompt": [1, 2, 3, 4], "max_tokens": 61})"),
            "max_tokens|400|context_length_exceeded|the model's context is 64 tokens; the request asks for 65 (4 in "
            "the prompt, 61 to generate)");
  EXPECT_EQ(parse(R"({"prompt": [1, 2, 3, 4], "max_tokens": 60})").request.options.max_tokens, 60);
}

TEST_F(RequestTest, StreamOptionsAndModel) {
  const ParsedRequest p =
      parse(R"({"prompt": "a", "model": "m", "stream": true, "stream_options": {"include_usage": true}})");
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(refusal(R"({"prompt": "a", "stream_options": {"include_usage": true}})"),
            "stream_options|400||'stream_options' needs 'stream': true");
  EXPECT_EQ(refusal(R"({"prompt": "a", "model": 3})"), "model|400||'model' must be a string, got a number");
}

TEST_F(RequestTest, SeedsAreRandomOnlyWhenNotGiven) {
  const uint64_t a = parse(R"({"prompt": "a"})").request.options.sampling.seed;
  const uint64_t b = parse(R"({"prompt": "a"})").request.options.sampling.seed;
  EXPECT_NE(a, b);
  EXPECT_EQ(parse(R"({"prompt": "a", "seed": -1})").request.options.sampling.seed, ~uint64_t(0));
}

TEST_F(RequestTest, WithoutATokenizerOnlyTokenIdsWork) {
  info_.tokenizer = nullptr;
  EXPECT_EQ(parse(R"({"prompt": [5]})").request.prompt, (std::vector<int64_t>{5}));
  EXPECT_EQ(refusal(R"({"prompt": "text"})"),
            "prompt|400||a text 'prompt' needs a tokenizer; the model has none (send token ids)");
  EXPECT_EQ(refusal(R"({"prompt": [5], "stop": "x"})"),
            "stop|400||'stop' strings need a tokenizer; the model has none");
}

// Inputs fuzz/http_request found (kept in fuzz/corpus/http_request/found_*): each was nlohmann's
// exception or undefined behaviour (signed overflow) instead of a 400 naming the field.
TEST_F(RequestTest, FuzzFindingsAreRequestErrors) {
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "a"}], "response_format": {"type": 5}})", Api::Chat),
            R"(response_format|400||'response_format' other than {"type": "text"} is not supported)");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": [{"type": 5, "text": "a"}]}]})", Api::Chat),
            R"(messages|400||messages[0].content[0] must be {"type": "text", "text": ...}, an image_url, an )"
            "input_audio or a video_url part");
  EXPECT_EQ(refusal(R"({"prompt": [5], "max_tokens": 9223372036854775807})"),
            "max_tokens|400|context_length_exceeded|the model's context is 64 tokens; the request asks for "
            "9223372036854775808 (1 in the prompt, 9223372036854775807 to generate)");
  const std::string chat = R"({"messages": [{"role": "user", "content": "a"}])";
  const uint64_t len = parse(chat + "}", Api::Chat).request.prompt.size();
  EXPECT_EQ(
      refusal(chat + R"(, "max_completion_tokens": 9223372036854775807})", Api::Chat),
      "max_completion_tokens|400|context_length_exceeded|the model's context is 64 tokens; the request asks for " +
          std::to_string(uint64_t(INT64_MAX) + len) + " (" + std::to_string(len) +
          " in the prompt, 9223372036854775807 to generate)");
  // An id past int64 was reported as the negative number it wrapped to.
  EXPECT_EQ(refusal(R"({"prompt": [5, 18446744073709551615]})"),
            "prompt|400||prompt[1] = 18446744073709551615 is outside the vocabulary [0, " +
                std::to_string(tok_->vocab_size()) + ")");
}

TEST_F(RequestTest, PromptsFileLinesAreStrictAndNamedByLine) {
  EXPECT_EQ(refusal(R"({"prompt_ids": [5], "user": "u"})", Api::File).substr(0, 30), "user|400||unknown key 'user' (");
  EXPECT_EQ(refusal(R"({"prompt_ids": [5], "prompt": "a"})", Api::File),
            "prompt|400||a line needs exactly one of 'prompt', 'prompt_ids' or 'messages'");
  EXPECT_EQ(refusal(R"({"prompt": [5]})", Api::File),
            "prompt|400||'prompt' must be a string, got an array (token ids go in 'prompt_ids')");
  EXPECT_EQ(refusal(R"({"prompt_ids": [5], "stream": true})", Api::File).substr(0, 32),
            "stream|400||unknown key 'stream'");
  // A message's keys too (tools/probe_cli.py): "contents" was read as an empty turn. The API keeps
  // vLLM's leniency (a message without content is an empty turn there).
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "contents": "hi"}]})", Api::File),
            "messages|400||messages[0]: unknown key 'contents' (a prompts-file message holds 'role' and 'content')");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user"}]})", Api::File), "messages|400||messages[0]: missing 'content'");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "a"}, {"role": "user"}]})", Api::File),
            "messages|400||messages[1]: missing 'content'");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "hi", "name": "x"}]})", Api::Chat), "accepted");
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user"}]})", Api::Chat), "accepted");

  namespace fs = std::filesystem;
  const fs::path dir = test::scratch_dir("serve_prompts");
  const std::string path = (dir / "in.jsonl").string();
  const auto write = [&](const std::string& text) { std::ofstream(path) << text; };
  Defaults d;
  d.random_seed = false;
  d.options.max_tokens = 4;
  d.options.sampling.seed = 11;
  write("{\"prompt_ids\": [5, 6]}\n\n{\"prompt\": \"a\", \"max_tokens\": 2, \"seed\": 3}\n");
  const auto requests = read_prompts_file(path, false, info_, d);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].line, 1);
  EXPECT_EQ(requests[0].request.options.max_tokens, 4);
  EXPECT_EQ(requests[0].request.options.sampling.seed, 11u);
  EXPECT_EQ(requests[1].line, 3);
  EXPECT_EQ(requests[1].request.options.max_tokens, 2);
  EXPECT_EQ(requests[1].request.options.sampling.seed, 3u);

  write("{\"prompt_ids\": [5]}\n\n{\"prompt_ids\": [5], \"n\": 0}\n");
  EXPECT_EQ(test::error_of([&] { read_prompts_file(path, false, info_, d); }),
            path + ":3: 'n' must be in [1, 128], got 0");
  write("{\"prompt_ids\": [5]}\n{\"prompt_ids\": [5\n");
  EXPECT_EQ(test::error_of([&] { read_prompts_file(path, false, info_, d); }).substr(0, path.size() + 22),
            path + ":2 is not valid JSON (");
  write("{\"prompt_ids\": [5]}\n");
  EXPECT_EQ(test::error_of([&] { read_prompts_file(path, true, info_, d); }),
            path + ":1: --chat expects \"messages\" on every line");
  write("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n");
  EXPECT_EQ(test::error_of([&] { read_prompts_file(path, false, info_, d); }), path + ":1: \"messages\" needs --chat");
  write("\n\n");
  EXPECT_EQ(test::error_of([&] { read_prompts_file(path, false, info_, d); }),
            "prompts file " + path + " holds no request (one JSON object per line)");
  fs::remove_all(dir);
}

TEST(OpenAIShapes, ErrorsCompletionsAndChunks) {
  const json e = error_body(RequestError(400, "temperature", "'temperature' must be a number"));
  EXPECT_EQ(e, json::parse(R"({"error": {"message": "'temperature' must be a number", "type": "invalid_request_error",
                                         "param": "temperature", "code": null}})"));
  EXPECT_EQ(error_body(500, "boom")["error"]["type"], "server_error");
  EXPECT_TRUE(error_body(RequestError(404, "", "x"))["error"]["param"].is_null());

  ResponseHead head = new_head(false, "tiny", 1);
  EXPECT_EQ(head.id.rfind("cmpl-", 0), 0u);
  EXPECT_NE(new_head(false, "tiny", 1).id, head.id);
  gen::Completion a, b;
  a.sample = 0;
  a.text = "ab";
  a.tokens = {{7, -0.5f, {7, 8}, {-0.5f, -1.5f}}, {8, -0.25f, {8}, {-0.25f}}};
  a.finish = gen::FinishReason::kLength;
  a.prompt_tokens = 5;
  b = a;
  b.sample = 1;
  b.tokens.resize(1);
  b.finish = gen::FinishReason::kStop;
  const json body = completion_body(head, {a, b}, nullptr);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["usage"], json::parse(R"({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})"));
  EXPECT_EQ(body["choices"][0]["text"], "ab");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["logprobs"]["tokens"], json::parse(R"(["token_id:7", "token_id:8"])"));
  EXPECT_EQ(body["choices"][0]["logprobs"]["token_logprobs"], json::parse("[-0.5, -0.25]"));
  EXPECT_EQ(body["choices"][0]["logprobs"]["top_logprobs"][0],
            json::parse(R"({"token_id:7": -0.5, "token_id:8": -1.5})"));
  EXPECT_EQ(body["choices"][0]["logprobs"]["text_offset"], json::parse("[0, 10]"));

  ResponseHead chat = new_head(true, "tiny", -1);
  gen::Event ev;
  ev.sample = 1;
  ev.text_delta = "hi";
  const json first = chunk_body(chat, ev, true, nullptr, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": "hi"})"));
  EXPECT_EQ(first["choices"][0]["index"], 1);
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first["usage"].is_null());
  ev.text_delta.clear();
  EXPECT_TRUE(chunk_body(chat, ev, false, nullptr, false).is_null());  // nothing to send
  ev.finish = gen::FinishReason::kStop;
  EXPECT_EQ(chunk_body(chat, ev, false, nullptr, false)["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(usage_chunk(chat, 3, 4)["usage"]["total_tokens"], 7);
  EXPECT_EQ(sse(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  // Bytes that are not UTF-8 (a piece of a character) reach the client as U+FFFD, not an exception.
  EXPECT_EQ(sse(json{{"a", std::string("\xC3")}}), "data: {\"a\":\"\xEF\xBF\xBD\"}\n\n");
}

// Log-prob fields as OpenAI defines them: text_offset counts characters (not UTF-8 bytes), a
// byte-fallback token's "bytes" is its byte (its text alone reads U+FFFD), and vLLM's
// return_tokens_as_token_ids names tokens "token_id:N" while the offsets still count the text.
TEST(OpenAIShapes, LogprobOffsetsBytesAndTokenIds) {
  const auto plain = io::load_tokenizer(test::data_dir() + "/tokenizers/plain.json");
  const int64_t e_acute = *plain->token_to_id("\xC3\xA9"), t = *plain->token_to_id("t");
  gen::Completion c;
  c.text = "\xC3\xA9t\xC3\xA9";
  c.tokens = {{e_acute, -0.5f, {}, {}}, {t, -0.25f, {}, {}}, {e_acute, -0.125f, {}, {}}};
  c.finish = gen::FinishReason::kLength;
  ResponseHead head = new_head(false, "tiny", 0);
  EXPECT_EQ(completion_body(head, {c}, plain.get())["choices"][0]["logprobs"]["text_offset"], json::parse("[0, 1, 2]"));
  // A stream's chunks continue the offsets where the last chunk ended.
  int64_t offset = 0;
  gen::Event ev;
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    ev.tokens = {c.tokens[i]};
    ev.text_delta = plain->decode({static_cast<int32_t>(c.tokens[i].id)});
    EXPECT_EQ(chunk_body(head, ev, i == 0, plain.get(), false, &offset)["choices"][0]["logprobs"]["text_offset"],
              json::array({int64_t(i)}));
  }
  EXPECT_EQ(offset, 3);
  EXPECT_FALSE(chunk_body(head, ev, false, plain.get(), false)["choices"][0]["logprobs"].contains("text_offset"));
  head.tokens_as_ids = true;
  const json ids = completion_body(head, {c}, plain.get())["choices"][0]["logprobs"];
  EXPECT_EQ(ids["tokens"][0], "token_id:" + std::to_string(e_acute));
  EXPECT_EQ(ids["text_offset"], json::parse("[0, 1, 2]"));

  const auto fallback = io::load_tokenizer(test::data_dir() + "/tokenizers/varied.json");
  const int64_t xe2 = *fallback->token_to_id("<0xE2>"), e2 = *fallback->token_to_id("\xC3\xA9");
  gen::Completion b;
  b.tokens = {{xe2, -0.5f, {xe2, e2}, {-0.5f, -0.75f}}};
  const json content = completion_body(new_head(true, "tiny", 2), {b}, fallback.get())["choices"][0]["logprobs"]["content"];
  EXPECT_EQ(content[0]["bytes"], json::parse("[226]"));
  EXPECT_EQ(content[0]["top_logprobs"][0]["bytes"], json::parse("[226]"));
  EXPECT_EQ(content[0]["top_logprobs"][1]["bytes"], json::parse("[195, 169]"));
}

// The command line over a fixture without a tokenizer: token-id prompts, one line per sample,
// errors naming the file and line, and --overwrite.
TEST(GeneratePrompts, WritesOneLinePerSampleInInputOrder) {
  namespace fs = std::filesystem;
  const fs::path dir = test::scratch_dir("serve_generate");
  const std::string model = test::data_dir() + "/hf-gemma4/tiny-moe";
  const std::string in = (dir / "in.jsonl").string(), out = (dir / "out.jsonl").string();
  std::ofstream(in) << "{\"prompt_ids\": [2, 10, 11, 12], \"max_tokens\": 3}\n"
                    << "{\"prompt_ids\": [2, 20], \"n\": 2, \"temperature\": 1.0, \"seed\": 4, \"logprobs\": 1}\n";
  const auto r = test::run_g4("generate " + model + " --prompts " + in + " --out " + out + " --max-new-tokens 5");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream f(out);
  std::vector<json> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["index"], 0);
  EXPECT_FALSE(lines[0].contains("sample"));
  EXPECT_EQ(lines[0]["token_ids"].size(), 3u);
  EXPECT_EQ(lines[0]["finish_reason"], "length");
  EXPECT_EQ(lines[0]["prompt_tokens"], 4);
  EXPECT_TRUE(lines[0]["text"].is_null());
  EXPECT_TRUE(lines[0]["logprobs"].is_null());
  for (int k = 0; k < 2; ++k) {
    const json& l = lines[1 + k];
    EXPECT_EQ(l["index"], 1);
    EXPECT_EQ(l["sample"], k);
    EXPECT_EQ(l["logprobs"].size(), l["token_ids"].size());
    EXPECT_EQ(l["top_logprobs"][0].size(), 1u);
    EXPECT_GE(l["timings"]["total_s"].get<double>(), l["timings"]["first_token_s"].get<double>());
  }
  for (const auto& entry : fs::directory_iterator(fs::path(out).parent_path()))  // no temporary file is left
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();

  const auto again = test::run_g4("generate " + model + " --prompts " + in + " --out " + out);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.output.find("already exists; pass --overwrite"), std::string::npos) << again.output;

  std::ofstream(in, std::ios::app) << "{\"prompt_ids\": [2, 999]}\n";
  const std::string out2 = (dir / "out2.jsonl").string();
  const auto bad = test::run_g4("generate " + model + " --prompts " + in + " --out " + out2);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find(in + ":3: prompt_ids[1] = 999 is outside the vocabulary [0, 256)"), std::string::npos)
      << bad.output;
  EXPECT_FALSE(fs::exists(out2));
  fs::remove_all(dir);
}


// --- Media in chat content: OpenAI's image_url (data URLs only) and input_audio (base64 WAV), and a
// prompts file's image / audio parts with paths, against tiny-mm-e's ids (image 304 between 300 and
// 301, audio 305 between 302 and 303) added to the plain test tokenizer.
std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

std::string base64(const std::string& bytes) {
  const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 2]);
    for (size_t k = 0; k < 4; ++k) out += i + k <= bytes.size() ? a[(v >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

class MediaRequestTest : public RequestTest {
 protected:
  void SetUp() override {
    std::ifstream in(test::data_dir() + "/tokenizers/plain.json");
    json t = json::parse(in);
    for (const auto& [id, content] : std::vector<std::pair<int, std::string>>{
             {300, "<|image>"}, {301, "<image|>"}, {302, "<|audio>"}, {303, "<audio|>"}, {304, "<|image|>"},
             {305, "<|audio|>"}, {306, "<|video|>"}})
      t["added_tokens"].push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                                   {"rstrip", false}, {"normalized", false}, {"special", true}});
    dir_ = test::scratch_dir("serve_media_request");
    std::ofstream(dir_ / "tokenizer.json") << t.dump();
    tok_ = io::load_tokenizer((dir_ / "tokenizer.json").string());
    info_.tokenizer = tok_.get();
    info_.vocab_size = 320;
    info_.context_len = 4096;
    info_.image_processor = io::ImageProcessorOptions{70, 6, 3};
    info_.audio = true;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static std::string png() { return test::data_dir() + "/hf-gemma4-mm/processor/rgba_97x150.png"; }
  static std::string wav() { return test::data_dir() + "/hf-gemma4-mm/processor/speech_16k.wav"; }
  std::string chat(const std::string& parts) {
    return R"({"messages": [{"role": "user", "content": [)" + parts + "]}]}";
  }
  std::filesystem::path dir_;
};

int64_t count(const std::vector<int64_t>& ids, int64_t id) { return std::count(ids.begin(), ids.end(), id); }

// input_audio at 48 kHz is resampled to 16 kHz as transformers' load_audio does: the features and
// soft tokens are those of the resampled clip (io::resample; tests/io/resample_test.cpp).
TEST_F(MediaRequestTest, Base64AudioAtAnotherRateIsResampled) {
  const std::string path = (dir_ / "48k.wav").string();
  test::write_random_wav(path, 48000, 9, 48000);
  const std::string audio =
      R"({"type": "input_audio", "input_audio": {"format": "wav", "data": ")" + base64(file_bytes(path)) + R"("}})";
  const ParsedRequest p = parse(chat(audio), Api::Chat);
  const io::Waveform w = io::read_wav(path);
  ASSERT_EQ(w.sample_rate, 48000);
  const std::vector<float> clip = io::resample(w.samples, 48000, 16000);
  ASSERT_EQ(clip.size(), 16000u);
  const io::AudioFeatures want = io::extract_audio_features({clip});
  const gen::RequestMedia& m = p.request.media;
  ASSERT_TRUE(m.input_features.defined());
  ASSERT_EQ(m.input_features.shape(), want.input_features.shape());
  EXPECT_TRUE(std::equal(m.input_features.data<float>(), m.input_features.data<float>() + m.input_features.numel(),
                         want.input_features.data<float>()));
  EXPECT_EQ(count(p.request.prompt, 305), want.num_soft_tokens[0]);
  EXPECT_EQ(want.num_soft_tokens[0], 25);  // one second at 16 kHz, not three
}

TEST_F(MediaRequestTest, ImageDataUrlsAndBase64AudioBecomeProcessedMedia) {
  const std::string image = R"({"type": "image_url", "image_url": {"url": "data:image/png;base64,)" +
                            base64(file_bytes(png())) + R"("}})";
  const std::string audio =
      R"({"type": "input_audio", "input_audio": {"format": "wav", "data": ")" + base64(file_bytes(wav())) + R"("}})";
  const ParsedRequest p = parse(chat(image + ", " + audio + R"(, {"type": "text", "text": "What is this?"})"), Api::Chat);
  // The processors' outputs for the same files.
  const data::PromptMedia want = data::process_prompt_media({io::read_image(png())}, {}, {io::read_wav_16k(wav())},
                                                            *info_.image_processor);
  const gen::RequestMedia& m = p.request.media;
  ASSERT_TRUE(m.pixel_values.defined() && m.input_features.defined());
  ASSERT_EQ(m.pixel_values.shape(), want.pixel_values.shape());
  EXPECT_TRUE(std::equal(m.pixel_values.data<float>(), m.pixel_values.data<float>() + m.pixel_values.numel(),
                         want.pixel_values.data<float>()));
  ASSERT_EQ(m.input_features.shape(), want.input_features.shape());
  EXPECT_EQ(count(p.request.prompt, 304), want.image_soft_tokens[0]);
  EXPECT_EQ(want.image_soft_tokens[0], 60);
  EXPECT_EQ(count(p.request.prompt, 305), want.audio_soft_tokens[0]);
  EXPECT_EQ(count(p.request.prompt, 300), 1);
  EXPECT_EQ(count(p.request.prompt, 303), 1);
  // The rendered template with the parts, expanded: the same ids.
  data::ChatMessage user{"user", "", {{data::ChatPart::Kind::Image, ""}, {data::ChatPart::Kind::Audio, ""},
                                      {data::ChatPart::Kind::Text, "What is this?"}}};
  const data::MultimodalIds ids = data::tokenize_multimodal(
      data::render_chat({user}, true), data::MediaSoftTokens{want.image_soft_tokens, want.audio_soft_tokens}, *tok_);
  EXPECT_EQ(p.request.prompt, std::vector<int64_t>(ids.input_ids.begin(), ids.input_ids.end()));
  // A JPEG data URL too; text-only content is unchanged (no media).
  const std::string jpeg = file_bytes(test::data_dir() + "/hf-gemma4-mm/processor/scene_1200x280.jpg");
  EXPECT_EQ(count(parse(chat(R"({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,)" +
                             base64(jpeg) + R"("}})"),
                        Api::Chat)
                      .request.prompt,
                  304),
            68);
  EXPECT_FALSE(parse(chat(R"({"type": "text", "text": "hi"})"), Api::Chat).request.media.pixel_values.defined());
}

TEST_F(MediaRequestTest, BadMediaAreRefusedNamingThePart) {
  const auto image_url = [&](const std::string& url) {
    return refusal(chat(R"({"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": ")" + url +
                        R"("}})"),
                   Api::Chat);
  };
  const auto has = [](const std::string& got, const std::string& want) {
    EXPECT_NE(got.find(want), std::string::npos) << got;
  };
  has(image_url("https://example.com/cat.png"),
      "messages|400||messages[0].content[1].image_url.url: only data URLs (data:image/png;base64,... or "
      "data:image/jpeg;base64,...) are accepted; the server fetches no http(s) URL");
  has(image_url("data:image/png;base64,iVBO*w0K"), "messages[0].content[1].image_url.url: invalid base64 (character 4");
  has(image_url("data:image/png;base64,iVBORw0KG"), "invalid base64 (its length or '=' padding is wrong)");
  has(image_url("data:image/gif;base64,R0lGODlh"), "the image must be PNG or JPEG");
  has(image_url("data:image/png,abc"), "must be a base64 data URL");
  has(image_url("data:image/png;base64," + base64("\x89PNG\r\n\x1a\n but not really")), "messages[0].content[1].image_url.url");
  has(refusal(chat(R"({"type": "input_audio", "input_audio": {"format": "mp3", "data": "AAAA"}})"), Api::Chat),
      "messages[0].content[0].input_audio.format must be \"wav\"");
  has(refusal(chat(R"({"type": "input_audio", "input_audio": {"format": "wav", "data": "AAAA"}})"), Api::Chat),
      "messages[0].content[0].input_audio.data");
  has(refusal(chat(R"({"type": "image", "path": "/etc/passwd"})"), Api::Chat),
      "messages[0].content[0]: part type 'image' is not supported");
  // Videos with frame files come in prompts files only (the API takes video_url data URLs).
  has(refusal(chat(R"({"type": "video", "frames": ["/etc/passwd"]})"), Api::Chat),
      "messages|400||messages[0].content[0]: part type 'video' is not supported");
  info_.audio = false;
  has(refusal(chat(R"({"type": "input_audio", "input_audio": {"format": "wav", "data": "AAAA"}})"), Api::Chat),
      "messages[0].content[0]: the model has no audio tower");
  info_.image_processor.reset();
  has(image_url("data:image/png;base64,AAAA"), "messages[0].content[1]: the model has no vision tower");
}

TEST_F(MediaRequestTest, PromptsFileMediaPathsAreRelativeToTheFile) {
  std::filesystem::copy_file(png(), dir_ / "cat.png");
  const std::string in = (dir_ / "in.jsonl").string();
  std::ofstream(in) << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "cat.png"}, )"
                    << R"({"type": "audio", "path": ")" << wav() << R"("}, {"type": "text", "text": "Hi"}]}]})" << "\n"
                    << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "missing.png"}]}]})"
                    << "\n";
  EXPECT_NE(test::error_of([&] { read_prompts_file(in, true, info_, {}); }).find(in + ":2: "), std::string::npos);
  EXPECT_NE(test::error_of([&] { read_prompts_file(in, true, info_, {}); }).find("missing.png"), std::string::npos);
  std::ofstream(in) << R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "cat.png"}, )"
                    << R"({"type": "audio", "path": ")" << wav() << R"("}, {"type": "text", "text": "Hi"}]}]})" << "\n";
  const std::vector<FileRequest> r = read_prompts_file(in, true, info_, {});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(count(r[0].request.prompt, 304), 60);
  EXPECT_TRUE(r[0].request.media.input_features.defined());
}

// --- Videos in chat requests: vLLM's video_url with the frames in a data URL
// (data:video/jpeg;base64,F0,F1,...), against the same frames given as files in a prompts file.
class VideoRequestTest : public MediaRequestTest {
 protected:
  void SetUp() override {
    MediaRequestTest::SetUp();
    io::VideoProcessorOptions v;
    v.frame = *info_.image_processor;
    v.num_frames = 2;  // two of the three frames sampled: 0 and 1
    info_.video_processor = v;
    for (int i = 0; i < 3; ++i) {
      frames_.push_back((dir_ / ("f" + std::to_string(i) + ".png")).string());
      test::write_random_png(frames_.back(), 40, 30, 70 + static_cast<uint32_t>(i));
    }
  }
  // A video_url part of `files`' bytes under media type `type`, with `extra` members in video_url.
  static std::string video_url(const std::vector<std::string>& files, const std::string& type = "video/png",
                               const std::string& extra = "") {
    std::string url = "data:" + type + ";base64,";
    for (size_t k = 0; k < files.size(); ++k) url += (k ? "," : "") + base64(file_bytes(files[k]));
    return R"({"type": "video_url", "video_url": {"url": ")" + url + "\"" + extra + "}}";
  }
  // The request a prompts file line gives for the same frames as files.
  gen::Request from_file(const std::vector<std::string>& files, const std::string& fps) {
    json frames = json::array();
    for (const std::string& f : files) frames.push_back(std::filesystem::path(f).filename().string());
    const std::string in = (dir_ / "video.jsonl").string();
    std::ofstream(in) << R"({"messages": [{"role": "user", "content": [{"type": "video", "frames": )" << frames.dump()
                      << (fps.empty() ? "" : ", \"fps\": " + fps)
                      << R"(}, {"type": "text", "text": "What happens?"}]}]})"
                      << "\n";
    const std::vector<FileRequest> r = read_prompts_file(in, true, info_, {});
    EXPECT_EQ(r.size(), 1u);
    return r.at(0).request;
  }
  static void expect_same(const gen::Request& got, const gen::Request& want) {
    EXPECT_EQ(got.prompt, want.prompt);
    const gen::RequestMedia &g = got.media, &w = want.media;
    ASSERT_TRUE(g.pixel_values_videos.defined() && w.pixel_values_videos.defined());
    ASSERT_EQ(g.pixel_values_videos.shape(), w.pixel_values_videos.shape());
    EXPECT_TRUE(std::equal(g.pixel_values_videos.data<float>(),
                           g.pixel_values_videos.data<float>() + g.pixel_values_videos.numel(),
                           w.pixel_values_videos.data<float>()));
    ASSERT_EQ(g.video_position_ids.shape(), w.video_position_ids.shape());
    EXPECT_TRUE(std::equal(g.video_position_ids.data<int64_t>(),
                           g.video_position_ids.data<int64_t>() + g.video_position_ids.numel(),
                           w.video_position_ids.data<int64_t>()));
    EXPECT_FALSE(g.pixel_values.defined());
  }
  // The ids of the chat [video, "What happens?"] with the video's frames at `timestamps`, each of
  // `per_frame` soft tokens, made by the template and the placeholder expansion directly.
  std::vector<int64_t> want_ids(const std::vector<std::string>& timestamps, int64_t per_frame) const {
    const data::ChatMessage user{
        "user", "", {{data::ChatPart::Kind::Video, ""}, {data::ChatPart::Kind::Text, "What happens?"}}};
    data::MediaSoftTokens soft;
    soft.videos.push_back({per_frame, timestamps});
    const data::MultimodalIds ids = data::tokenize_multimodal(data::render_chat({user}, true), soft, *tok_);
    return {ids.input_ids.begin(), ids.input_ids.end()};
  }
  std::vector<std::string> frames_;
};


TEST_F(VideoRequestTest, VideoUrlGivesThePromptFileVideosIdsAndMedia) {
  const std::string text = R"(, {"type": "text", "text": "What happens?"})";
  const ParsedRequest p = parse(chat(video_url(frames_, "video/png", R"(, "fps": 1)") + text), Api::Chat);
  const gen::Request want = from_file(frames_, "1");
  expect_same(p.request, want);
  // Two sampled frames of 63 soft tokens (30x40 at patch 6), at 00:00 and 00:01 (1 fps).
  ASSERT_EQ(p.request.media.pixel_values_videos.size(0), 1);
  EXPECT_EQ(p.request.media.pixel_values_videos.size(1), 2);
  EXPECT_EQ(count(p.request.prompt, 306), 2 * 63);
  EXPECT_EQ(p.request.prompt, want_ids({"00:00", "00:01"}, 63));
  // The frames' pixels are the video processor's for the files.
  const io::ProcessedVideo v = io::process_video({frames_, 1.0}, *info_.video_processor);
  EXPECT_TRUE(std::equal(v.pixel_values.data<float>(), v.pixel_values.data<float>() + v.pixel_values.numel(),
                         p.request.media.pixel_values_videos.data<float>()));

  // Without fps the frames' rate is 24, as for files (frame 1 is then at 00:00 too); another rate
  // gives other timestamps, so the fps reaches the prompt.
  const ParsedRequest no_fps = parse(chat(video_url(frames_) + text), Api::Chat);
  expect_same(no_fps.request, from_file(frames_, ""));
  EXPECT_EQ(no_fps.request.prompt, want_ids({"00:00", "00:00"}, 63));
  const ParsedRequest half =
      parse(chat(video_url(frames_, "video/png", R"(, "fps": 0.5, "ignored": 1)") + text), Api::Chat);
  expect_same(half.request, from_file(frames_, "0.5"));
  EXPECT_EQ(half.request.prompt, want_ids({"00:00", "00:02"}, 63));

  // vLLM's media type video/jpeg with JPEG frames (the fixture JPEG three times: 68 soft tokens),
  // media types compared without case; a video beside an image.
  const std::string jpeg = test::data_dir() + "/hf-gemma4-mm/processor/scene_1200x280.jpg";
  for (int i = 0; i < 3; ++i) std::filesystem::copy_file(jpeg, dir_ / ("j" + std::to_string(i) + ".jpg"));
  const std::vector<std::string> jpegs = {dir_ / "j0.jpg", dir_ / "j1.jpg", dir_ / "j2.jpg"};
  const ParsedRequest j = parse(chat(video_url(jpegs, "Video/JPEG", R"(, "fps": 2)") + text), Api::Chat);
  expect_same(j.request, from_file(jpegs, "2"));
  EXPECT_EQ(j.request.prompt, want_ids({"00:00", "00:00"}, 68));  // frames 0 and 1 at 2 fps
  const std::string image =
      R"({"type": "image_url", "image_url": {"url": "data:image/png;base64,)" + base64(file_bytes(png())) + R"("}}, )";
  const ParsedRequest both = parse(chat(image + video_url(frames_, "video/jpeg") + text), Api::Chat);
  EXPECT_EQ(count(both.request.prompt, 304), 60);
  EXPECT_EQ(count(both.request.prompt, 306), 2 * 63);
  EXPECT_TRUE(both.request.media.pixel_values.defined() && both.request.media.pixel_values_videos.defined());
}

TEST_F(VideoRequestTest, BadVideoUrlsAreRefusedNamingThePartAndFrame) {
  const auto video = [&](const std::string& url, const std::string& extra = "") {
    return refusal(chat(R"({"type": "text", "text": "a"}, {"type": "video_url", "video_url": {"url": ")" + url + "\"" +
                        extra + "}}"),
                   Api::Chat);
  };
  const auto has = [](const std::string& got, const std::string& want) {
    EXPECT_NE(got.find(want), std::string::npos) << got;
  };
  const std::string f0 = base64(file_bytes(frames_[0])), f1 = base64(file_bytes(frames_[1]));
  const std::string part = "messages|400||messages[0].content[1].video_url.url: ";
  has(video("https://example.com/clip.mp4"),
      part +
          "only data URLs (data:video/jpeg;base64,FRAME0,FRAME1,...) are accepted; the server fetches no http(s) URL");
  has(video("data:video/jpeg," + f0), part + "must be a base64 data URL");
  has(video("data:video/mp4;base64,AAAAIGZ0eXBpc29t"), part +
                                                           "encoded video ('video/mp4') is not decoded; send the "
                                                           "video as its frames");
  has(video("data:image/png;base64," + f0), part + "a video must be its frames as data:video/jpeg;base64,");
  has(video("data:video/jpeg;base64,"), part + "the data URL holds no frames");
  has(video("data:video/jpeg;base64," + f0 + "," + f1 + ","), "messages[0].content[1].video_url.url frame 2 is empty");
  has(video("data:video/jpeg;base64," + f0 + ",," + f1), "messages[0].content[1].video_url.url frame 1 is empty");
  has(video("data:video/jpeg;base64," + f0 + "," + base64("not an image") + "," + f1),
      "messages|400||image messages[0].content[1].video_url.url frame 1 is neither a JPEG nor a PNG file");
  has(video("data:video/jpeg;base64," + f0 + "," + f1 + ",iVBO*w0K"),
      "messages[0].content[1].video_url.url frame 2: invalid base64 (character 4");
  // A frame whose header is sound but whose pixels are cut short: refused when it is decoded.
  const std::string whole = file_bytes(frames_[1]);
  has(video("data:video/jpeg;base64," + f0 + "," + base64(whole.substr(0, whole.size() - 40)) + "," + f0),
      "PNG image messages[0].content[1].video_url.url frame 1 cannot be decoded");
  // The frames' rate: a positive number (null is "not given").
  for (const std::string fps : {"0", "-1", "\"2\"", "true"})
    has(video("data:video/png;base64," + f0 + "," + f1 + "," + f0, ", \"fps\": " + fps),
        "messages|400||messages[0].content[1].video_url: 'fps' (the frames' rate) must be a positive number, got " +
            fps);
  EXPECT_EQ(video("data:video/png;base64," + f0 + "," + f1 + "," + f0, ", \"fps\": null"), "accepted");
  has(refusal(chat(R"({"type": "video_url", "video_url": "data:video/png;base64,AAAA"})"), Api::Chat),
      "messages[0].content[0].video_url must be {\"url\": \"data:video/jpeg;base64,FRAME0,FRAME1,...\"}");
  // Fewer frames than the processor samples, and frames of two sizes, as the processor refuses them.
  has(video("data:video/png;base64," + f0), "can't be sampled: num_frames = 2 exceeds its 1 frames");
  test::write_random_png((dir_ / "big.png").string(), 40, 36, 9);
  has(video("data:video/png;base64," + f0 + "," + base64(file_bytes((dir_ / "big.png").string()))),
      "messages[0].content[1].video_url.url: frame 1 is 36x40, but the first sampled frame is 30x40");
  // More soft tokens than the context holds: the context error images get.
  info_.context_len = 100;
  has(video("data:video/png;base64," + f0 + "," + f1), "messages|400|context_length_exceeded|the prompt has ");
  // A model without a vision tower.
  info_.video_processor.reset();
  info_.image_processor.reset();
  has(video("data:video/png;base64," + f0 + "," + f1), "messages[0].content[1]: the model has no vision tower");
}

}  // namespace
}  // namespace g4::serve

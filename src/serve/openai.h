// The OpenAI API's response shapes, built from what the engine reports: whole completions,
// streamed chunks (server-sent events), usage counts and errors.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "generate/engine.h"
#include "io/tokenizer.h"
#include "serve/request.h"

namespace g4::serve {

// {"error": {"message", "type", "param", "code"}} as OpenAI answers a bad request.
nlohmann::json error_body(const RequestError& e);
nlohmann::json error_body(int status, const std::string& message);

// One response (or one stream): its id, creation time and what it answers.
struct ResponseHead {
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
  bool chat = false;
  int64_t logprobs = -1;  // as in RequestOptions: -1 none, else the number of alternatives
  // vLLM's return_tokens_as_token_ids: log-prob tokens read "token_id:N" (exact ids for clients
  // that train on them; a token's text alone may not name it).
  bool tokens_as_ids = false;
};

ResponseHead new_head(bool chat, const std::string& model, int64_t logprobs);

nlohmann::json usage(int64_t prompt_tokens, int64_t completion_tokens);

// A whole completion (stream false): one choice per sample, in sample order.
nlohmann::json completion_body(const ResponseHead& head, const std::vector<gen::Completion>& samples,
                               const io::Tokenizer* tok);

// One streamed chunk for one engine event; `first` marks the sample's first chunk (chat sends the
// assistant role there). Returns null when the event carries nothing to send. `text_offset`: the
// sample's characters so far, for completions' log-probs (advanced past this chunk's tokens; null:
// no text_offset).
nlohmann::json chunk_body(const ResponseHead& head, const gen::Event& event, bool first, const io::Tokenizer* tok,
                          bool include_usage, int64_t* text_offset = nullptr);
// The closing chunk of a stream with include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseHead& head, int64_t prompt_tokens, int64_t completion_tokens);

// The OpenAI name of a finish reason ("stop", "length"; a cancelled sample reads "abort").
std::string finish_name(gen::FinishReason r);

// "data: <json>\n\n"
std::string sse(const nlohmann::json& j);

}  // namespace g4::serve

#include "serve/openai.h"

#include <atomic>
#include <chrono>
#include <random>
#include <sstream>

namespace g4::serve {

using nlohmann::json;

namespace {

json or_null(const std::string& s) {
  return s.empty() ? json(nullptr) : json(s);
}

std::string error_type(int status) {
  if (status == 404) return "invalid_request_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

// A token as text: its decoding alone (a piece of a UTF-8 character reads as U+FFFD once dumped).
std::string token_text(int64_t id, const io::Tokenizer* tok) {
  if (!tok) return "token_id:" + std::to_string(id);
  return tok->decode({static_cast<int32_t>(id)});
}

json token_bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

// Chat's form: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
json chat_logprobs(const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok) {
  json content = json::array();
  for (const gen::GeneratedToken& t : tokens) {
    const std::string text = token_text(t.id, tok);
    json top = json::array();
    for (size_t i = 0; i < t.top_ids.size(); ++i) {
      const std::string alt = token_text(t.top_ids[i], tok);
      top.push_back({{"token", alt}, {"logprob", t.top_logprobs[i]}, {"bytes", token_bytes(alt)}});
    }
    content.push_back({{"token", text}, {"logprob", t.logprob}, {"bytes", token_bytes(text)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

// Completions' (legacy) form: parallel lists, the alternatives as {token: logprob} maps.
json completion_logprobs(const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok, bool offsets) {
  json texts = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t offset = 0;
  for (const gen::GeneratedToken& t : tokens) {
    const std::string text = token_text(t.id, tok);
    texts.push_back(text);
    lps.push_back(t.logprob);
    json top = json::object();
    for (size_t i = 0; i < t.top_ids.size(); ++i) top[token_text(t.top_ids[i], tok)] = t.top_logprobs[i];
    tops.push_back(top);
    offs.push_back(offset);
    offset += text.size();
  }
  json out = {{"tokens", texts}, {"token_logprobs", lps}, {"top_logprobs", tops}};
  if (offsets) out["text_offset"] = offs;
  return out;
}

json logprobs_of(const ResponseHead& head, const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok,
                 bool offsets) {
  if (head.logprobs < 0) return nullptr;
  return head.chat ? chat_logprobs(tokens, tok) : completion_logprobs(tokens, tok, offsets);
}

json envelope(const ResponseHead& head, const char* object) {
  return {{"id", head.id}, {"object", object}, {"created", head.created}, {"model", head.model}};
}

}  // namespace

json error_body(const RequestError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", error_type(e.status())},
            {"param", or_null(e.param())},
            {"code", or_null(e.code())}}}};
}

json error_body(int status, const std::string& message) {
  return {{"error", {{"message", message}, {"type", error_type(status)}, {"param", nullptr}, {"code", nullptr}}}};
}

ResponseHead new_head(bool chat, const std::string& model, int64_t logprobs) {
  // Unique within the process and unlikely to repeat across restarts.
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  ResponseHead h;
  std::ostringstream id;
  id << (chat ? "chatcmpl-" : "cmpl-") << std::hex << salt << "-" << std::dec << counter++;
  h.id = id.str();
  h.created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  h.model = model;
  h.chat = chat;
  h.logprobs = logprobs;
  return h;
}

std::string finish_name(gen::FinishReason r) {
  return r == gen::FinishReason::kCancelled ? "abort" : gen::finish_reason_name(r);
}

json usage(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_body(const ResponseHead& head, const std::vector<gen::Completion>& samples, const io::Tokenizer* tok) {
  json out = envelope(head, head.chat ? "chat.completion" : "text_completion");
  json choices = json::array();
  int64_t generated = 0;
  for (const gen::Completion& c : samples) {
    json choice = {{"index", c.sample},
                   {"logprobs", logprobs_of(head, c.tokens, tok, true)},
                   {"finish_reason", finish_name(c.finish)}};
    if (head.chat)
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else
      choice["text"] = c.text;
    choices.push_back(choice);
    generated += static_cast<int64_t>(c.tokens.size());
  }
  out["choices"] = choices;
  out["usage"] = usage(samples.empty() ? 0 : samples.front().prompt_tokens, generated);
  return out;
}

json chunk_body(const ResponseHead& head, const gen::Event& event, bool first, const io::Tokenizer* tok,
                bool include_usage) {
  const bool finished = event.finish != gen::FinishReason::kNone;
  if (!first && !finished && event.text_delta.empty() && (head.logprobs < 0 || event.tokens.empty())) return nullptr;
  json out = envelope(head, head.chat ? "chat.completion.chunk" : "text_completion");
  json choice = {{"index", event.sample},
                 {"logprobs", logprobs_of(head, event.tokens, tok, false)},
                 {"finish_reason", finished ? json(finish_name(event.finish)) : json(nullptr)}};
  if (head.chat) {
    json delta = {{"content", event.text_delta}};
    if (first) delta["role"] = "assistant";
    choice["delta"] = delta;
  } else {
    choice["text"] = event.text_delta;
  }
  out["choices"] = json::array({choice});
  if (include_usage) out["usage"] = nullptr;
  return out;
}

json usage_chunk(const ResponseHead& head, int64_t prompt_tokens, int64_t completion_tokens) {
  json out = envelope(head, head.chat ? "chat.completion.chunk" : "text_completion");
  out["choices"] = json::array();
  out["usage"] = usage(prompt_tokens, completion_tokens);
  return out;
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace g4::serve

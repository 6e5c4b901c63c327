#include "serve/openai.h"

#include <atomic>
#include <cctype>
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

// A token's bytes (chat's "bytes", which exist so that clients can join the pieces of a character
// split over tokens): a byte-fallback token "<0xE2>" is that one byte, whose decoding alone reads
// U+FFFD; any other token is its text's bytes.
json token_bytes(int64_t id, const std::string& text, const io::Tokenizer* tok) {
  if (tok) {
    const std::string piece = tok->id_to_token(static_cast<int32_t>(id));
    const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && hex(piece[3]) && hex(piece[4]) && piece[5] == '>')
      return json::array({std::stoi(piece.substr(3, 2), nullptr, 16)});
  }
  return token_bytes(text);
}

// Chat's form: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
json chat_logprobs(const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok) {
  json content = json::array();
  for (const gen::GeneratedToken& t : tokens) {
    const std::string text = token_text(t.id, tok);
    json top = json::array();
    for (size_t i = 0; i < t.top_ids.size(); ++i) {
      const std::string alt = token_text(t.top_ids[i], tok);
      top.push_back({{"token", alt}, {"logprob", t.top_logprobs[i]}, {"bytes", token_bytes(t.top_ids[i], alt, tok)}});
    }
    content.push_back(
        {{"token", text}, {"logprob", t.logprob}, {"bytes", token_bytes(t.id, text, tok)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

// Characters of UTF-8 text (its bytes that do not continue a character): OpenAI's and vLLM's
// text_offset count characters, as Python's len() does, not bytes.
size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Completions' (legacy) form: parallel lists, the alternatives as {token: logprob} maps. `names`
// gives the tokens as they are listed (the tokenizer, or null for "token_id:N"); text_offset counts
// the characters of the text before each token (`tok`'s decoding), from *offset, which it advances
// (a stream's chunks continue where the last one ended); null leaves text_offset out.
json completion_logprobs(const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok,
                         const io::Tokenizer* names, int64_t* offset) {
  json texts = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const gen::GeneratedToken& t : tokens) {
    texts.push_back(token_text(t.id, names));
    lps.push_back(t.logprob);
    json top = json::object();
    for (size_t i = 0; i < t.top_ids.size(); ++i) top[token_text(t.top_ids[i], names)] = t.top_logprobs[i];
    tops.push_back(top);
    if (offset) {
      offs.push_back(*offset);
      *offset += static_cast<int64_t>(utf8_chars(token_text(t.id, tok)));
    }
  }
  json out = {{"tokens", texts}, {"token_logprobs", lps}, {"top_logprobs", tops}};
  if (offset) out["text_offset"] = offs;
  return out;
}

json logprobs_of(const ResponseHead& head, const std::vector<gen::GeneratedToken>& tokens, const io::Tokenizer* tok,
                 int64_t* offset) {
  if (head.logprobs < 0) return nullptr;
  const io::Tokenizer* names = head.tokens_as_ids ? nullptr : tok;  // null: token_text names the id
  return head.chat ? chat_logprobs(tokens, names) : completion_logprobs(tokens, tok, names, offset);
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
    int64_t offset = 0;
    json choice = {{"index", c.sample},
                   {"logprobs", logprobs_of(head, c.tokens, tok, &offset)},
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
                bool include_usage, int64_t* text_offset) {
  const bool finished = event.finish != gen::FinishReason::kNone;
  if (!first && !finished && event.text_delta.empty() && (head.logprobs < 0 || event.tokens.empty())) return nullptr;
  json out = envelope(head, head.chat ? "chat.completion.chunk" : "text_completion");
  json choice = {{"index", event.sample},
                 {"logprobs", logprobs_of(head, event.tokens, tok, text_offset)},
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

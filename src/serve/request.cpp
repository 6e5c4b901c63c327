#include "serve/request.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <set>

namespace g4::serve {

using nlohmann::json;

namespace {

// Bounds the work one request may ask for; OpenAI's own limits are lower still (n <= 128,
// logprobs <= 5 for completions, top_logprobs <= 20, 4 stop strings).
constexpr int64_t kMaxN = 128;
constexpr int64_t kMaxLogprobs = 20;
constexpr size_t kMaxStops = 16;
constexpr int64_t kMaxStopIds = 64;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw RequestError(400, param, message);
}

std::string type_of(const json& v) {
  if (v.is_number_float()) return "a float";
  const std::string name = v.type_name();
  return (name == "array" || name == "object" ? "an " : "a ") + name;
}

// A field that is absent or null reads as "not given", as in the OpenAI API.
const json* field(const json& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

// obj[key] when it is a string, else "" (nlohmann's value() throws its own exception when the
// key holds another type).
std::string string_member(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : "";
}

std::optional<int64_t> int_field(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  // 3.0 is accepted as 3 (JavaScript clients have no integers); 3.5 is not.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9e15) return static_cast<int64_t>(d);
  }
  if (!v->is_number_integer()) bad(key, std::string("'") + key + "' must be an integer, got " + type_of(*v));
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
    bad(key, std::string("'") + key + "' is too large");
  return v->get<int64_t>();
}

std::optional<double> number_field(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(key, std::string("'") + key + "' must be a number, got " + type_of(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d)) bad(key, std::string("'") + key + "' must be finite");
  return d;
}

std::optional<bool> bool_field(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(key, std::string("'") + key + "' must be a boolean, got " + type_of(*v));
  return v->get<bool>();
}

void check_range(const char* key, double v, double lo, double hi, bool lo_open = false) {
  const bool ok = (lo_open ? v > lo : v >= lo) && v <= hi;
  if (!ok) {
    std::ostringstream os;
    os << "'" << key << "' must be in " << (lo_open ? "(" : "[") << lo << ", " << hi << "], got " << v;
    bad(key, os.str());
  }
}

// The keys a line of a prompts file may hold.
const std::set<std::string>& file_keys() {
  static const std::set<std::string> keys = {"prompt", "prompt_ids",     "messages",   "max_tokens", "temperature",
                                             "top_p",  "top_k",          "min_p",      "seed",       "n",
                                             "stop",   "stop_token_ids", "ignore_eos", "logprobs",   "logprobs_mode"};
  return keys;
}

// Parameters of the API that would change the output if honoured: refused rather than ignored.
void refuse_unsupported(const json& body, Api api) {
  for (const char* key : {"presence_penalty", "frequency_penalty", "repetition_penalty"}) {
    if (auto v = number_field(body, key); v && *v != (std::string(key) == "repetition_penalty" ? 1.0 : 0.0))
      bad(key, std::string("'") + key + "' is not supported");
  }
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    bad("logit_bias", "'logit_bias' is not supported");
  if (api == Api::Completions) {
    if (bool_field(body, "echo").value_or(false)) bad("echo", "'echo' is not supported");
    if (const json* v = field(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
      bad("suffix", "'suffix' is not supported");
  }
  if (api == Api::Chat) {
    for (const char* key : {"tools", "functions"})
      if (const json* v = field(body, key); v && !(v->is_array() && v->empty()))
        bad(key, std::string("'") + key + "' (tool calling) is not supported");
    if (const json* v = field(body, "response_format"); v && !(v->is_object() && string_member(*v, "type") == "text"))
      bad("response_format", "'response_format' other than {\"type\": \"text\"} is not supported");
  }
}

std::vector<std::string> read_stop(const json& body, const ModelInfo& model) {
  const json* v = field(body, "stop");
  if (!v) return {};
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const json& s : *v) {
      if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings, got a list holding " + type_of(s));
      stops.push_back(s.get<std::string>());
    }
  } else {
    bad("stop", "'stop' must be a string or a list of strings, got " + type_of(*v));
  }
  if (stops.size() > kMaxStops)
    bad("stop", "'stop' holds " + std::to_string(stops.size()) + " strings; at most " + std::to_string(kMaxStops) +
                    " are allowed");
  for (const std::string& s : stops)
    if (s.empty()) bad("stop", "'stop' strings must not be empty");
  if (!stops.empty() && !model.tokenizer) bad("stop", "'stop' strings need a tokenizer; the model has none");
  return stops;
}

std::vector<int64_t> read_ids(const json& list, const char* param, const std::string& what, const ModelInfo& model) {
  std::vector<int64_t> ids;
  ids.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const json& v = list[i];
    if (!v.is_number_integer())
      bad(param, what + "[" + std::to_string(i) + "] must be an integer token id, got " + type_of(v));
    const int64_t id = v.get<int64_t>();
    if (id < 0 || (model.vocab_size > 0 && id >= model.vocab_size))
      bad(param, what + "[" + std::to_string(i) + "] = " + v.dump() + " is outside the vocabulary [0, " +
                     std::to_string(model.vocab_size) + ")");
    ids.push_back(id);
  }
  return ids;
}

std::vector<int64_t> encode_text(const std::string& text, const ModelInfo& model, const char* param, bool add_bos) {
  if (!model.tokenizer)
    bad(param, std::string("a text '") + param + "' needs a tokenizer; the model has none (send token ids)");
  std::vector<int64_t> ids;
  if (add_bos) ids.push_back(model.tokenizer->bos_id);
  for (int32_t id : model.tokenizer->encode(text)) ids.push_back(id);
  return ids;
}

// "prompt": a string, a list of token ids, or a list of one of those (OpenAI's batch form, which
// is refused for more than one prompt: send one request per prompt).
std::vector<int64_t> read_completion_prompt(const json& body, const ModelInfo& model) {
  const json* v = field(body, "prompt");
  if (!v) bad("prompt", "missing 'prompt'");
  const json* p = v;
  if (v->is_array() && !v->empty() && (v->front().is_string() || v->front().is_array())) {
    if (v->size() > 1)
      bad("prompt", "'prompt' holds " + std::to_string(v->size()) +
                        " prompts; batches of prompts are not supported: send one request per prompt");
    p = &v->front();
  }
  if (p->is_string()) return encode_text(p->get<std::string>(), model, "prompt", true);
  if (!p->is_array()) bad("prompt", "'prompt' must be a string or a list of token ids, got " + type_of(*p));
  if (p->empty()) bad("prompt", "'prompt' is empty");
  return read_ids(*p, "prompt", "prompt", model);
}

// OpenAI content: a string, or a list of parts of which only {"type": "text", "text": ...} is
// supported (joined with newlines).
std::string message_content(const json& m, const std::string& at) {
  const json* c = field(m, "content");
  if (!c) return "";
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad("messages", at + ".content must be a string or a list of text parts, got " + type_of(*c));
  std::string text;
  for (size_t i = 0; i < c->size(); ++i) {
    const json& part = (*c)[i];
    const std::string pat = at + ".content[" + std::to_string(i) + "]";
    if (!part.is_object() || string_member(part, "type") != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad("messages", pat + " must be {\"type\": \"text\", \"text\": ...}; images, audio and files are not supported");
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<int64_t> read_messages(const json& body, const ModelInfo& model, bool add_generation_prompt) {
  const json* v = field(body, "messages");
  if (!v) bad("messages", "missing 'messages'");
  if (!v->is_array()) bad("messages", "'messages' must be a list of {role, content} objects, got " + type_of(*v));
  if (v->empty()) bad("messages", "'messages' is empty");
  std::vector<data::ChatMessage> messages;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad("messages", at + " must be a {role, content} object, got " + type_of(m));
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad("messages", at + ".role must be a string");
    if (field(m, "tool_calls")) bad("messages", at + ": tool calls are not supported");
    messages.push_back({role->get<std::string>(), message_content(m, at)});
  }
  if (!model.tokenizer) bad("messages", "'messages' need a tokenizer; the model has none");
  std::string text;
  try {
    text = data::render_chat(messages, add_generation_prompt, model.chat_variant);
  } catch (const RequestError&) {
    throw;
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  // The template writes "<bos>" itself; encode() maps it to its special id.
  return encode_text(text, model, "messages", false);
}

std::vector<int64_t> read_prompt(const json& body, Api api, const ModelInfo& model) {
  if (api == Api::Completions) return read_completion_prompt(body, model);
  if (api == Api::Chat) return read_messages(body, model, bool_field(body, "add_generation_prompt").value_or(true));
  // A prompts file: exactly one of prompt, prompt_ids, messages.
  const int given = int(field(body, "prompt") != nullptr) + int(field(body, "prompt_ids") != nullptr) +
                    int(field(body, "messages") != nullptr);
  if (given != 1) bad("prompt", "a line needs exactly one of 'prompt', 'prompt_ids' or 'messages'");
  if (field(body, "messages")) return read_messages(body, model, true);
  if (const json* p = field(body, "prompt")) {
    if (!p->is_string())
      bad("prompt", "'prompt' must be a string, got " + type_of(*p) + " (token ids go in 'prompt_ids')");
    return encode_text(p->get<std::string>(), model, "prompt", true);
  }
  const json& ids = *field(body, "prompt_ids");
  if (!ids.is_array()) bad("prompt_ids", "'prompt_ids' must be a list of token ids, got " + type_of(ids));
  if (ids.empty()) bad("prompt_ids", "'prompt_ids' is empty");
  return read_ids(ids, "prompt_ids", "prompt_ids", model);
}

void read_logprobs(const json& body, Api api, gen::RequestOptions& o) {
  if (api == Api::Chat) {
    const bool on = bool_field(body, "logprobs").value_or(false);
    const auto top = int_field(body, "top_logprobs");
    if (top) {
      check_range("top_logprobs", double(*top), 0, kMaxLogprobs);
      if (!on) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    }
    if (on) o.logprobs = top.value_or(0);
    return;
  }
  if (const json* v = field(body, "logprobs"); v && v->is_boolean())
    bad("logprobs",
        "'logprobs' must be an integer (the number of alternatives, 0 for the sampled token only) for "
        "completions; true/false with top_logprobs is the chat form");
  if (const auto n = int_field(body, "logprobs")) {
    check_range("logprobs", double(*n), 0, kMaxLogprobs);
    o.logprobs = *n;
  }
  if (const json* m = field(body, "logprobs_mode")) {
    const std::string mode = m->is_string() ? m->get<std::string>() : "";
    if (mode == "raw")
      o.logprob_mode = gen::LogprobMode::kRaw;
    else if (mode == "processed")
      o.logprob_mode = gen::LogprobMode::kProcessed;
    else
      bad("logprobs_mode", "'logprobs_mode' must be \"raw\" or \"processed\"");
  }
}

gen::RequestOptions read_options(const json& body, Api api, const ModelInfo& model, const Defaults& defaults) {
  gen::RequestOptions o = defaults.options;
  gen::SamplingParams& s = o.sampling;
  if (auto v = number_field(body, "temperature")) {
    check_range("temperature", *v, 0, 100);
    s.temperature = *v;
  }
  if (auto v = number_field(body, "top_p")) {
    check_range("top_p", *v, 0, 1, true);
    s.top_p = *v;
  }
  if (auto v = int_field(body, "top_k")) {
    // vLLM spells "no cut" -1, OpenAI-style clients 0.
    if (*v < -1) bad("top_k", "'top_k' must be >= 0 (or -1 for no cut), got " + std::to_string(*v));
    s.top_k = std::max<int64_t>(*v, 0);
  }
  if (auto v = number_field(body, "min_p")) {
    check_range("min_p", *v, 0, 1);
    s.min_p = *v;
  }
  if (auto v = int_field(body, "seed")) {
    s.seed = static_cast<uint64_t>(*v);
  } else if (defaults.random_seed) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    s.seed = rng();
  }
  if (auto v = int_field(body, "n")) {
    check_range("n", double(*v), 1, kMaxN);
    o.n = *v;
  }
  if (api == Api::Chat) {
    if (auto v = int_field(body, "max_completion_tokens")) {
      if (*v < 1) bad("max_completion_tokens", "'max_completion_tokens' must be >= 1, got " + std::to_string(*v));
      o.max_tokens = *v;
    }
  }
  if (auto v = int_field(body, "max_tokens"); v && !(api == Api::Chat && field(body, "max_completion_tokens"))) {
    if (*v < 1) bad("max_tokens", "'max_tokens' must be >= 1, got " + std::to_string(*v));
    o.max_tokens = *v;
  }
  if (auto best_of = int_field(body, "best_of"); best_of && *best_of != o.n)
    bad("best_of", "'best_of' other than n is not supported");
  o.stop_strings = read_stop(body, model);
  if (const json* v = field(body, "stop_token_ids")) {
    if (!v->is_array() || v->size() > size_t(kMaxStopIds))
      bad("stop_token_ids", "'stop_token_ids' must be a list of at most " + std::to_string(kMaxStopIds) + " token ids");
    const std::vector<int64_t> ids = read_ids(*v, "stop_token_ids", "stop_token_ids", model);
    o.stop_ids.insert(o.stop_ids.end(), ids.begin(), ids.end());
  }
  if (auto v = bool_field(body, "ignore_eos")) o.ignore_eos = *v;
  read_logprobs(body, api, o);
  return o;
}

}  // namespace

Defaults api_defaults(Api api) {
  Defaults d;
  d.options.max_tokens = api == Api::Completions ? 16 : 0;
  return d;
}

ParsedRequest parse_request(const json& body, Api api, const ModelInfo& model, const Defaults& defaults) {
  if (!body.is_object()) bad("", std::string("the request must be a JSON object, got ") + type_of(body));
  if (api == Api::File) {
    for (const auto& [key, value] : body.items())
      if (!file_keys().count(key)) {
        std::string allowed;
        for (const std::string& k : file_keys()) allowed += (allowed.empty() ? "" : ", ") + k;
        bad(key, "unknown key '" + key + "' (allowed: " + allowed + ")");
      }
  } else {
    refuse_unsupported(body, api);
  }
  ParsedRequest out;
  out.chat = api == Api::Chat || field(body, "messages") != nullptr;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) bad("model", "'model' must be a string, got " + type_of(*m));
    out.model = m->get<std::string>();
  }
  if (api != Api::File) {
    out.stream = bool_field(body, "stream").value_or(false);
    if (const json* so = field(body, "stream_options")) {
      if (!so->is_object()) bad("stream_options", "'stream_options' must be an object, got " + type_of(*so));
      if (!out.stream) bad("stream_options", "'stream_options' needs 'stream': true");
      out.include_usage = bool_field(*so, "include_usage").value_or(false);
    }
  }
  gen::RequestOptions options = read_options(body, api, model, defaults);
  std::vector<int64_t> prompt = read_prompt(body, api, model);
  if (out.chat) options.stop_ids.insert(options.stop_ids.end(), model.chat_stop_ids.begin(), model.chat_stop_ids.end());

  const int64_t len = static_cast<int64_t>(prompt.size());
  const char* prompt_param = out.chat ? "messages" : (field(body, "prompt_ids") ? "prompt_ids" : "prompt");
  if (model.context_len > 0) {
    if (len >= model.context_len)
      throw RequestError(400, prompt_param,
                         "the prompt has " + std::to_string(len) + " tokens; the model's context is " +
                             std::to_string(model.context_len) + " tokens, so it leaves no room for a new token",
                         "context_length_exceeded");
    if (options.max_tokens == 0) {
      options.max_tokens = model.context_len - len;
    } else if (options.max_tokens > model.context_len - len) {  // len + max_tokens may overflow
      const char* param =
          api == Api::Chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
      throw RequestError(400, param,
                         "the model's context is " + std::to_string(model.context_len) +
                             " tokens; the request asks for " +
                             std::to_string(uint64_t(len) + uint64_t(options.max_tokens)) + " (" + std::to_string(len) +
                             " in the prompt, " + std::to_string(options.max_tokens) + " to generate)",
                         "context_length_exceeded");
    }
  } else if (options.max_tokens == 0) {
    options.max_tokens = 16;
  }
  out.request.prompt = std::move(prompt);
  out.request.options = std::move(options);
  return out;
}

ModelInfo model_info(const io::ModelConfig& config, const io::Tokenizer* tokenizer) {
  ModelInfo m;
  m.tokenizer = tokenizer;
  m.vocab_size = config.vocab_size;
  m.context_len = config.max_position_embeddings;
  // E2B/E4B (the checkpoints with per-layer inputs) ship the small template; 26B-A4B and 31B the
  // large one, whose generation prompt adds an empty thought channel.
  m.chat_variant = data::chat_variant_for(config.hidden_size_per_layer_input);
  if (tokenizer)
    if (auto id = data::chat_end_of_turn_id(*tokenizer)) m.chat_stop_ids.push_back(*id);
  return m;
}

}  // namespace g4::serve

#include "serve/request.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <string_view>

#include "data/multimodal.h"
#include "io/image.h"
#include "io/wav.h"

namespace g4::serve {

using nlohmann::json;

namespace {

// Bounds the work one request may ask for (kMaxN and kMaxLogprobs: request.h); OpenAI's own limits
// are lower still (logprobs <= 5 for completions, 4 stop strings).
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
    // "none" and "auto" without tools ask for plain text, which is what g4 gives; anything else
    // (required, a named function) would need tool calling.
    for (const char* key : {"tool_choice", "function_call"})
      if (const json* v = field(body, key);
          v && !(v->is_string() && (v->get<std::string>() == "none" || v->get<std::string>() == "auto")))
        bad(key, std::string("'") + key + "' other than \"none\" or \"auto\" (tool calling) is not supported");
    if (const json* v = field(body, "response_format"); v && !(v->is_object() && string_member(*v, "type") == "text"))
      bad("response_format", "'response_format' other than {\"type\": \"text\"} is not supported");
    // vLLM's chat extensions that change the prompt: g4 renders its own Gemma 4 template, with
    // thinking off, every turn closed.
    if (bool_field(body, "continue_final_message").value_or(false))
      bad("continue_final_message", "'continue_final_message' is not supported (the last turn is always closed)");
    if (bool_field(body, "echo").value_or(false)) bad("echo", "'echo' is not supported");
    if (field(body, "chat_template"))
      bad("chat_template", "'chat_template' is not supported: g4 renders the Gemma 4 template itself");
    if (const json* v = field(body, "chat_template_kwargs")) {
      if (!v->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object, got " + type_of(*v));
      for (const auto& [key, value] : v->items())
        if (!(key == "enable_thinking" && value.is_boolean() && !value.get<bool>()) &&
            !(key == "add_generation_prompt" && value.is_boolean() && value.get<bool>()))
          bad("chat_template_kwargs", "'chat_template_kwargs' key '" + key + "' = " + value.dump() +
                                          " is not supported (the template renders with thinking off)");
    }
  }
  // vLLM's sampling extensions that would change the output if honoured (each named with its
  // neutral value, which is accepted).
  if (auto v = int_field(body, "min_tokens"); v && *v != 0) bad("min_tokens", "'min_tokens' is not supported");
  for (const char* key : {"use_beam_search", "include_stop_str_in_output"})
    if (bool_field(body, key).value_or(false)) bad(key, std::string("'") + key + "' is not supported");
  if (auto v = bool_field(body, "skip_special_tokens"); v && *v)
    bad("skip_special_tokens", "'skip_special_tokens': true is not supported (special tokens are kept in the text)");
  for (const char* key : {"prompt_logprobs", "truncate_prompt_tokens", "allowed_token_ids", "guided_json",
                          "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"})
    if (field(body, key)) bad(key, std::string("'") + key + "' is not supported");
  if (const json* v = field(body, "bad_words"); v && !(v->is_array() && v->empty()))
    bad("bad_words", "'bad_words' is not supported");
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

// OpenAI content: a string, or a list of text parts {"type": "text", "text": ...} (joined with
// newlines). Content with media parts is read part by part (read_media_part).
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
      bad("messages",
          pat + " must be {\"type\": \"text\", \"text\": ...}, an image_url, an input_audio or a video_url part");
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

// The images, clips and videos of a request's messages, in the order of their placeholders.
struct MessageMedia {
  std::vector<io::RgbImage> images;
  std::vector<std::string> image_names;  // where each came from, for errors
  std::vector<std::vector<float>> clips;
  std::vector<io::VideoFrames> videos;
  std::vector<std::string> video_names;  // where each came from, for errors
  bool empty() const { return images.empty() && clips.empty() && videos.empty(); }
};

// Standard base64 (RFC 4648 alphabet, '=' padding optional, no whitespace).
std::string decode_base64(std::string_view s, const std::string& where) {
  static const std::array<int8_t, 256> table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  const size_t data = s.find_first_of('=') == std::string_view::npos ? s.size() : s.find_first_of('=');
  if (s.find_first_not_of('=', data) != std::string_view::npos || s.size() - data > 2 || data % 4 == 1 ||
      (data < s.size() && s.size() % 4 != 0))
    bad("messages", where + ": invalid base64 (its length or '=' padding is wrong)");
  std::string out;
  out.reserve(data / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < data; ++i) {
    const int v = table[static_cast<unsigned char>(s[i])];
    if (v < 0) bad("messages", where + ": invalid base64 (character " + std::to_string(i) + " is not in its alphabet)");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// A base64 data URL: its media type, lower-cased as media types compare ("image/png"), and its
// payload, still base64. The server fetches nothing: http(s) URLs are refused. `form` is the URL
// form the part takes, for the errors.
struct DataUrl {
  std::string type;
  std::string_view payload;  // into the URL
};

DataUrl parse_data_url(const std::string& url, const std::string& where, const std::string& form) {
  if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0)
    bad("messages", where + ": only data URLs (" + form + ") are accepted; the server fetches no http(s) URL");
  const size_t comma = url.find(',');
  const std::string header = url.substr(0, comma);
  if (url.rfind("data:", 0) != 0 || comma == std::string::npos || header.size() < 12 ||
      header.compare(header.size() - 7, 7, ";base64") != 0)
    bad("messages", where + ": must be a base64 data URL (" + form + "), got '" + url.substr(0, 40) + "'");
  std::string type = header.substr(5, header.find(';') - 5);
  std::transform(type.begin(), type.end(), type.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return {type, std::string_view(url).substr(comma + 1)};
}

// The bytes of an image data URL (data:image/png;base64,... or image/jpeg).
std::string image_data_url(const std::string& url, const std::string& where) {
  const DataUrl d = parse_data_url(url, where, "data:image/png;base64,... or data:image/jpeg;base64,...");
  if (d.type != "image/png" && d.type != "image/jpeg" && d.type != "image/jpg")
    bad("messages",
        where + ": the image must be PNG or JPEG (data:image/png or data:image/jpeg), got '" + d.type + "'");
  return decode_base64(d.payload, where);
}

// A video data URL in vLLM's form for a video sent as its frames: data:video/jpeg;base64, then each
// frame's file (JPEG, or PNG: frames are told apart by their bytes, as images are) in base64, joined
// by commas; "video/png" is read the same way. The frames are held in memory, named "frame K" (K from
// 0); each one's header is read now, so that a frame that is not an image is refused by its index
// (only the sampled frames are decoded, by the video processor). Encoded video (video/mp4, ...) is not
// decoded: g4 links no video library.
io::VideoFrames video_data_url(const std::string& url, const std::string& where) {
  const DataUrl d = parse_data_url(url, where, "data:video/jpeg;base64,FRAME0,FRAME1,...");
  if (d.type != "video/jpeg" && d.type != "video/png") {
    if (d.type.rfind("video/", 0) == 0)
      bad("messages", where + ": encoded video ('" + d.type + "') is not decoded; send the video as its frames: " +
                          "data:video/jpeg;base64,FRAME0,FRAME1,... with each frame a base64 JPEG or PNG file");
    bad("messages", where +
                        ": a video must be its frames as data:video/jpeg;base64,FRAME0,FRAME1,... (or video/png), " +
                        "got '" + d.type + "'");
  }
  if (d.payload.empty()) bad("messages", where + ": the data URL holds no frames");
  io::VideoFrames video;
  for (size_t begin = 0, k = 0; begin <= d.payload.size(); ++k) {
    const size_t end = std::min(d.payload.find(',', begin), d.payload.size());
    const std::string name = "frame " + std::to_string(k);
    const std::string at = where + " " + name;
    if (end == begin) bad("messages", at + " is empty (two commas in a row, or one at the end)");
    std::string bytes = decode_base64(d.payload.substr(begin, end - begin), at);
    (void)io::image_size(bytes, at);  // throws when it is no JPEG/PNG; read_media_part answers 400
    video.files.push_back(name);
    video.encoded.push_back(std::move(bytes));
    begin = end + 1;
  }
  return video;
}

// One part of a content list with media: text, an image (OpenAI's image_url with a data URL; in a
// prompts file also {"type": "image", "path": FILE}), a WAV clip, resampled to 16 kHz (OpenAI's input_audio;
// in a prompts file also {"type": "audio", "path": FILE}) or a video (vLLM's video_url with its
// frames in a data URL, plus g4's "fps" inside video_url; in a prompts file also a video as the
// training data gives it, data::read_video_part).
data::ChatPart read_media_part(const json& part, const std::string& at, const ModelInfo& model, MessageMedia& media) {
  if (!part.is_object()) bad("messages", at + " must be a {\"type\": ...} object, got " + type_of(part));
  const std::string type = string_member(part, "type");
  const bool files = !model.media_folder.empty();
  const auto path_of = [&] {
    const std::filesystem::path file = string_member(part, "path");
    if (file.empty()) bad("messages", at + ": missing 'path' (a file name)");
    return (file.is_absolute() ? file : std::filesystem::path(model.media_folder) / file).string();
  };
  try {
    if (type == "text") {
      const json* t = field(part, "text");
      if (!t || !t->is_string()) bad("messages", at + ".text must be a string");
      return {data::ChatPart::Kind::Text, t->get<std::string>()};
    }
    if (type == "image_url" || (files && type == "image")) {
      if (!model.image_processor) bad("messages", at + ": the model has no vision tower; it takes no images");
      if (type == "image") {
        media.image_names.push_back(path_of());
        media.images.push_back(io::read_image(media.image_names.back()));
      } else {
        const json* u = field(part, "image_url");
        if (!u || !u->is_object() || !u->contains("url") || !(*u)["url"].is_string())
          bad("messages", at + ".image_url must be {\"url\": \"data:image/...;base64,...\"}");
        media.image_names.push_back(at + ".image_url.url");
        media.images.push_back(io::decode_image(image_data_url((*u)["url"].get<std::string>(), media.image_names.back()),
                                                media.image_names.back()));
      }
      return {data::ChatPart::Kind::Image, ""};
    }
    if (type == "input_audio" || (files && type == "audio")) {
      if (!model.audio) bad("messages", at + ": the model has no audio tower; it takes no audio");
      if (type == "audio") {
        media.clips.push_back(io::read_wav_16k(path_of()));
      } else {
        const json* a = field(part, "input_audio");
        if (!a || !a->is_object() || !a->contains("data") || !(*a)["data"].is_string())
          bad("messages", at + ".input_audio must be {\"data\": BASE64, \"format\": \"wav\"}");
        const std::string where = at + ".input_audio";
        if (string_member(*a, "format") != "wav")
          bad("messages", where + ".format must be \"wav\", got '" + string_member(*a, "format") + "'");
        const std::string bytes = decode_base64((*a)["data"].get<std::string>(), where + ".data");
        media.clips.push_back(io::samples_16k(io::parse_wav(bytes, where + ".data"), where + ".data"));
      }
      return {data::ChatPart::Kind::Audio, ""};
    }
    if (type == "video_url" || (files && type == "video")) {
      if (!model.video_processor) bad("messages", at + ": the model has no vision tower; it takes no videos");
      if (type == "video") {
        media.videos.push_back(data::read_video_part(part, at, model.media_folder));
        media.video_names.push_back(at);
      } else {
        const json* u = field(part, "video_url");
        if (!u || !u->is_object() || !u->contains("url") || !(*u)["url"].is_string())
          bad("messages", at + ".video_url must be {\"url\": \"data:video/jpeg;base64,FRAME0,FRAME1,...\"} " +
                              "(and optionally \"fps\": the frames' rate)");
        const std::string where = at + ".video_url.url";
        io::VideoFrames video = video_data_url((*u)["url"].get<std::string>(), where);
        video.fps = data::read_video_fps(*u, at + ".video_url");
        media.videos.push_back(std::move(video));
        media.video_names.push_back(where);
      }
      return {data::ChatPart::Kind::Video, ""};
    }
  } catch (const RequestError&) {
    throw;
  } catch (const Error& e) {
    bad("messages", e.what());  // an undecodable image or WAV, a missing file
  }
  bad("messages", at + ": part type '" + type + "' is not supported (text, image_url with a data URL, input_audio, " +
                      "video_url with its frames in a data URL" +
                      (files ? ", image and audio with a path, video with frames or a path" : "") + ")");
}

// Whether a content list holds a media part (of a type read_media_part reads or refuses by name).
bool has_media_parts(const json* content) {
  if (!content || !content->is_array()) return false;
  for (const json& part : *content) {
    const std::string type = part.is_object() ? string_member(part, "type") : "";
    if (!type.empty() && type != "text") return true;
  }
  return false;
}

// `file`: a line of a prompts file, g4's own format, read as strictly as g4 train's chat data: a
// message holds "role" and "content" and nothing else, so that a misspelt key ("contents") is an
// error rather than an empty turn. The API stays as lenient as vLLM (clients send name, refusal, ...).
std::vector<int64_t> read_messages(const json& body, const ModelInfo& model, bool add_generation_prompt,
                                   gen::RequestMedia& request_media, bool file = false) {
  const json* v = field(body, "messages");
  if (!v) bad("messages", "missing 'messages'");
  if (!v->is_array()) bad("messages", "'messages' must be a list of {role, content} objects, got " + type_of(*v));
  if (v->empty()) bad("messages", "'messages' is empty");
  std::vector<data::ChatMessage> messages;
  MessageMedia media;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad("messages", at + " must be a {role, content} object, got " + type_of(m));
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad("messages", at + ".role must be a string");
    if (file) {
      for (const auto& [key, value] : m.items())
        if (key != "role" && key != "content")
          bad("messages", at + ": unknown key '" + key + "' (a prompts-file message holds 'role' and 'content')");
      if (!field(m, "content")) bad("messages", at + ": missing 'content'");
    }
    if (field(m, "tool_calls")) bad("messages", at + ": tool calls are not supported");
    const json* content = field(m, "content");
    if (!has_media_parts(content)) {
      messages.push_back({role->get<std::string>(), message_content(m, at)});
      continue;
    }
    data::ChatMessage message{role->get<std::string>(), "", {}};
    for (size_t k = 0; k < content->size(); ++k)
      message.parts.push_back(read_media_part((*content)[k], at + ".content[" + std::to_string(k) + "]", model, media));
    messages.push_back(std::move(message));
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
  if (media.empty()) return encode_text(text, model, "messages", false);
  std::vector<int64_t> ids;
  try {
    data::check_media_tokens(*model.tokenizer, !media.images.empty(), !media.clips.empty(), "the model's tokenizer",
                             !media.videos.empty());
    const data::PromptMedia p = data::process_prompt_media(media.images, media.image_names, media.clips,
                                                           model.image_processor.value_or(io::ImageProcessorOptions{}));
    data::MediaSoftTokens soft{p.image_soft_tokens, p.audio_soft_tokens};
    std::vector<io::ProcessedVideo> videos;
    for (size_t v = 0; v < media.videos.size(); ++v) {
      // Both processors come with a vision tower; the image one has the tower's patch sizes, and a
      // video processor of others would give the tower frames it cannot take.
      const io::ImageProcessorOptions& frame = model.video_processor->frame;
      if (frame.patch_size != model.image_processor->patch_size ||
          frame.pooling_kernel_size != model.image_processor->pooling_kernel_size)
        bad("messages", "the video processor's patch_size " + std::to_string(frame.patch_size) +
                            " and pooling_kernel_size " + std::to_string(frame.pooling_kernel_size) +
                            " differ from the vision tower's (processor_config.json video_processor)");
      videos.push_back(io::process_video(media.videos[v], *model.video_processor, media.video_names[v]));
      soft.videos.push_back({videos.back().soft_tokens_per_frame, videos.back().timestamps});
    }
    const data::MultimodalIds m = data::tokenize_multimodal(text, soft, *model.tokenizer, "messages");
    ids.assign(m.input_ids.begin(), m.input_ids.end());
    request_media = {p.pixel_values, p.image_position_ids, p.input_features, p.input_features_mask, {}, {}};
    if (!videos.empty())
      std::tie(request_media.pixel_values_videos, request_media.video_position_ids) = io::stack_videos(videos);
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  return ids;
}

std::vector<int64_t> read_prompt(const json& body, Api api, const ModelInfo& model, gen::RequestMedia& media) {
  if (api == Api::Completions) return read_completion_prompt(body, model);
  if (api == Api::Chat)
    return read_messages(body, model, bool_field(body, "add_generation_prompt").value_or(true), media);
  // A prompts file: exactly one of prompt, prompt_ids, messages.
  const int given = int(field(body, "prompt") != nullptr) + int(field(body, "prompt_ids") != nullptr) +
                    int(field(body, "messages") != nullptr);
  if (given != 1) bad("prompt", "a line needs exactly one of 'prompt', 'prompt_ids' or 'messages'");
  if (field(body, "messages")) return read_messages(body, model, true, media, /*file=*/true);
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
    out.tokens_as_ids = bool_field(body, "return_tokens_as_token_ids").value_or(false);
  }
  gen::RequestOptions options = read_options(body, api, model, defaults);
  std::vector<int64_t> prompt = read_prompt(body, api, model, out.request.media);
  // The end of turn is one of the checkpoints' generation_config eos ids, which vLLM's ignore_eos
  // ignores too: a benchmark asking for exactly max_tokens gets them in chat as well.
  if (out.chat && !options.ignore_eos)
    options.stop_ids.insert(options.stop_ids.end(), model.chat_stop_ids.begin(), model.chat_stop_ids.end());

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

ModelInfo model_info(const io::ModelConfig& config, const io::Tokenizer* tokenizer, const std::string& model_dir) {
  ModelInfo m;
  m.tokenizer = tokenizer;
  m.vocab_size = config.vocab_size;
  m.context_len = config.max_position_embeddings;
  // E2B/E4B (the checkpoints with per-layer inputs) ship the small template; 26B-A4B and 31B the
  // large one, whose generation prompt adds an empty thought channel.
  m.chat_variant = data::chat_variant_for(config.hidden_size_per_layer_input);
  if (tokenizer)
    if (auto id = data::chat_end_of_turn_id(*tokenizer)) m.chat_stop_ids.push_back(*id);
  if (config.vision) {
    m.image_processor = io::model_image_processor_options(model_dir, *config.vision);
    m.video_processor = io::load_video_processor_options(model_dir);
  }
  m.audio = config.conditional && config.has_audio;
  // A tokenizer with other placeholder ids than the model's would put soft tokens where the model
  // does not look for them.
  const auto same = [&](const char* token, bool present, int64_t model_id) {
    const auto id = tokenizer && present ? tokenizer->token_to_id(token) : std::nullopt;
    G4_CHECK(!id || *id == model_id, "the tokenizer's ", token, " is id ", id ? *id : 0, " but the model's is ", model_id);
  };
  same(data::kImagePlaceholder, m.image_processor.has_value(), config.vision ? config.vision->image_token_id : 0);
  same(data::kAudioPlaceholder, m.audio, config.audio_token_id);
  same(data::kVideoPlaceholder, m.video_processor.has_value(), config.vision ? config.vision->video_token_id : 0);
  return m;
}

}  // namespace g4::serve

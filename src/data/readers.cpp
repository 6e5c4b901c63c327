// Step 1 of the data pipeline: files -> tokenised documents. Every error names the file and the
// line where the offending document starts.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/hash.h"
#include "core/log.h"
#include "data/dataset.h"
#include "data/multimodal.h"
#include "io/image.h"
#include "io/json_input.h"
#include "io/video_processor.h"
#include "io/wav.h"

namespace g4::data {
namespace {

using nlohmann::json;

struct Line {
  std::string text;  // without the line break (and without a '\r' before it)
  int64_t number;    // 1-based
};

std::string read_file(const std::string& path) {
  // No size limit beyond memory: datasets are as large as they are.
  std::string bytes = io::read_regular_file(path, "data file", SIZE_MAX);
  if (bytes.rfind("\xEF\xBB\xBF", 0) == 0) bytes.erase(0, 3);  // a UTF-8 byte order mark is not text
  return bytes;
}

// Lines with "\n" or "\r\n" endings; a final line without a break counts too.
std::vector<Line> split_lines(const std::string& bytes) {
  std::vector<Line> lines;
  size_t pos = 0;
  for (int64_t number = 1; pos < bytes.size(); ++number) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string text = bytes.substr(pos, end - pos);
    if (!text.empty() && text.back() == '\r') text.pop_back();
    lines.push_back({std::move(text), number});
    pos = end + 1;
  }
  return lines;
}

bool is_blank(const std::string& s) {
  return s.find_first_not_of(" \t\r\n\f\v") == std::string::npos;
}

// Plain text is handed to the tokenizer as bytes, so refuse what is not UTF-8 (as Hugging Face's
// readers do) instead of training on mojibake.
void check_utf8(const std::string& path, const Line& line) {
  const std::string& s = line.text;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    G4_CHECK(ok, path, ":", line.number, ": not valid UTF-8 (byte ", i + 1, " of the line)");
    i += n;
  }
}

// A document before tokenisation: plain text or a conversation.
struct RawDoc {
  std::string source;
  bool is_chat = false;
  std::string text;
  std::vector<ChatMessage> messages;
  std::vector<std::string> images{}, audio{};  // the media parts' files, in order
  std::vector<io::VideoFrames> videos{};
};

void read_plain_text(const std::string& path, const std::string& bytes, const std::string& split,
                     std::vector<RawDoc>& out) {
  const std::vector<Line> lines = split_lines(bytes);
  for (const Line& l : lines) check_utf8(path, l);
  const auto add = [&](int64_t line, std::string text) {
    out.push_back({path + ":" + std::to_string(line), false, std::move(text), {}});
  };
  if (split == "file") {
    std::string text;  // the whole file, line breaks as "\n", without a final one
    for (size_t i = 0; i < lines.size(); ++i) text += lines[i].text + (i + 1 < lines.size() ? "\n" : "");
    if (!is_blank(text)) add(1, text);
  } else if (split == "line") {
    for (const Line& l : lines)
      if (!is_blank(l.text)) add(l.number, l.text);
  } else {  // paragraph: runs of non-blank lines, joined by "\n"
    for (size_t i = 0; i < lines.size();) {
      if (is_blank(lines[i].text)) {
        ++i;
        continue;
      }
      const int64_t start = lines[i].number;
      std::string text = lines[i++].text;
      while (i < lines.size() && !is_blank(lines[i].text)) text += "\n" + lines[i++].text;
      add(start, text);
    }
  }
}

const char* json_type(const json& j) { return j.type_name(); }

json parse_json_line(const std::string& path, const Line& line) {
  io::check_json_limits(line.text, path + ":" + std::to_string(line.number), io::kMaxJsonLineBytes);
  try {
    return json::parse(line.text);
  } catch (const json::exception& e) {
    // nlohmann says "[json.exception.parse_error.101] parse error at line 1, column 7: ..."; the
    // line is ours, so keep from the column on. A number too large for a double (1e309) is an
    // out_of_range error, not a parse_error.
    std::string what = io::json_error_text(e);
    if (const size_t p = what.find("column "); p != std::string::npos) what.erase(0, p);
    G4_FAIL(path, ":", line.number, ": invalid JSON (data files hold one JSON object per line): ", what);
  }
}

std::string string_field(const json& obj, const std::string& key, const std::string& where) {
  const auto it = obj.find(key);
  G4_CHECK(it != obj.end(), where, ": missing key '", key, "'");
  G4_CHECK(it->is_string(), where, ": '", key, "' must be a string, not ", json_type(*it));
  return it->get<std::string>();
}

}  // namespace

io::VideoFrames read_video_part(const json& part, const std::string& where, const std::filesystem::path& folder) {
  const auto resolve = [&](const std::filesystem::path& file) {
    G4_CHECK(!file.empty(), where, ": a video frame path is empty");
    return (file.is_absolute() ? file : folder / file).string();
  };
  io::VideoFrames video;
  const auto frames = part.find("frames");
  G4_CHECK((frames != part.end()) != part.contains("path"), where,
           ": a video part takes either 'frames' (a list of image files) or 'path' (a folder of frames)");
  if (frames != part.end()) {
    G4_CHECK(frames->is_array() && !frames->empty(), where, ": 'frames' must be a non-empty list of image files");
    for (size_t f = 0; f < frames->size(); ++f) {
      G4_CHECK((*frames)[f].is_string(), where, ": frames[", f, "] must be a path, not ", json_type((*frames)[f]));
      video.files.push_back(resolve((*frames)[f].get<std::string>()));
      std::error_code ec;
      G4_CHECK(std::filesystem::is_regular_file(video.files.back(), ec), where, ": frame ", video.files.back(),
               " does not exist");
    }
  } else {
    const std::string dir = resolve(string_field(part, "path", where));
    try {
      video.files = io::list_video_frames(dir);
    } catch (const Error& e) {
      G4_FAIL(where, ": ", e.what());
    }
  }
  video.fps = read_video_fps(part, where);
  return video;
}

double read_video_fps(const json& part, const std::string& where) {
  const auto fps = part.find("fps");
  if (fps == part.end() || fps->is_null()) return 0;
  G4_CHECK(fps->is_number() && fps->get<double>() > 0 && std::isfinite(fps->get<double>()), where,
           ": 'fps' (the frames' rate) must be a positive number, got ", fps->dump());
  return fps->get<double>();
}

namespace {

// A key of a content part that its type does not read is an error: a misspelt key ("detial") or
// one of another schema ("image_url", "url") would otherwise be dropped without a word. Null
// values pass: a data set written through Arrow gives every part the union of all parts' keys,
// null where a part has none.
void check_part_keys(const json& part, std::initializer_list<const char*> known, const std::string& where,
                     const std::string& type) {
  for (const auto& item : part.items()) {
    const std::string& key = item.key();
    if (item.value().is_null() || std::any_of(known.begin(), known.end(), [&](const char* k) { return key == k; }))
      continue;
    std::string keys;
    for (const char* k : known) keys += std::string(keys.empty() ? "" : ", ") + "'" + k + "'";
    G4_FAIL(where, ": unknown key '", key, "' in a part of type '", type, "' (it takes ", keys, ")");
  }
}

// An OpenAI-style content list: {"type": "text", "text": ...}, {"type": "image", "path": ...},
// {"type": "audio", "path": ...}, a video (read_video_part); paths relative to the data file's folder.
std::vector<ChatPart> read_parts(const json& content, const std::string& at, const std::filesystem::path& folder,
                                 RawDoc& doc) {
  std::vector<ChatPart> parts;
  for (size_t k = 0; k < content.size(); ++k) {
    const json& part = content[k];
    const std::string where = at + ".content[" + std::to_string(k) + "]";
    G4_CHECK(part.is_object(), where, " must be a {type, ...} object, not ", json_type(part));
    const std::string type = string_field(part, "type", where);
    if (type == "text") {
      check_part_keys(part, {"type", "text"}, where, type);
      parts.push_back({ChatPart::Kind::Text, string_field(part, "text", where)});
      continue;
    }
    if (type == "video") {
      check_part_keys(part, {"type", "frames", "path", "fps"}, where, type);
      doc.videos.push_back(read_video_part(part, where, folder));
      parts.push_back({ChatPart::Kind::Video, ""});
      continue;
    }
    G4_CHECK(type == "image" || type == "audio", where, ": part type '", type, "' is not supported (parts are ",
             R"({"type": "text", "text": ...}, {"type": "image", "path": FILE}, {"type": "audio", "path": FILE.wav})",
             R"( and {"type": "video", "frames": [FILE, ...] or "path": DIR, "fps": F}))");
    check_part_keys(part, {"type", "path"}, where, type);
    const std::filesystem::path file = string_field(part, "path", where);
    G4_CHECK(!file.empty(), where, ": 'path' is empty");
    const std::string resolved = (file.is_absolute() ? file : folder / file).string();
    // A relative path is the data file's folder's, not the working directory's: say so when nothing is there.
    std::error_code ec;
    G4_CHECK(file.is_absolute() || std::filesystem::exists(resolved, ec), where, ": ", type, " file '",
             file.string(), "' not found at ", resolved, " (a relative path in a data file is taken from the data ",
             "file's folder", folder.empty() ? "" : " " + folder.string(), ", not the working directory)");
    (type == "image" ? doc.images : doc.audio).push_back(resolved);
    parts.push_back({type == "image" ? ChatPart::Kind::Image : ChatPart::Kind::Audio, ""});
  }
  return parts;
}

std::vector<ChatMessage> read_messages(const json& obj, const std::string& where, const std::filesystem::path& folder,
                                       RawDoc& doc) {
  const auto it = obj.find("messages");
  G4_CHECK(it != obj.end(), where, ": missing key 'messages'");
  G4_CHECK(it->is_array(), where, ": 'messages' must be an array of {role, content} objects, not ", json_type(*it));
  G4_CHECK(!it->empty(), where, ": 'messages' is empty");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = where + ": messages[" + std::to_string(i) + "]";
    G4_CHECK(m.is_object(), at, " must be a {role, content} object, not ", json_type(m));
    const auto content = m.find("content");
    if (content != m.end() && content->is_array()) {
      messages.push_back({string_field(m, "role", at), "", read_parts(*content, at, folder, doc)});
      continue;
    }
    G4_CHECK(content == m.end() || content->is_string(), at, ": 'content' must be a string or a list of parts, not ",
             json_type(*content), " (tool calls are not supported)");
    messages.push_back({string_field(m, "role", at), string_field(m, "content", at)});
  }
  return messages;
}

// Format "auto": plain text or JSON lines by the extension ...
bool has_text_extension(const std::string& path) {
  const size_t dot = path.find_last_of('.'), slash = path.find_last_of('/');
  const std::string ext =
      dot == std::string::npos || (slash != std::string::npos && dot < slash) ? "" : path.substr(dot);
  if (ext == ".txt" || ext == ".text" || ext == ".md") return true;
  G4_CHECK(ext == ".jsonl" || ext == ".json" || ext == ".ndjson", path, ": cannot tell the data format from the ",
           ext.empty() ? "missing extension" : "extension '" + ext + "'",
           " (auto knows .txt/.text/.md and .jsonl/.json/.ndjson); set the data format to text, jsonl or chat");
  return false;
}

// ... and JSON lines as "chat" or "jsonl" by the first object's keys.
std::string json_lines_format(const std::string& path, const std::vector<Line>& lines) {
  for (const Line& l : lines) {
    if (is_blank(l.text)) continue;
    const json j = parse_json_line(path, l);
    G4_CHECK(j.is_object(), path, ":", l.number, ": expected a JSON object, not ", json_type(j));
    if (j.contains("messages")) return "chat";
    if (j.contains("text")) return "jsonl";
    G4_FAIL(path, ":", l.number, ": cannot tell the data format: the first object has neither 'text' nor ",
            "'messages'; set the data format to jsonl or chat");
  }
  return "jsonl";  // no objects at all: the file contributes nothing either way
}

void read_file_docs(const std::string& path, const DataOptions& opt, std::vector<RawDoc>& out) {
  const std::string bytes = read_file(path);
  std::string format = opt.format;
  if (format == "auto" && has_text_extension(path)) format = "text";
  if (format == "text") {
    read_plain_text(path, bytes, opt.text_split, out);
    return;
  }
  const std::vector<Line> lines = split_lines(bytes);
  if (format == "auto") format = json_lines_format(path, lines);
  for (const Line& l : lines) {
    if (is_blank(l.text)) continue;
    const std::string where = path + ":" + std::to_string(l.number);
    const json j = parse_json_line(path, l);
    G4_CHECK(j.is_object(), where, ": expected a JSON object, not ", json_type(j));
    if (format == "chat") {
      // Media listed beside the messages (TRL's and LLaVA's "images" column) would be dropped: here
      // they go in the messages' content parts.
      for (const char* key : {"images", "image", "audios", "audio", "videos", "video"})
        G4_CHECK(!j.contains(key) || j[key].is_null(), where, ": the row's '", key, "' is not read: media go in ",
                 R"(the messages' content parts, {"type": "image", "path": FILE} where each one belongs)");
      RawDoc doc{where, true, "", {}};
      doc.messages = read_messages(j, where, std::filesystem::path(path).parent_path(), doc);
      out.push_back(std::move(doc));
    } else {
      G4_CHECK(j.contains("text") || !j.contains("messages"), where,
               ": missing key 'text' (this object has 'messages': set the data format to chat)");
      out.push_back({where, false, string_field(j, "text", where), {}});
    }
  }
}

// A conversation with media, as Gemma 4's processor prepares it: the placeholders expanded to the
// soft-token counts the processors would give for this conversation alone (from the files' headers
// and lengths: the media themselves are processed when a batch uses them, data/media.h), the text
// tokenised whole. The reply marks move with the expansion; the media tokens (boundaries and soft
// tokens) are never trained, wherever they are.
Document media_document(RenderedChat chat, const RawDoc& r, const DataOptions& opt, const io::Tokenizer& tok) {
  std::shared_ptr<const DocumentMedia> media;
  MediaSoftTokens soft_tokens;
  try {
    check_media_tokens(tok, !r.images.empty(), !r.audio.empty(), "the tokenizer", !r.videos.empty());
    io::ImageProcessorOptions o = opt.image_processor;
    if (opt.max_soft_tokens > 0) o.max_soft_tokens = opt.max_soft_tokens;
    media = plan_document_media(r.source, r.images, r.audio, r.videos, o, opt.video_processor, &soft_tokens);
  } catch (const Error& e) {
    G4_FAIL(r.source, ": ", e.what());
  }
  std::vector<size_t> marks;
  for (const RenderedChat::Reply& reply : chat.replies)
    marks.insert(marks.end(), {reply.header, reply.begin, reply.end});
  chat.text = expand_media(chat.text, soft_tokens, r.source, &marks);
  for (size_t i = 0; i < chat.replies.size(); ++i) chat.replies[i] = {marks[3 * i], marks[3 * i + 1], marks[3 * i + 2]};
  Document doc = chat_document(chat, tok);
  const std::vector<int64_t> types = mm_token_types(doc.ids, tok);
  std::vector<int32_t> boundaries;
  for (const char* t : {"<|image>", "<image|>", "<|audio>", "<audio|>"})
    if (const auto id = tok.token_to_id(t)) boundaries.push_back(*id);
  doc.mm_types.resize(types.size());
  for (size_t t = 0; t < types.size(); ++t) {
    doc.mm_types[t] = static_cast<uint8_t>(types[t]);
    if (types[t] != 0 || std::find(boundaries.begin(), boundaries.end(), doc.ids[t]) != boundaries.end())
      doc.trained[t] = 0;
  }
  doc.media = std::move(media);
  return doc;
}

}  // namespace

std::vector<Document> load_documents(const DataOptions& opt, const io::Tokenizer& tok) {
  check_options(opt);
  G4_CHECK(!opt.files.empty(), "data: no files given");
  std::vector<RawDoc> raw;
  for (const std::string& path : opt.files) read_file_docs(path, opt, raw);

  std::vector<Document> docs;
  int64_t skipped_empty = 0, skipped_no_reply = 0;
  for (RawDoc& r : raw) {
    Document doc;
    if (r.is_chat) {
      RenderedChat chat;
      try {
        chat = render_chat_marked(r.messages);
      } catch (const Error& e) {
        G4_FAIL(r.source, ": ", e.what());
      }
      if (chat.replies.empty()) {
        ++skipped_no_reply;
        continue;
      }
      const bool no_media = r.images.empty() && r.audio.empty() && r.videos.empty();
      check_no_written_media_tokens(chat.text, tok, /*placeholders=*/no_media, r.source);
      doc = no_media ? chat_document(chat, tok) : media_document(chat, r, opt, tok);
    } else {
      if (r.text.empty()) {
        ++skipped_empty;
        continue;
      }
      check_no_written_media_tokens(r.text, tok, /*placeholders=*/true, r.source);
      if (opt.add_bos) doc.ids.push_back(tok.bos_id);
      const std::vector<int32_t> ids = tok.encode(r.text);
      doc.ids.insert(doc.ids.end(), ids.begin(), ids.end());
      if (opt.add_eos) doc.ids.push_back(tok.eos_id);
      doc.trained.assign(doc.ids.size(), 1);
    }
    doc.source = std::move(r.source);
    docs.push_back(std::move(doc));
  }
  if (skipped_empty + skipped_no_reply > 0) {
    G4_LOG("data: skipped ", skipped_empty, " empty document(s) and ", skipped_no_reply,
           " conversation(s) without an assistant reply");
  }
  return docs;
}

}  // namespace g4::data

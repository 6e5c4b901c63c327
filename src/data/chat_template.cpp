// The Gemma 4 chat template, for text messages.
//
// Where the format comes from: Gemma 4's turn markers are documented at
// https://ai.google.dev/gemma/docs/core/prompt-formatting-gemma4 ("<|turn>role\n ... <turn|>", roles
// system/user/model). The exact text is the chat_template.jinja published with the checkpoints:
// transformers' src/transformers/models/gemma4/convert_gemma4_weights.py installs one for the small
// models and one for the large ones (_CHAT_TEMPLATE from gemma-4-E4B-it, _CHAT_TEMPLATE_LARGE from
// gemma-4-31B-it), and llama.cpp keeps a copy as models/templates/gemma4.jinja. For text messages
// with thinking off, that template:
//   - writes bos_token first;
//   - if the first message is "system" (or "developer"), writes it as "<|turn>system\n" + its
//     trimmed content + "<turn|>\n" and leaves it out of the loop;
//   - writes every other message as "<|turn>" + role + "\n" + content + "<turn|>\n", with
//     "assistant" renamed "model"; content is trimmed (Jinja `trim`, i.e. Python's str.strip()),
//     and an assistant's content first loses every "<|channel>...<channel|>" thought
//     (the template's strip_thinking macro);
//   - for add_generation_prompt writes "<|turn>model\n", and the 26B-A4B/31B template then an empty
//     thought channel "<|channel>thought\n<channel|>".
// tests/data_pipeline/chat_template_cases.json holds renderings of the real template made with
// jinja2 (tools/render_chat_reference.py); the tests compare against them byte for byte.
//
// Content parts (ChatMessage::parts) render as the same template renders a content list: text
// parts trimmed (assistant text through strip_thinking), images as "\n\n<|image|>\n\n", videos as
// "\n\n<|video|>\n\n" (the same revision of the template), audio as "<|audio|>", nothing between parts.
//
// Not rendered (refused or not representable in ChatMessage): tools, tool calls,
// enable_thinking. Two assistant messages in a row are refused: template revisions disagree
// on them (newer ones merge them into one model turn).
#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"

namespace g4::data {
namespace {

// Python's str.isspace() code points, which Jinja's trim filter (str.strip()) removes.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 code point starting at s[i]; `len` gets its byte length. Malformed bytes decode
// as U+FFFD (not whitespace), so trimming simply stops there.
char32_t decode_at(const std::string& s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFD;
  }
  char32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) {
      *len = 1;
      return 0xFFFD;
    }
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  *len = n;
  return cp;
}

std::string python_strip(const std::string& s) {
  size_t begin = 0, len = 0;
  while (begin < s.size() && is_python_space(decode_at(s, begin, &len))) begin += len;
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;  // back up to the first byte of the last code point
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    if (!is_python_space(decode_at(s, start, &len)) || start + len != end) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// The template's strip_thinking macro: split on "<channel|>", keep of each part what comes before
// "<|channel>", join, trim.
std::string strip_thinking(const std::string& text) {
  static const std::string open = "<|channel>", close = "<channel|>";
  std::string result;
  size_t pos = 0;
  while (true) {
    const size_t next = text.find(close, pos);
    const std::string part = text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    result += part.substr(0, part.find(open));
    if (next == std::string::npos) break;
    pos = next + close.size();
  }
  return python_strip(result);
}

// A message's body: its trimmed string content, or its parts rendered one after another.
std::string message_body(const ChatMessage& m, bool assistant) {
  if (m.parts.empty()) return assistant ? strip_thinking(m.content) : python_strip(m.content);
  std::string body;
  for (const ChatPart& p : m.parts) {
    switch (p.kind) {
      case ChatPart::Kind::Text: body += assistant ? strip_thinking(p.text) : python_strip(p.text); break;
      case ChatPart::Kind::Image: body += "\n\n<|image|>\n\n"; break;
      case ChatPart::Kind::Audio: body += "<|audio|>"; break;
      case ChatPart::Kind::Video: body += "\n\n<|video|>\n\n"; break;
    }
  }
  return body;
}

}  // namespace

RenderedChat render_chat_marked(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                ChatVariant variant) {
  G4_CHECK(!messages.empty(), "chat: no messages (the template needs at least one)");
  RenderedChat out;
  out.text = "<bos>";
  size_t first = 0;
  if (messages[0].role == "system" || messages[0].role == "developer") {
    G4_CHECK(messages[0].parts.empty(), "messages[0]: the ", messages[0].role,
             " message must have string content (the template trims it as a string)");
    out.text += "<|turn>system\n" + python_strip(messages[0].content) + "<turn|>\n";
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      G4_FAIL("messages[", i, "]: unknown role '", role, "' (expected system, user or assistant",
              role == "developer" ? "; developer only as the first message" : "", ")");
    }
    if (role == "assistant" && i > 0 && messages[i - 1].role == "assistant") {
      G4_FAIL("messages[", i - 1, "] and messages[", i, "] are both assistant messages; Gemma 4 template ",
              "revisions render that differently, so merge them into one");
    }
    out.text += "<|turn>";
    if (role == "assistant") {
      RenderedChat::Reply reply;
      reply.header = out.text.size();
      out.text += "model\n";
      reply.begin = out.text.size();
      out.text += message_body(messages[i], true) + "<turn|>";
      reply.end = out.text.size();
      out.text += "\n";
      out.replies.push_back(reply);
    } else {
      out.text += role + "\n" + message_body(messages[i], false) + "<turn|>\n";
    }
  }
  if (add_generation_prompt) {
    out.text += "<|turn>model\n";
    if (variant == ChatVariant::Large) out.text += "<|channel>thought\n<channel|>";
  }
  return out;
}

std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt, ChatVariant variant) {
  return render_chat_marked(messages, add_generation_prompt, variant).text;
}

namespace {

// How many leading tokens of `piece` (the tokens of "model\n" + reply + "<turn|>") lie wholly inside
// the header "model\n". Usually the header's own tokens start the piece; if the tokenizer merged
// across the boundary, the merged token belongs to the reply, as with Hugging Face's
// char_to_token-based assistant masks.
size_t header_token_count(const std::vector<int32_t>& piece, const std::string& header, const io::Tokenizer& tok) {
  const std::vector<int32_t> own = tok.encode(header);
  if (own.size() <= piece.size() && std::equal(own.begin(), own.end(), piece.begin())) return own.size();
  size_t bytes = 0, n = 0;
  while (n < piece.size()) {
    bytes += tok.decode({piece[n]}).size();
    if (bytes > header.size()) break;
    ++n;
  }
  return n;
}

void append(Document& doc, const std::vector<int32_t>& ids, bool trained) {
  doc.ids.insert(doc.ids.end(), ids.begin(), ids.end());
  doc.trained.insert(doc.trained.end(), ids.size(), trained ? 1 : 0);
}

}  // namespace

std::string chat_tokenizer_problem(const io::Tokenizer& tok) {
  for (const char* special : {"<bos>", "<|turn>", "<turn|>"}) {
    const std::optional<int32_t> id = tok.token_to_id(special);
    if (!id) return std::string("has no '") + special + "' token";
    // In the vocabulary but not an added (special) token: the text is then split around it.
    if (tok.encode(special) != std::vector<int32_t>{*id})
      return std::string("does not read '") + special + "' as its token " + std::to_string(*id) +
             " (it is not one of the tokenizer's added tokens)";
  }
  return "";
}

void warn_chat_tokenizer(const io::Tokenizer& tok, const std::string& whose) {
  const std::string problem = chat_tokenizer_problem(tok);
  if (!problem.empty())
    G4_LOG("warning: ", whose, " ", problem, ": the chat template's turns are read as plain text, as transformers ",
           "reads them with this tokenizer (a Gemma 4 tokenizer has them as tokens of their own)");
}

Document chat_document(const RenderedChat& chat, const io::Tokenizer& tok) {
  // Which tokens are trained is found by the turn tokens: without them a reply cannot be marked.
  const std::string problem = chat_tokenizer_problem(tok);
  G4_CHECK(problem.empty(), "chat data needs a Gemma 4 tokenizer, and the data's tokenizer ", problem);
  // The text is cut only right after "<|turn>" and right after a reply's "<turn|>": both are special
  // tokens, which the tokenizer never merges with their neighbours, so the pieces tokenise exactly
  // as the whole string does.
  Document doc;
  size_t pos = 0;
  for (const RenderedChat::Reply& r : chat.replies) {
    append(doc, tok.encode(chat.text.substr(pos, r.header - pos)), false);
    const std::vector<int32_t> piece = tok.encode(chat.text.substr(r.header, r.end - r.header));
    const size_t n_header = header_token_count(piece, chat.text.substr(r.header, r.begin - r.header), tok);
    append(doc, std::vector<int32_t>(piece.begin(), piece.begin() + static_cast<long>(n_header)), false);
    append(doc, std::vector<int32_t>(piece.begin() + static_cast<long>(n_header), piece.end()), true);
    pos = r.end;
  }
  if (pos < chat.text.size()) append(doc, tok.encode(chat.text.substr(pos)), false);
  return doc;
}

}  // namespace g4::data

// tokenizer.json reader and the BPE encoder/decoder. The behaviour follows Hugging Face
// `tokenizers` step by step, including its corner cases, because ids must match exactly:
//  1. added tokens with "normalized": false are cut out of the raw text (leftmost-longest);
//  2. each remaining piece is normalized, then added tokens with "normalized": true are cut out;
//  3. the Split pre-tokenizer cuts the rest into words; each word is BPE-encoded on its own.
#include "io/hf_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/error.h"
#include "io/json_input.h"
#include "io/utf8.h"

namespace g4::io {

using nlohmann::json;

namespace {

// The id -> token table is dense, so a huge id would allocate a table of that many strings;
// real vocabularies are far smaller (Gemma's has 262,144 ids).
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;

// A JSON value and its path in the file ("normalizer.normalizers[1]"), so that every error names
// the file and the exact component.
class Node {
 public:
  Node(const json& j, std::string path, const std::string& file) : j_(j), path_(std::move(path)), file_(file) {}

  const json& value() const { return j_; }
  bool is_null() const { return j_.is_null(); }

  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    G4_FAIL("tokenizer ", file_, ": ", path_.empty() ? "the document" : path_, " ", args...);
  }
  Node operator[](const std::string& key) const {  // a missing key reads as null
    static const json kNull;
    if (!j_.is_object()) fail("must be an object, got ", j_.dump());
    auto it = j_.find(key);
    return Node(it == j_.end() ? kNull : *it, path_.empty() ? key : path_ + "." + key, file_);
  }
  Node operator[](size_t i) const { return Node(j_[i], path_ + "[" + std::to_string(i) + "]", file_); }
  size_t array_size() const {
    if (!j_.is_array()) fail("must be a list, got ", j_.dump());
    return j_.size();
  }
  std::string str() const {
    if (!j_.is_string()) fail("must be a string, got ", j_.dump());
    return j_.get<std::string>();
  }
  bool flag(bool def) const {
    if (j_.is_null()) return def;
    if (!j_.is_boolean()) fail("must be true or false, got ", j_.dump());
    return j_.get<bool>();
  }
  int64_t integer() const {
    if (!j_.is_number_integer() || j_.get<int64_t>() < 0) fail("must be a non-negative integer, got ", j_.dump());
    return j_.get<int64_t>();
  }
  std::string type() const { return (*this)["type"].str(); }
  // A Replace/Split "pattern": only the literal {"String": ...} form; regexes are not supported.
  std::string literal_pattern() const {
    const Node p = (*this)["pattern"];
    if (p.value().is_object() && p.value().contains("Regex")) p.fail("is a regex; only {\"String\": ...} is supported");
    const std::string s = p["String"].str();
    if (s.empty()) p.fail("must not be empty");
    return s;
  }

 private:
  const json& j_;
  std::string path_;
  const std::string& file_;
};

// Components nested in {"type": "Sequence", <list_key>: [...]}, flattened in order.
template <class Fn>
void for_each_component(const Node& n, const char* list_key, Fn&& fn) {
  if (n.is_null()) return;
  if (n.type() == "Sequence") {
    const Node list = n[list_key];
    for (size_t i = 0; i < list.array_size(); ++i) for_each_component(list[i], list_key, fn);
  } else {
    fn(n);
  }
}

using NormalizeStep = HfTokenizer::NormalizeStep;
using SplitStep = HfTokenizer::SplitStep;
using DecodeStep = HfTokenizer::DecodeStep;

std::vector<NormalizeStep> parse_normalizer(const Node& node) {
  std::vector<NormalizeStep> steps;
  for_each_component(node, "normalizers", [&](const Node& n) {
    if (n.type() == "Replace") {
      steps.push_back({false, n.literal_pattern(), n["content"].str()});
    } else if (n.type() == "Prepend") {
      steps.push_back({true, "", n["prepend"].str()});
    } else {
      n["type"].fail("'", n.type(), "' is not supported (Gemma uses Replace, Prepend, Sequence)");
    }
  });
  return steps;
}

std::vector<SplitStep> parse_pre_tokenizer(const Node& node) {
  std::vector<SplitStep> steps;
  for_each_component(node, "pretokenizers", [&](const Node& n) {
    if (n.type() != "Split")
      n["type"].fail("'", n.type(), "' is not supported (Gemma uses Split on a string, or null)");
    if (n["invert"].flag(false)) n["invert"].fail("is true; only false is supported");
    const std::string behavior = n["behavior"].str();
    const std::pair<const char*, SplitStep::Behavior> names[] = {{"Removed", SplitStep::kRemoved},
                                                                 {"Isolated", SplitStep::kIsolated},
                                                                 {"MergedWithPrevious", SplitStep::kMergedWithPrevious},
                                                                 {"MergedWithNext", SplitStep::kMergedWithNext},
                                                                 {"Contiguous", SplitStep::kContiguous}};
    auto it = std::find_if(std::begin(names), std::end(names), [&](const auto& p) { return behavior == p.first; });
    if (it == std::end(names)) n["behavior"].fail("'", behavior, "' is not a Split behavior");
    steps.push_back({n.literal_pattern(), it->second});
  });
  return steps;
}

std::vector<DecodeStep> parse_decoder(const Node& node) {
  std::vector<DecodeStep> steps;
  for_each_component(node, "decoders", [&](const Node& n) {
    const std::string type = n.type();
    DecodeStep step;
    if (type == "Replace") {
      step.kind = DecodeStep::kReplace;
      step.pattern = n.literal_pattern();
      step.content = n["content"].str();
    } else if (type == "ByteFallback") {
      step.kind = DecodeStep::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = DecodeStep::kFuse;
    } else if (type == "Strip") {
      step.kind = DecodeStep::kStrip;
      step.content = n["content"].str();
      if (step.content.empty() || utf8_length(step.content, 0) != step.content.size())
        n["content"].fail("must be one character");
      step.start = static_cast<int>(n["start"].integer());
      step.stop = static_cast<int>(n["stop"].integer());
    } else {
      n["type"].fail("'", type, "' is not supported (Gemma uses Replace, ByteFallback, Fuse, Strip, Sequence)");
    }
    steps.push_back(step);
  });
  return steps;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

// Parses "<0xNN>" (either hex case), as the ByteFallback decoder recognises byte tokens.
std::optional<unsigned char> byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
  unsigned value = 0;
  for (char c : t.substr(3, 2)) {
    const int d = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
    if (d < 0) return std::nullopt;
    value = value * 16 + static_cast<unsigned>(d);
  }
  return static_cast<unsigned char>(value);
}

// ByteFallback decoder: runs of byte tokens become their bytes if those are valid UTF-8, else one
// U+FFFD per byte (as `tokenizers` does; it never emits partial characters).
std::vector<std::string> fuse_byte_tokens(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;
  size_t count = 0;
  const auto flush = [&] {
    if (count == 0) return;
    if (utf8_error_offset(bytes) == bytes.size()) {
      out.push_back(bytes);
    } else {
      for (size_t k = 0; k < count; ++k) out.push_back("\xEF\xBF\xBD");
    }
    bytes.clear();
    count = 0;
  };
  for (const std::string& t : tokens) {
    if (auto b = byte_token_value(t)) {
      bytes += static_cast<char>(*b);
      ++count;
    } else {
      flush();
      out.push_back(t);
    }
  }
  flush();
  return out;
}

// Strip decoder: removes up to `start` leading and `stop` trailing copies of the character `c`.
std::string strip_chars(const std::string& token, const std::string& c, int start, int stop) {
  size_t begin = 0, end = token.size();
  for (int k = 0; k < start && token.compare(begin, c.size(), c) == 0 && begin + c.size() <= end; ++k)
    begin += c.size();
  for (int k = 0; k < stop && end >= begin + c.size() && token.compare(end - c.size(), c.size(), c) == 0; ++k)
    end -= c.size();
  return token.substr(begin, end - begin);
}

// Split pre-tokenizer on a literal pattern, with the delimiter behaviours of `tokenizers`. For
// "the-final--countdown" split on "-": Removed [the, final, countdown]; Isolated [the, -, final,
// -, -, countdown]; MergedWithPrevious [the-, final-, -, countdown]; MergedWithNext [the, -final,
// -, -countdown]; Contiguous [the, -, final, --, countdown].
void split_literal(const std::string& s, const SplitStep& step, std::vector<std::string>& out) {
  using B = SplitStep;
  struct Seg {
    std::string text;
    bool match;
  };
  std::vector<Seg> segs;  // alternating non-empty text / delimiter occurrences, covering s
  size_t pos = 0;
  for (size_t hit; (hit = s.find(step.pattern, pos)) != std::string::npos; pos = hit + step.pattern.size()) {
    if (hit > pos) segs.push_back({s.substr(pos, hit - pos), false});
    segs.push_back({step.pattern, true});
  }
  if (pos < s.size()) segs.push_back({s.substr(pos), false});

  std::vector<std::string> pieces;
  if (step.behavior == B::kMergedWithNext) std::reverse(segs.begin(), segs.end());
  bool previous_match = false;
  for (const Seg& seg : segs) {
    switch (step.behavior) {
      case B::kRemoved:
        if (!seg.match) pieces.push_back(seg.text);
        break;
      case B::kIsolated:
        pieces.push_back(seg.text);
        break;
      case B::kContiguous:  // consecutive delimiters form one piece
        if (seg.match && previous_match)
          pieces.back() += seg.text;
        else
          pieces.push_back(seg.text);
        break;
      case B::kMergedWithPrevious:  // a delimiter joins the text before it, not another delimiter
        if (seg.match && !previous_match && !pieces.empty())
          pieces.back() += seg.text;
        else
          pieces.push_back(seg.text);
        break;
      case B::kMergedWithNext:  // mirror image, walking backwards
        if (seg.match && !previous_match && !pieces.empty())
          pieces.back() = seg.text + pieces.back();
        else
          pieces.push_back(seg.text);
        break;
    }
    previous_match = seg.match;
  }
  if (step.behavior == B::kMergedWithNext) std::reverse(pieces.begin(), pieces.end());
  for (std::string& p : pieces) out.push_back(std::move(p));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading

void HfTokenizer::Trie::insert(std::string_view s, int32_t id) {
  int32_t node = 0;
  for (unsigned char c : s) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
    auto it = edges_.find(key);
    if (it == edges_.end()) {
      it = edges_.emplace(key, static_cast<int32_t>(ids_.size())).first;
      ids_.push_back(-1);
    }
    node = it->second;
  }
  ids_[static_cast<size_t>(node)] = id;
}

size_t HfTokenizer::Trie::longest_at(std::string_view text, size_t pos, int32_t* id) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges_.end()) break;
    node = it->second;
    if (ids_[static_cast<size_t>(node)] >= 0) {
      best = i + 1 - pos;
      *id = ids_[static_cast<size_t>(node)];
    }
  }
  return best;
}

void HfTokenizer::add_token(const std::string& token, int32_t id, Kind kind) {
  const auto i = static_cast<size_t>(id);
  if (i >= id_to_token_.size()) {
    id_to_token_.resize(i + 1);
    kind_.resize(i + 1, kUnused);
  }
  id_to_token_[i] = token;
  kind_[i] = kind;
}

HfTokenizer::HfTokenizer(const json& doc, const std::string& source) : source_(source) {
  const Node root(doc, "", source_);
  if (!doc.is_object()) root.fail("must be a JSON object");

  // Truncation and padding would change what encode() returns; g4 truncates and pads itself.
  for (const char* key : {"truncation", "padding"})
    if (!root[key].is_null()) root[key].fail("is set; g4 supports only null (it truncates and pads itself)");
  // The post-processor only adds special tokens (BOS), which encode() never does.
  const Node post = root["post_processor"];
  if (!post.is_null() && post.type() != "TemplateProcessing")
    post["type"].fail("'", post.type(), "' is not supported (only TemplateProcessing or null)");

  // Model: BPE as Gemma uses it (no subword prefix/suffix, no dropout).
  const Node model = root["model"];
  if (model.is_null()) model.fail("is missing");
  if (model.type() != "BPE")
    model["type"].fail("'", model.type(), "' is not supported: g4 reads BPE models (as Gemma's tokenizer.json has)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!model[key].is_null() && !model[key].str().empty()) model[key].fail("is not supported (must be null)");
  if (!model["dropout"].is_null() && model["dropout"].value() != 0)
    model["dropout"].fail("is not supported (must be null: BPE dropout is random)");
  const bool byte_fallback = model["byte_fallback"].flag(false);
  fuse_unk_ = model["fuse_unk"].flag(false);
  ignore_merges_ = model["ignore_merges"].flag(false);

  const Node vocab = model["vocab"];
  if (!vocab.value().is_object()) vocab.fail("must be an object of token -> id");
  for (const auto& item : vocab.value().items()) {
    const std::string& token = item.key();
    const int64_t v = vocab[token].integer();
    G4_CHECK(v <= kMaxTokenId, "tokenizer ", source_, ": model.vocab id ", v, " of '", token,
             "' is too large (ids up to ", kMaxTokenId, " are accepted)");
    vocab_[token] = static_cast<int32_t>(v);
    add_token(token, static_cast<int32_t>(v), kNormal);
  }
  const auto model_id = [&](const std::string& token) -> std::optional<int32_t> {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  };

  if (!model["unk_token"].is_null()) {
    unk_id_ = model_id(model["unk_token"].str());
    if (!unk_id_) model["unk_token"].fail("'", model["unk_token"].str(), "' is not in model.vocab");
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = byte_fallback ? model_id(name).value_or(-1) : -1;
  }

  // Merges, rank = position in the list: ["a", "b"] pairs, or "a b" strings in older files
  // (where, as in `tokenizers`, "#version" lines are skipped and do not take a rank).
  const Node merges = model["merges"];
  int32_t rank = 0;
  for (size_t i = 0; i < merges.array_size(); ++i) {
    const Node m = merges[i];
    std::string a, b;
    if (m.value().is_string()) {
      const std::string s = m.str();
      if (s.rfind("#version", 0) == 0) continue;
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        m.fail("'", s, "' must be two tokens separated by one space");
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {
      if (m.array_size() != 2) m.fail("must be a pair of tokens, got ", m.value().dump());
      a = m[0].str();
      b = m[1].str();
    }
    for (const std::string& t : {a, b, a + b})
      if (!model_id(t)) m.fail("uses '", t, "', which is not in model.vocab");
    // A pair listed twice keeps its last rank, as in `tokenizers`.
    merges_[pair_key(*model_id(a), *model_id(b))] = Merge{rank++, *model_id(a + b)};
  }

  // The normalizer comes before the added tokens: "normalized" ones are matched in normalized form.
  normalizer_ = parse_normalizer(root["normalizer"]);
  const Node added = root["added_tokens"];
  for (size_t i = 0; !added.is_null() && i < added.array_size(); ++i) {
    const Node t = added[i];
    const std::string content = t["content"].str();
    if (content.empty()) t["content"].fail("must not be empty");
    const int64_t id = t["id"].integer();
    G4_CHECK(id <= kMaxTokenId, "tokenizer ", source_, ": added_tokens[", i, "].id ", id, " is too large (ids up to ",
             kMaxTokenId, " are accepted)");
    for (const char* key : {"single_word", "lstrip", "rstrip"})
      if (t[key].flag(false)) t[key].fail("is true; g4 supports only false (as in Gemma's added tokens)");
    if (auto in_vocab = model_id(content); in_vocab && *in_vocab != id)
      t["id"].fail(id, " disagrees with model.vocab, which gives '", content, "' id ", *in_vocab);
    added_[content] = static_cast<int32_t>(id);
    const Kind kind = t["special"].flag(false) ? kSpecial : kNormal;
    if (t["normalized"].flag(kind != kSpecial)) {
      // Matched in the normalized text, so in normalized form ("Prepend" applies to it too);
      // `tokenizers` also decodes it from that form, so the decoder maps it back.
      const std::string form = normalize(content);
      normalized_added_.insert(form, static_cast<int32_t>(id));
      add_token(form, static_cast<int32_t>(id), kind);
    } else {
      raw_added_.insert(content, static_cast<int32_t>(id));
      add_token(content, static_cast<int32_t>(id), kind);
    }
  }

  pre_tokenizer_ = parse_pre_tokenizer(root["pre_tokenizer"]);
  if (!root["decoder"].is_null()) decoder_ = parse_decoder(root["decoder"]);
}

std::unique_ptr<HfTokenizer> HfTokenizer::load(const std::string& path) {
  return std::make_unique<HfTokenizer>(read_json_file(path, "tokenizer", kMaxTokenizerBytes), path);
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::string HfTokenizer::normalize(std::string text) const {
  for (const NormalizeStep& step : normalizer_) {
    if (step.prepend) {
      if (!text.empty()) text.insert(0, step.content);  // `tokenizers` leaves empty text alone
    } else {
      replace_all(text, step.pattern, step.content);
    }
  }
  return text;
}

std::vector<std::string> HfTokenizer::pre_tokenize(const std::string& normalized) const {
  std::vector<std::string> words{normalized};
  for (const SplitStep& step : pre_tokenizer_) {
    std::vector<std::string> next;
    for (const std::string& w : words) split_literal(w, step, next);
    words = std::move(next);
  }
  return words;
}

void HfTokenizer::bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {  // a word that is a token is taken whole, whatever the merges would give
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Symbols form a linked list; merging marks the right symbol dead.
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Symbol> syms;
  const auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[static_cast<size_t>(n - 1)].next = n;
  };
  // Characters missing from the vocabulary become their UTF-8 bytes' tokens, else <unk>. Like
  // `tokenizers`, a pending <unk> is only emitted before the next known character (or at the
  // end), so it can land after byte tokens that follow it.
  int32_t pending_unk = -1;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8_length(word, i);
    const std::string_view c = word.substr(i, n);
    i += n;
    if (auto it = vocab_.find(c); it != vocab_.end()) {
      if (pending_unk >= 0) push(pending_unk);
      pending_unk = -1;
      push(it->second);
      continue;
    }
    if (std::all_of(c.begin(), c.end(), [&](char b) { return byte_ids_[static_cast<unsigned char>(b)] >= 0; })) {
      for (char b : c) push(byte_ids_[static_cast<unsigned char>(b)]);
      continue;
    }
    if (!unk_id_) continue;  // no unk token: `tokenizers` drops the character
    if (pending_unk >= 0 && !fuse_unk_) push(pending_unk);
    pending_unk = *unk_id_;
  }
  if (pending_unk >= 0) push(pending_unk);

  // Merge by rank: the lowest-ranked adjacent pair first, the leftmost among equal ranks. Queue
  // entries go stale as neighbours merge; one is still applied when the pair now at its place
  // merges into the same token, exactly as `tokenizers` checks it.
  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int32_t left) {
    const Symbol& l = syms[static_cast<size_t>(left)];
    if (l.next < 0) return;
    auto it = merges_.find(pair_key(l.id, syms[static_cast<size_t>(l.next)].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.merged_id});
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(syms.size()); ++k) consider(k);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& s = syms[static_cast<size_t>(top.pos)];
    if (!s.alive || s.next < 0) continue;
    Symbol& right = syms[static_cast<size_t>(s.next)];
    auto it = merges_.find(pair_key(s.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    s.id = top.merged_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[static_cast<size_t>(s.next)].prev = top.pos;
    if (s.prev >= 0) consider(s.prev);
    consider(top.pos);
  }
  for (const Symbol& s : syms)
    if (s.alive) out.push_back(s.id);
}

void HfTokenizer::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  const std::string normalized = normalize(std::string(text));
  std::string_view rest = normalized;
  // Added tokens matched in normalized form, leftmost-longest; the text around them is words.
  const auto encode_words = [&](std::string_view piece) {
    if (piece.empty()) return;
    for (const std::string& word : pre_tokenize(std::string(piece)))
      if (!word.empty()) bpe(word, out);
  };
  size_t start = 0;
  for (size_t pos = 0; pos < rest.size();) {
    int32_t id = -1;
    const size_t len = normalized_added_.empty() ? 0 : normalized_added_.longest_at(rest, pos, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    encode_words(rest.substr(start, pos - start));
    out.push_back(id);
    pos += len;
    start = pos;
  }
  encode_words(rest.substr(start));
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text) const {
  const size_t bad = utf8_error_offset(text);
  G4_CHECK(bad == text.size(), "tokenizer ", source_, ": text to encode is not valid UTF-8 (byte offset ", bad, ")");
  std::vector<int32_t> out;
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t id = -1;
    const size_t len = raw_added_.empty() ? 0 : raw_added_.longest_at(text, pos, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    if (pos > start) encode_segment(std::string_view(text).substr(start, pos - start), out);
    out.push_back(id);
    pos += len;
    start = pos;
  }
  if (start < text.size()) encode_segment(std::string_view(text).substr(start), out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding and lookups

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string token = id_to_token(id);
    if (!(skip_special && kind_[static_cast<size_t>(id)] == kSpecial)) tokens.push_back(token);
  }
  std::string text;
  if (!decoder_) {  // `tokenizers` joins tokens with spaces when there is no decoder
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const DecodeStep& step : *decoder_) {
    switch (step.kind) {
      case DecodeStep::kReplace:
        for (std::string& t : tokens) replace_all(t, step.pattern, step.content);
        break;
      case DecodeStep::kByteFallback:
        tokens = fuse_byte_tokens(tokens);
        break;
      case DecodeStep::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case DecodeStep::kStrip:
        for (std::string& t : tokens) t = strip_chars(t, step.content, step.start, step.stop);
        break;
    }
  }
  for (const std::string& t : tokens) text += t;
  return text;
}

std::optional<int32_t> HfTokenizer::token_to_id(const std::string& token) const {
  if (auto it = added_.find(token); it != added_.end()) return it->second;
  if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  const bool known = id >= 0 && static_cast<size_t>(id) < kind_.size() && kind_[static_cast<size_t>(id)] != kUnused;
  G4_CHECK(known, "tokenizer ", source_, ": token id ", id, " is not in the vocabulary (", vocab_size(), " ids)");
  return id_to_token_[static_cast<size_t>(id)];
}

}  // namespace g4::io

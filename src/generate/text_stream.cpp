#include "generate/text_stream.h"

#include <algorithm>

namespace g4::gen {

namespace {
// A decoder's rendering of bytes that do not form a whole character yet (U+FFFD).
bool ends_incomplete(const std::string& s) { return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0; }
}  // namespace

std::string TextStream::decode(size_t begin, size_t end) const {
  return tok_->decode(std::vector<int32_t>(ids_.begin() + static_cast<std::ptrdiff_t>(begin),
                                           ids_.begin() + static_cast<std::ptrdiff_t>(end)),
                      /*skip_special=*/true);
}

bool TextStream::push(int64_t id) {
  if (!tok_ || stopped_) return stopped_;
  // A model's vocabulary may be wider than its tokenizer's: ids past the tokenizer (which only an
  // untrained model samples) have no text.
  if (id >= tok_->vocab_size()) return false;
  ids_.push_back(static_cast<int32_t>(id));
  // Decoding from a few tokens back keeps what a tokenizer does at the seam (spaces, byte runs)
  // identical to decoding everything.
  const std::string before = decode(prefix_, read_), now = decode(prefix_, ids_.size());
  if (now.size() <= before.size() || ends_incomplete(now)) return false;
  const size_t old_size = text_.size();
  text_ += now.substr(before.size());
  prefix_ = read_;
  read_ = ids_.size();
  if (!stops_) return false;
  size_t cut = std::string::npos;
  for (const std::string& s : *stops_) {
    const size_t from = old_size >= s.size() ? old_size - s.size() + 1 : 0;
    cut = std::min(cut, text_.find(s, from));
  }
  if (cut == std::string::npos) return false;
  text_.resize(cut);
  released_ = std::min(released_, cut);
  stopped_ = true;
  return true;
}

std::string TextStream::take(bool final) {
  if (!tok_) return {};
  if (final && !stopped_ && read_ < ids_.size()) {
    text_ += decode(prefix_, ids_.size()).substr(decode(prefix_, read_).size());
    read_ = prefix_ = ids_.size();
  }
  size_t upto = text_.size();
  if (!final && !stopped_ && stops_) {
    // Hold back the longest tail that a stop string starts with.
    for (const std::string& s : *stops_)
      for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k)
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          upto = std::min(upto, text_.size() - k);
          break;
        }
  }
  upto = std::max(upto, released_);
  std::string out = text_.substr(released_, upto - released_);
  released_ = upto;
  return out;
}

}  // namespace g4::gen

// The text of one generated sample, released as it grows: tokens are decoded incrementally (only
// the last few are decoded again each time), a character whose bytes are not all there yet is
// held back, and so is any tail that may still become a stop string. A matched stop string ends
// the text before it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace g4::gen {

class TextStream {
 public:
  TextStream(const io::Tokenizer* tok, const std::vector<std::string>* stop_strings)
      : tok_(tok), stops_(stop_strings) {}

  // Adds a token of the text; returns true when a stop string is now complete (the text is cut
  // before it, and later tokens are ignored).
  bool push(int64_t id);
  // Text not released yet that may be released now. `final`: the sample ended, release all.
  std::string take(bool final);
  const std::string& text() const { return text_; }

 private:
  std::string decode(size_t begin, size_t end) const;

  const io::Tokenizer* tok_;
  const std::vector<std::string>* stops_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // ids_[prefix_, read_) were decoded last time as the context
  std::string text_;
  size_t released_ = 0;
  bool stopped_ = false;
};

}  // namespace g4::gen

// UTF-8 checks shared by the tokenizers: Hugging Face works on Unicode strings, so text that is
// not valid UTF-8 is refused with its byte offset rather than tokenized some arbitrary way.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace g4::io {

// Byte length of the UTF-8 character starting at s[i]; 0 if the bytes there are not valid UTF-8
// (truncated, overlong, a surrogate or beyond U+10FFFF).
inline size_t utf8_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[k])); };
  const uint32_t c = b(i);
  const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  uint32_t cp = n == 1 ? c : c & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};  // below these, the encoding is overlong
  if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// Byte offset of the first invalid UTF-8 sequence in s, or s.size() if it is all valid.
inline size_t utf8_error_offset(std::string_view s) {
  size_t i = 0;
  for (size_t n; i < s.size() && (n = utf8_length(s, i)) > 0;) i += n;
  return i;
}

}  // namespace g4::io

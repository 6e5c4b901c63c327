// Errors that reach the user. Every failure names what was wrong (file, key, shape) so that a
// bad checkpoint or config is diagnosed from the message alone.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace g4 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace g4

// G4_CHECK(cond, "message parts", value, ...) throws g4::Error with the parts concatenated.
#define G4_CHECK(cond, ...)                                        \
  do {                                                             \
    if (!(cond)) throw ::g4::Error(::g4::detail::concat(__VA_ARGS__)); \
  } while (0)

#define G4_FAIL(...) throw ::g4::Error(::g4::detail::concat(__VA_ARGS__))

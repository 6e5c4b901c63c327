#include "core/env.h"

#include <charconv>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace g4 {

int env_int(const char* name, int fallback, int lo, int hi, const char* unset) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  const std::string v = env;
  int x = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  G4_CHECK(ec == std::errc() && end == v.data() + v.size() && x >= lo && x <= hi, name, " must be ",
           lo + 1 == hi ? std::to_string(lo) + " or " + std::to_string(hi)
                        : std::to_string(lo) + " to " + std::to_string(hi),
           " (unset: ", unset, "), got '", v, "'");
  return x;
}

}  // namespace g4

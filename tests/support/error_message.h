// The message of the g4::Error a callable throws, for tests that check what an error says.
#pragma once
#include <string>

#include "core/error.h"

namespace g4::test {

// Runs `fn` and returns the g4::Error message it throws ("" when it throws none).
template <class Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace g4::test

#include "core/pdl.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace g4 {

namespace {
// -1 until the first pdl_enabled() reads G4_PDL.
std::atomic<int> pdl_state{-1};
}  // namespace

bool pdl_enabled() {
  if (const int state = pdl_state.load(std::memory_order_relaxed); state >= 0) return state == 1;
  const char* env = std::getenv("G4_PDL");
  const std::string v = env ? env : "";
  G4_CHECK(v.empty() || v == "0" || v == "1", "G4_PDL must be 0 or 1 (unset: 0), got '", v, "'");
  int expected = -1;
  pdl_state.compare_exchange_strong(expected, v == "1" ? 1 : 0);
  return pdl_state.load(std::memory_order_relaxed) == 1;
}

void set_pdl_enabled(bool on) { pdl_state.store(on ? 1 : 0, std::memory_order_relaxed); }

}  // namespace g4

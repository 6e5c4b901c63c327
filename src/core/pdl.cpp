#include "core/pdl.h"

#include <atomic>

#include "core/env.h"

namespace g4 {

namespace {
// -1 until the first pdl_enabled() reads G4_PDL.
std::atomic<int> pdl_state{-1};
}  // namespace

bool pdl_enabled() {
  if (const int state = pdl_state.load(std::memory_order_relaxed); state >= 0) return state == 1;
  int expected = -1;
  pdl_state.compare_exchange_strong(expected, env_int("G4_PDL", 0, 0, 1, "0"));
  return pdl_state.load(std::memory_order_relaxed) == 1;
}

void set_pdl_enabled(bool on) { pdl_state.store(on ? 1 : 0, std::memory_order_relaxed); }

}  // namespace g4

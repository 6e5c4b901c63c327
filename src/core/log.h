// Minimal logging to stderr: notes the user should see (skipped weights, fallbacks).
#pragma once
#include <iostream>

#include "core/error.h"

#define G4_LOG(...) (std::cerr << "[g4] " << ::g4::detail::concat(__VA_ARGS__) << "\n")

// Wall time for the timings g4 reports (steps, stages, requests): a monotonic clock, seconds as double.
#pragma once
#include <chrono>

namespace g4 {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace g4

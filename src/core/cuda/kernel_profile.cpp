// core/kernel_profile.h on CUPTI's activity API: CUPTI fills buffers we hand it with one record per
// kernel / copy / memset, and returns them when full or flushed; we fold them into totals by name.
#include "core/kernel_profile.h"

#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#include "core/device_memory.h"
#include "core/error.h"

namespace g4 {

namespace {

#define G4_CUPTI_CHECK(call)                                                              \
  do {                                                                                    \
    const CUptiResult r_ = (call);                                                        \
    if (r_ != CUPTI_SUCCESS) {                                                            \
      const char* s_ = nullptr;                                                           \
      cuptiGetResultString(r_, &s_);                                                      \
      G4_CHECK(false, "CUPTI: ", #call, " failed: ", s_ ? s_ : "unknown error");         \
    }                                                                                     \
  } while (0)

constexpr size_t kBufferBytes = 8 << 20;
constexpr size_t kAlign = 8;  // CUPTI wants 8-byte aligned buffers

struct Interval {
  uint64_t start, end;
};

struct State {
  std::mutex mu;
  bool running = false;
  std::map<std::string, KernelTime> by_name;
  std::vector<Interval> intervals;
  std::map<std::string, std::string> short_names;  // mangled -> readable
};
State& state() {
  static State s;
  return s;
}

// "void g4::ops::cuda::(anonymous namespace)::adamw_kernel<float>(...)" -> the part before the
// argument list, without the return type: readable in a table and still tells instantiations apart.
std::string readable(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string s = status == 0 && d ? d.get() : mangled;
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {  // cut at the first '(' outside template brackets
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0 && s.compare(i, 12, "(anonymous n") != 0) {
      s.resize(i);
      break;
    }
  }
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  for (const std::string anon : {"(anonymous namespace)::", "g4::ops::cuda::", "g4::cuda::"})
    for (size_t p; (p = s.find(anon)) != std::string::npos;) s.erase(p, anon.size());
  if (s.size() > 110) s = s.substr(0, 107) + "...";
  return s;
}

void add(State& st, const std::string& name, uint64_t start, uint64_t end) {
  KernelTime& k = st.by_name[name];
  k.name = name;
  ++k.count;
  k.total_ms += static_cast<double>(end - start) * 1e-6;
  st.intervals.push_back({start, end});
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = kBufferBytes;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kAlign, kBufferBytes));
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  State& st = state();
  {
    std::lock_guard<std::mutex> lock(st.mu);
    CUpti_Activity* rec = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
      switch (rec->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        case CUPTI_ACTIVITY_KIND_KERNEL: {
          const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
          auto it = st.short_names.find(k->name);
          if (it == st.short_names.end()) it = st.short_names.emplace(k->name, readable(k->name)).first;
          add(st, it->second, k->start, k->end);
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
          const char* kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH"};
          const unsigned kind = m->copyKind < 10 ? m->copyKind : 0;
          add(st, std::string("[memcpy ") + kinds[kind] + "]", m->start, m->end);
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
          add(st, "[memset]", m->start, m->end);
          break;
        }
        default:
          break;
      }
    }
  }
  std::free(buffer);
}

const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                     CUPTI_ACTIVITY_KIND_MEMSET};
uint64_t g_window_start = 0;

}  // namespace

void profile_start() {
  State& st = state();
  {
    std::lock_guard<std::mutex> lock(st.mu);
    G4_CHECK(!st.running, "profile_start: a kernel profile is already running");
    st.running = true;
    st.by_name.clear();
    st.intervals.clear();
  }
  device_synchronize();
  static const bool registered = [] {
    G4_CUPTI_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    return true;
  }();
  (void)registered;
  for (CUpti_ActivityKind k : kKinds) G4_CUPTI_CHECK(cuptiActivityEnable(k));
  G4_CUPTI_CHECK(cuptiGetTimestamp(&g_window_start));
}

KernelProfile profile_stop() {
  State& st = state();
  G4_CHECK(st.running, "profile_stop: no kernel profile is running");
  device_synchronize();
  uint64_t window_end = 0;
  G4_CUPTI_CHECK(cuptiGetTimestamp(&window_end));
  for (CUpti_ActivityKind k : kKinds) G4_CUPTI_CHECK(cuptiActivityDisable(k));
  G4_CUPTI_CHECK(cuptiActivityFlushAll(1));  // delivers every buffer to buffer_completed
  std::lock_guard<std::mutex> lock(st.mu);
  st.running = false;
  KernelProfile p;
  p.window_ms = static_cast<double>(window_end - g_window_start) * 1e-6;
  std::sort(st.intervals.begin(), st.intervals.end(), [](const Interval& a, const Interval& b) { return a.start < b.start; });
  uint64_t busy = 0, cover_end = 0;
  for (const Interval& i : st.intervals) {  // length of the union of the intervals
    const uint64_t s = std::max(i.start, cover_end);
    if (i.end > s) busy += i.end - s;
    cover_end = std::max(cover_end, i.end);
  }
  p.busy_ms = static_cast<double>(busy) * 1e-6;
  for (auto& [name, k] : st.by_name) p.kernels.push_back(k);
  std::sort(p.kernels.begin(), p.kernels.end(), [](const KernelTime& a, const KernelTime& b) { return a.total_ms > b.total_ms; });
  return p;
}

}  // namespace g4

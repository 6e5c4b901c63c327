#include "core/gpu_peaks.h"

#include <array>
#include <utility>

namespace g4 {

double datasheet_dense_bf16_tflops(const std::string& name) {
  const auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  // Most specific first: "H100 PCIe", "H200 NVL" and "GH200" must not fall into the SXM entries.
  static const std::array<std::pair<const char*, double>, 10> table{{
      {"H100 PCIe", 756},
      {"H100 NVL", 835},
      {"H200 NVL", 835},
      {"GH200", 989},
      {"H100", 989},  // SXM5 (the runtime reports e.g. "NVIDIA H100 80GB HBM3")
      {"H200", 989},  // SXM
      {"H800", 989},
      {"B200", 2250},
      {"A100", 312},
      {"L40S", 362},
  }};
  for (const auto& [key, tflops] : table)
    if (has(key)) return tflops;
  return 0;
}

}  // namespace g4

#include "core/blas_kernels.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace g4 {

void select_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's (or our re-execution's) choice
  const char* core = openblas_get_corename();
  const std::string name = core ? core : "";
  // OpenBLAS's generic fallbacks for x86-64; a recognised core keeps its own choice.
  if (name != "Prescott" && name != "Core2" && name != "Nehalem" && name != "Katmai" && name != "Northwood") return;
  const char* want = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    want = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    want = "Haswell";
  if (want == nullptr) return;
  setenv("OPENBLAS_CORETYPE", want, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run on with the generic kernels
}

}  // namespace g4

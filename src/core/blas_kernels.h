// OpenBLAS chooses its kernels from the CPU model when it loads. On CPUs it does not recognise
// (virtual machines that report a generic "Intel Xeon Processor", newer models than the library)
// it falls back to its oldest SSE3 kernels ("Prescott"): several times slower, and with another
// summation order than the AVX kernels the reference fixtures were checked against.
#pragma once

namespace g4 {

// When OpenBLAS fell back to such a generic core although the CPU has AVX-512 or AVX2, and the
// user did not choose one (OPENBLAS_CORETYPE unset), re-executes this program with
// OPENBLAS_CORETYPE naming the kernels the CPU supports (SkylakeX or Haswell). Call first thing in
// main(); returns normally when nothing needs to change (or the re-execution is impossible).
void select_blas_kernels(char** argv);

}  // namespace g4

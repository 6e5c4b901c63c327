#include <gtest/gtest.h>

#include "core/blas_kernels.h"

int main(int argc, char** argv) {
  g4::select_blas_kernels(argv);  // the CPU references run on the CPU's own kernels, as in g4
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

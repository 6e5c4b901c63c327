#include "core/gpu_peaks.h"

#include <gtest/gtest.h>

namespace g4 {
namespace {

// Names as cudaDeviceProp::name reports them.
TEST(GpuPeaks, DatasheetDenseBf16ByDeviceName) {
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA H100 80GB HBM3"), 989);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA H200"), 989);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA GH200 480GB"), 989);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA H100 PCIe"), 756);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA H100 NVL"), 835);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA H200 NVL"), 835);
  EXPECT_EQ(datasheet_dense_bf16_tflops("NVIDIA A100-SXM4-80GB"), 312);
  EXPECT_EQ(datasheet_dense_bf16_tflops("Tesla T4"), 0);  // unknown: the bench asks for --peak-tflops
  EXPECT_EQ(datasheet_dense_bf16_tflops(""), 0);
}

}  // namespace
}  // namespace g4

// GPU tensors: allocation, copies both ways, conversion, and the caching allocator's statistics.
#include "gpu_test.h"

namespace g4 {
namespace {

TEST(GpuTensor, RoundTripAndConvert) {
  G4_REQUIRE_GPU();
  const Tensor x = randn({3, 257}, 11);
  const Tensor g = x.to(Device::CUDA);
  EXPECT_EQ(g.device(), Device::CUDA);
  EXPECT_EQ(g.describe(), "f32[3, 257]@cuda");
  test::expect_close_scaled(g, x, 0, 0, "f32 round trip");
  test::expect_close_scaled(g.to(DType::BF16), x.to(DType::BF16), 0, 0, "bf16 conversion on the GPU");
  const Tensor ids = randint({5, 7}, 3, 0, 1000, DType::I64);
  const Tensor ids32 = ids.to(Device::CUDA).to(DType::I32).to(Device::CPU);
  for (int64_t i = 0; i < ids.numel(); ++i) EXPECT_EQ(element_as_int(ids32, i), element_as_int(ids, i));
  Tensor z = Tensor::zeros({4, 4}, DType::F32, Device::CUDA);
  EXPECT_EQ(z.to(Device::CPU).to(DType::F64).data<double>()[5], 0.0);
  Tensor f = Tensor::empty({2}, DType::BF16, Device::CUDA);
  f.fill(1.5);
  EXPECT_EQ(f.to(DType::F32).to(Device::CPU).data<float>()[1], 1.5f);
  EXPECT_EQ(g.slice0(1, 1).to(Device::CPU).data<float>()[3], x.data<float>()[257 + 3]);
}

TEST(GpuTensor, CachingAllocatorReusesBlocks) {
  G4_REQUIRE_GPU();
  reset_device_memory_peak();
  const DeviceMemoryStats before = device_memory_stats();
  { Tensor a = Tensor::empty({1 << 20}, DType::F32, Device::CUDA); }
  const DeviceMemoryStats mid = device_memory_stats();
  { Tensor b = Tensor::empty({1 << 20}, DType::F32, Device::CUDA); }
  const DeviceMemoryStats after = device_memory_stats();
  EXPECT_EQ(after.reserved, mid.reserved) << "the second allocation should reuse the first block";
  EXPECT_EQ(after.current, before.current);
  EXPECT_GE(after.peak - before.current, int64_t{4} << 20);
}

}  // namespace
}  // namespace g4

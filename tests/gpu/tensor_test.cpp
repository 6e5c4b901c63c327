// GPU tensors: allocation, copies both ways, conversion, the caching allocator's statistics, and
// work queued side by side on two streams (run_side_by_side).
#include <stdexcept>
#include <string>
#include <vector>

#include "generate/cuda/step_graph.h"
#include "gpu_test.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"

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

// Conversions run four elements a thread where both pointers are aligned to four (the tail one by
// one), and one element a thread where they are not: both give the same values, every pair of types.
TEST(GpuTensor, ConversionsInFoursEqualOneByOne) {
  G4_REQUIRE_GPU();
  const int64_t n = 1027;  // not a multiple of four: a tail
  std::vector<float> values(static_cast<size_t>(n));
  const Tensor r = randn({n}, 21);
  for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = 40.f * r.data<float>()[i];
  const Tensor host = Tensor::from_vector<float>(values, {n});
  const DType types[] = {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64};
  for (const DType from : types)
    for (const DType to : types) {
      const Tensor gpu = host.to(from).to(Device::CUDA);
      const Tensor fours = gpu.to(to).slice0(1, n - 1).to(Device::CPU);   // aligned: in fours
      const Tensor single = gpu.slice0(1, n - 1).to(to).to(Device::CPU);  // a view one element in
      const std::string what = std::string(dtype_name(from)) + " -> " + dtype_name(to);
      ASSERT_EQ(fours.dtype(), to) << what;
      for (int64_t i = 0; i < n - 1; ++i)
        ASSERT_EQ(element_as_double(fours, i), element_as_double(single, i)) << what << " at " << i;
      if (from == DType::F32 && (to == DType::BF16 || to == DType::F64)) {
        const Tensor want = host.slice0(1, n - 1).to(to);  // the CPU's conversion
        for (int64_t i = 0; i < n - 1; ++i) ASSERT_EQ(element_as_double(fours, i), element_as_double(want, i)) << what;
      }
    }
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

// Two chains of GEMMs and elementwise ops with temporaries (a large GEMM on the side, so that it is
// still running while the main work is queued).
struct SideBySideInputs {
  Tensor x1 = test::gpu_bf16(randn({512, 1024}, 21)), w1 = test::gpu_bf16(randn({2048, 1024}, 22, DType::F32, 0.03));
  Tensor x2 = test::gpu_bf16(randn({4, 1024}, 23)), w2 = test::gpu_bf16(randn({1024, 1024}, 24, DType::F32, 0.03));
  Tensor side() const { return ops::gelu_tanh(ops::linear(ops::gelu_tanh(ops::linear(x1, w1)), w1.reshape({1024, 2048}))); }
  Tensor main() const { return ops::scale(ops::linear(ops::gelu_tanh(ops::linear(x2, w2)), w2), 0.5); }
};

TEST(GpuSideBySide, EqualsTheSequentialWorkAndHoldsFreedBlocksUntilTheJoin) {
  G4_REQUIRE_GPU();
  const SideBySideInputs in;
  const Tensor want1 = in.side(), want2 = in.main();
  Tensor got1, got2;
  const void* freed_on_side = nullptr;
  const void* taken_by_main = nullptr;
  run_side_by_side(
      [&] {
        Tensor scratch = Tensor::empty({3, 1000}, DType::F32, Device::CUDA);
        freed_on_side = scratch.raw();
        got1 = in.side();
      },
      [&] {
        // The block the side work dropped may still be in use there: it must not come back yet.
        const Tensor again = Tensor::empty({3, 1000}, DType::F32, Device::CUDA);
        taken_by_main = again.raw();
        got2 = in.main();
      });
  EXPECT_NE(taken_by_main, freed_on_side);
  test::expect_close_scaled(got1, want1, 0, 0, "side work");
  test::expect_close_scaled(got2, want2, 0, 0, "main work");
  // After the join both blocks are free again (the free list hands out the last freed first).
  const Tensor later = Tensor::empty({3, 1000}, DType::F32, Device::CUDA);
  EXPECT_TRUE(later.raw() == freed_on_side || later.raw() == taken_by_main);
}

TEST(GpuSideBySide, AnErrorStillJoinsTheStreams) {
  G4_REQUIRE_GPU();
  const SideBySideInputs in;
  const Tensor want = in.side();
  Tensor got;
  EXPECT_THROW(run_side_by_side([&] { got = in.side(); }, [] { throw std::runtime_error("main failed"); }),
               std::runtime_error);
  // The compute stream waited for the side work, and frees are no longer held: the same size comes back.
  test::expect_close_scaled(got, want, 0, 0, "side work before the error");
  const void* first = Tensor::empty({7, 300}, DType::F32, Device::CUDA).raw();
  EXPECT_EQ(Tensor::empty({7, 300}, DType::F32, Device::CUDA).raw(), first);
}

TEST(GpuSideBySide, CapturedInACudaGraph) {
  G4_REQUIRE_GPU();
  const SideBySideInputs in;
  const Tensor want = ops::add(ops::narrow(in.side(), 0, 0, 4), in.main());
  const auto body = [&] {
    Tensor a, b;
    run_side_by_side([&] { a = in.side(); }, [&] { b = in.main(); });
    return ops::add(ops::narrow(a, 0, 0, 4), b);
  };
  (void)body();  // lazy initialisations outside the capture
  DevicePool pool;
  gen::cuda::StepGraph graph(body, pool);
  for (int replay = 0; replay < 3; ++replay) test::expect_close_scaled(graph.replay(), want, 0, 0, "graph replay");
}

}  // namespace
}  // namespace g4

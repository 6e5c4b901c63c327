// Dense GEMMs on the GPU (cuBLASLt) against the CPU reference: f32 with tight tolerances (fp32
// compute, no TF32), bf16 with a tolerance for the bf16 rounding of the result.
#include "gpu_test.h"
#include "ops/cuda/gemv.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::gpu_f32;
using test::randn_bf16_exact;

// f32: products of bf16-exact inputs are exact in fp32; only the summation order differs.
using test::kF32Rtol;
// bf16 outputs: one rounding (2^-9 relative) plus fp32 sums; relative to the largest |value|.
constexpr double kBf16Rtol = 8e-3;

Shape mat_shape(bool trans, int64_t rows, int64_t cols) { return trans ? Shape{cols, rows} : Shape{rows, cols}; }

TEST(GpuMatmul, F32AllTransposesMatchTheCpu) {
  G4_REQUIRE_GPU();
  const int64_t m = 37, k = 53, n = 29;  // nothing a multiple of a tile
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const Tensor a = randn_bf16_exact(mat_shape(ta, m, k), 10 + ta);
      const Tensor b = randn_bf16_exact(mat_shape(tb, k, n), 20 + tb);
      const Tensor want = ops::matmul(a, b, ta, tb);
      const Tensor got = ops::matmul(gpu_f32(a), gpu_f32(b), ta, tb);
      EXPECT_EQ(got.device(), Device::CUDA);
      EXPECT_EQ(got.dtype(), DType::F32);
      expect_close_scaled(got, want, 0, kF32Rtol, "f32 matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
    }
}

TEST(GpuMatmul, Bf16AllTransposesMatchTheCpu) {
  G4_REQUIRE_GPU();
  const int64_t m = 300, k = 1000, n = 129;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const Tensor a = randn_bf16_exact(mat_shape(ta, m, k), 30 + ta);
      const Tensor b = randn_bf16_exact(mat_shape(tb, k, n), 40 + tb);
      const Tensor want = ops::matmul(a, b, ta, tb);
      const Tensor got = ops::matmul(gpu_bf16(a), gpu_bf16(b), ta, tb);
      EXPECT_EQ(got.dtype(), DType::BF16);
      expect_close_scaled(got, want, 0, kBf16Rtol, "bf16 matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
    }
}

TEST(GpuMatmul, LeadingDimsFlattenAndDenseModelShape) {
  G4_REQUIRE_GPU();
  const Tensor a = randn_bf16_exact({2, 5, 24}, 1);
  const Tensor b = randn_bf16_exact({24, 7}, 2);
  const Tensor got = ops::matmul(gpu_f32(a), gpu_f32(b));
  EXPECT_EQ(got.shape(), Shape({2, 5, 7}));
  expect_close_scaled(got, ops::matmul(a, b), 0, kF32Rtol, "f32 [2,5,24] x [24,7]");
  // A Gemma 4 26B-A4B-sized product (tokens x hidden times hidden x 2112).
  const Tensor x = randn_bf16_exact({512, 2816}, 3, 0.5);
  const Tensor w = randn_bf16_exact({2816, 2112}, 4, 0.05);
  expect_close_scaled(ops::matmul(gpu_bf16(x), gpu_bf16(w)), ops::matmul(x, w), 0, kBf16Rtol,
                      "bf16 [512,2816] x [2816,2112]");
}

TEST(GpuMatmul, AccumulatesBf16ProductsIntoF32) {
  G4_REQUIRE_GPU();
  // A weight-gradient accumulation: C[in, out] += 0.5 * xᵀ · dy with x [rows, in], dy [rows, out].
  const Tensor x = randn_bf16_exact({77, 45}, 5);
  const Tensor dy = randn_bf16_exact({77, 31}, 6);
  const Tensor c0 = randn_bf16_exact({45, 31}, 7);
  Tensor want = c0.clone();
  ops::matmul_acc(x, dy, true, false, want, 0.5);
  Tensor got = gpu_f32(c0);
  ops::matmul_acc(gpu_bf16(x), gpu_bf16(dy), true, false, got, 0.5);
  EXPECT_EQ(got.dtype(), DType::F32);
  expect_close_scaled(got, want, 0, kF32Rtol, "matmul_acc bf16 -> f32 C");
  Tensor got32 = gpu_f32(c0);
  ops::matmul_acc(gpu_f32(x), gpu_f32(dy), true, false, got32, 0.5);
  expect_close_scaled(got32, want, 0, kF32Rtol, "matmul_acc f32");
  // beta 0 overwrites: C's old contents (NaN here) are ignored.
  Tensor fresh = Tensor::full(c0.shape(), std::nan(""), DType::F32, Device::CUDA);
  ops::matmul_acc(gpu_bf16(x), gpu_bf16(dy), true, false, fresh, 0.5, 0.0);
  expect_close_scaled(fresh, ops::scale(ops::matmul(x, dy, true, false), 0.5), 0, kF32Rtol, "matmul_acc beta 0");
  Tensor got16 = gpu_bf16(c0);
  ops::matmul_acc(gpu_bf16(x), gpu_bf16(dy), true, false, got16, 0.5);
  expect_close_scaled(got16, want, 0, kBf16Rtol, "matmul_acc bf16 C");
  // A C carrying leading dims, B transposed.
  const Tensor a = randn_bf16_exact({3, 4, 16}, 8);
  const Tensor b = randn_bf16_exact({9, 16}, 9);
  const Tensor c3 = randn_bf16_exact({3, 4, 9}, 10);
  Tensor want3 = c3.clone();
  ops::matmul_acc(a, b, false, true, want3, -1.0);
  Tensor got3 = gpu_f32(c3);
  ops::matmul_acc(gpu_f32(a), gpu_f32(b), false, true, got3, -1.0);
  expect_close_scaled(got3, want3, 0, kF32Rtol, "matmul_acc [3,4,16] x [9,16]^T");
}

TEST(GpuMatmul, LinearAndItsGradients) {
  G4_REQUIRE_GPU();
  const Tensor x = randn_bf16_exact({2, 13, 40}, 11);
  const Tensor w = randn_bf16_exact({24, 40}, 12);
  const Tensor dy = randn_bf16_exact({2, 13, 24}, 13);
  expect_close_scaled(ops::linear(gpu_f32(x), gpu_f32(w)), ops::linear(x, w), 0, kF32Rtol, "linear f32");
  expect_close_scaled(ops::linear_backward_input(gpu_f32(dy), gpu_f32(w)), ops::linear_backward_input(dy, w), 0,
                      kF32Rtol, "linear_backward_input f32");
  expect_close_scaled(ops::linear_backward_weight(gpu_f32(dy), gpu_f32(x)), ops::linear_backward_weight(dy, x), 0,
                      kF32Rtol, "linear_backward_weight f32");
  expect_close_scaled(ops::linear(gpu_bf16(x), gpu_bf16(w)), ops::linear(x, w), 0, kBf16Rtol, "linear bf16");
  expect_close_scaled(ops::linear_backward_input(gpu_bf16(dy), gpu_bf16(w)), ops::linear_backward_input(dy, w), 0,
                      kBf16Rtol, "linear_backward_input bf16");
  expect_close_scaled(ops::linear_backward_weight(gpu_bf16(dy), gpu_bf16(x)), ops::linear_backward_weight(dy, x), 0,
                      kBf16Rtol, "linear_backward_weight bf16");
  // A single vector.
  const Tensor v = randn_bf16_exact({40}, 14);
  const Tensor got = ops::linear(gpu_f32(v), gpu_f32(w));
  EXPECT_EQ(got.shape(), Shape({24}));
  expect_close_scaled(got, ops::linear(v, w), 0, kF32Rtol, "linear of a vector");
}

TEST(GpuMatmul, EmptyInnerDimensionGivesZeros) {
  G4_REQUIRE_GPU();
  const Tensor a = Tensor::zeros({5, 0}, DType::F32);
  const Tensor b = Tensor::zeros({0, 3}, DType::F32);
  expect_close_scaled(ops::matmul(gpu_f32(a), gpu_f32(b)), Tensor::zeros({5, 3}, DType::F32), 0, 0, "k = 0");
}

TEST(GpuMatmul, BadArgumentsNameTheOp) {
  G4_REQUIRE_GPU();
  const Tensor a = gpu_f32(randn_bf16_exact({4, 6}, 1));
  const Tensor b16 = gpu_bf16(randn_bf16_exact({6, 3}, 2));
  EXPECT_THROW(ops::matmul(a, b16), Error);  // mixed dtypes
  EXPECT_THROW(ops::matmul(a, gpu_f32(randn_bf16_exact({5, 3}, 3))), Error);  // inner dims
  EXPECT_THROW(ops::matmul(a, randn_bf16_exact({6, 3}, 4)), Error);  // B on the CPU
  EXPECT_THROW(ops::matmul(a.to(DType::F64), gpu_f32(randn_bf16_exact({6, 3}, 5)).to(DType::F64)), Error);
  try {
    ops::matmul(a, b16);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("matmul"), std::string::npos) << e.what();
  }
}

// The decode-step GEMV (ops/cuda/gemv.h) against the CPU: 1 to 8 rows, shapes that leave a partial
// block of W's rows and a partial step of k, bf16 and f32 outputs, and y = alpha·x·Wᵀ + beta·y.
TEST(GpuGemv, FewRowsMatchTheCpu) {
  G4_REQUIRE_GPU();
  struct Case {
    int64_t n, k;
  };
  uint64_t seed = 900;
  for (const Case c : {Case{1, 8}, Case{37, 64}, Case{300, 1000}, Case{2048, 2816}, Case{5, 4104}})
    for (int64_t m = 1; m <= ops::cuda::kGemvMaxRows; ++m)
      for (const DType out : {DType::BF16, DType::F32})
        for (const bool accumulate : {false, true}) {
          const Tensor x = randn_bf16_exact({m, c.k}, ++seed), w = randn_bf16_exact({c.n, c.k}, ++seed);
          const Tensor y0 = randn_bf16_exact({m, c.n}, ++seed);
          const float alpha = accumulate ? 0.5f : 1.0f, beta = accumulate ? -0.75f : 0.0f;
          const Tensor product = ops::matmul(x, w, false, true);
          Tensor want = Tensor::empty({m, c.n}, DType::F32);
          for (int64_t i = 0; i < want.numel(); ++i)
            want.data<float>()[i] = alpha * product.data<float>()[i] + beta * y0.data<float>()[i];
          const Tensor xg = gpu_bf16(x), wg = gpu_bf16(w);
          Tensor y = y0.to(out).to(Device::CUDA);
          ops::cuda::gemv_rowmajor(m, c.n, c.k, alpha, xg.raw(), c.k, wg.raw(), c.k, beta, y.raw(), c.n, out);
          expect_close_scaled(y, want, 0, out == DType::F32 ? kF32Rtol : kBf16Rtol,
                              "gemv m=" + std::to_string(m) + " n=" + std::to_string(c.n) + " k=" +
                                  std::to_string(c.k) + " " + dtype_name(out) + (accumulate ? " accumulate" : ""));
        }
  // What it does not take goes to cuBLASLt: odd k, misaligned rows, f32 inputs, more than 8 rows.
  const Tensor a = gpu_bf16(randn_bf16_exact({2, 24}, 1));
  EXPECT_TRUE(ops::cuda::gemv_fits(2, 24, a.raw(), 24, a.raw(), 24, DType::BF16, DType::BF16));
  EXPECT_FALSE(ops::cuda::gemv_fits(2, 20, a.raw(), 20, a.raw(), 20, DType::BF16, DType::BF16));
  EXPECT_FALSE(ops::cuda::gemv_fits(1, 16, static_cast<const char*>(a.raw()) + 2, 24, a.raw(), 24, DType::BF16,
                                    DType::BF16));
  EXPECT_FALSE(ops::cuda::gemv_fits(2, 24, a.raw(), 24, a.raw(), 24, DType::F32, DType::F32));
  EXPECT_FALSE(ops::cuda::gemv_fits(9, 24, a.raw(), 24, a.raw(), 24, DType::BF16, DType::BF16));
}

}  // namespace
}  // namespace g4

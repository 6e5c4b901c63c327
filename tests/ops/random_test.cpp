#include <cmath>

#include "core/philox.h"
#include "core/random.h"
#include "gradcheck.h"

namespace g4 {
namespace {

TEST(Random, ReproducibleAndRoughlyNormal) {
  const Tensor a = randn({4096}, 7, DType::F64), b = randn({4096}, 7, DType::F64), c = randn({4096}, 8, DType::F64);
  test::expect_equal(a, b);
  double mean = 0, var = 0, diff = 0;
  for (int64_t i = 0; i < 4096; ++i) {
    mean += a.data<double>()[i] / 4096;
    diff += std::abs(a.data<double>()[i] - c.data<double>()[i]);
  }
  for (int64_t i = 0; i < 4096; ++i) var += std::pow(a.data<double>()[i] - mean, 2) / 4096;
  EXPECT_NEAR(mean, 0.0, 0.1);
  EXPECT_NEAR(var, 1.0, 0.1);
  EXPECT_GT(diff, 1.0);  // another seed, other numbers
  // f32 holds the same draws rounded.
  test::expect_close(randn({16}, 7, DType::F32, 2.0), test::to_f32({randn({16}, 7, DType::F64, 2.0)})[0], 0);
}

// The weights' initialiser fills large tensors on several threads: every element is still the draw
// of its own index, in each dtype (f64 and bf16 hold the f32 value).
TEST(Random, PhiloxFillIsTheDrawOfEachIndex) {
  const int64_t n = 300001;  // past the threading threshold, and odd
  Tensor f32 = Tensor::empty({n}, DType::F32), f64 = Tensor::empty({n}, DType::F64), b16 = Tensor::empty({n}, DType::BF16);
  for (Tensor* t : {&f32, &f64, &b16}) fill_philox_normal(*t, 11, 3, 0.02);
  for (int64_t i = 0; i < n; ++i) {
    const float want = static_cast<float>(0.02 * philox_normal(11, 3, static_cast<uint64_t>(i)));
    ASSERT_EQ(f32.data<float>()[i], want) << i;
    ASSERT_EQ(f64.data<double>()[i], static_cast<double>(want)) << i;
    ASSERT_EQ(b16.data<bf16>()[i].bits, bf16::from_float(want).bits) << i;
  }
}

TEST(Random, UniformAndIntRanges) {
  const Tensor u = rand_uniform({1000}, 1, -2.0, 3.0, DType::F64);
  const Tensor n = randint({1000}, 2, -5, 5, DType::I32);
  for (int64_t i = 0; i < 1000; ++i) {
    EXPECT_GT(u.data<double>()[i], -2.0);
    EXPECT_LE(u.data<double>()[i], 3.0);
    EXPECT_GE(n.data<int32_t>()[i], -5);
    EXPECT_LT(n.data<int32_t>()[i], 5);
  }
  EXPECT_THROW(randint({2}, 1, 3, 3), Error);
  EXPECT_THROW(randn({2}, 1, DType::I32), Error);
}

}  // namespace
}  // namespace g4

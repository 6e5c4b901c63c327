#include "gradcheck.h"
#include "ops/elementwise.h"

namespace g4 {
namespace {

using test::expect_equal;
using test::expect_error;
using test::expect_gradients;

TEST(ShapeOps, NarrowEveryDimension) {
  const Tensor x = randn({3, 4, 5}, 1, DType::F64);
  const Tensor y0 = ops::narrow(x, 0, 1, 2), y1 = ops::narrow(x, 1, 1, 2), y2 = ops::narrow(x, -1, 2, 3);
  EXPECT_EQ(y2.shape(), Shape({3, 4, 3}));
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t c = 0; c < 5; ++c) {
        const double v = x.data<double>()[(a * 4 + b) * 5 + c];
        if (a >= 1 && a < 3) {
          EXPECT_EQ(y0.data<double>()[((a - 1) * 4 + b) * 5 + c], v);
        }
        if (b >= 1 && b < 3) {
          EXPECT_EQ(y1.data<double>()[(a * 2 + b - 1) * 5 + c], v);
        }
        if (c >= 2) {
          EXPECT_EQ(y2.data<double>()[(a * 4 + b) * 3 + c - 2], v);
        }
      }
}

TEST(ShapeOps, NarrowGradientAndConcatRoundTrip) {
  const Tensor x = randn({2, 6, 3}, 2, DType::F64);
  const auto f = [](const std::vector<Tensor>& in) { return ops::narrow(in[0], 1, 2, 3); };
  expect_gradients(f, {x}, 3, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::narrow_backward(dy, x.shape(), 1, 2)};
  });
  // Cutting along a dimension and concatenating the pieces gives back the input (any dtype).
  const Tensor ids = randint({2, 6, 3}, 4, 0, 100, DType::I32);
  expect_equal(ops::concat({ops::narrow(ids, 1, 0, 1), ops::narrow(ids, 1, 1, 4), ops::narrow(ids, 1, 5, 1)}, 1), ids);
  expect_equal(ops::concat({ops::narrow(x, 2, 0, 2), ops::narrow(x, 2, 2, 1)}, -1), x);
}

TEST(ShapeOps, Errors) {
  const Tensor x = randn({2, 3}, 1);
  expect_error([&] { ops::narrow(x, 1, 2, 2); }, {"narrow", "f32[2, 3]"});
  expect_error([&] { ops::narrow(x, 2, 0, 1); }, {"narrow", "[2, 3]"});
  expect_error([&] { ops::concat({x, randn({3, 3}, 2)}, 1); }, {"concat", "f32[3, 3]", "f32[2, 3]"});
  expect_error([&] { ops::narrow_backward(x, {2, 2}, 1, 0); }, {"narrow_backward", "f32[2, 3]", "[2, 2]"});
}

}  // namespace
}  // namespace g4

#include "ops/rope.h"

#include <cmath>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;
using test::expect_gradients;

// Gemma-style inverse frequencies base^(-2i/d), with the last `zeros` entries 0 (partial rotary).
Tensor inv_freq(int64_t d, int64_t zeros = 0) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) f[i] = i < d / 2 - zeros ? std::pow(10000.0f, -2.0f * i / d) : 0.0f;
  return Tensor::from_vector(f, {d / 2});
}

// Hugging Face: emb = cat(freqs, freqs); out = x * cos(emb) + rotate_half(x) * sin(emb), with
// rotate_half(x) = cat(-x2, x1) and the angle table computed in f32.
Tensor naive_rope(const Tensor& x, const Tensor& pos, const Tensor& freq) {
  const int64_t b = x.size(0), s = x.size(1), h = x.size(2), d = x.size(3);
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t si = 0; si < s; ++si)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t c = 0; c < d; ++c) {
          const float angle = static_cast<float>(element_as_int(pos, bi * s + si)) * freq.data<float>()[c % (d / 2)];
          const int64_t base = ((bi * s + si) * h + hi) * d;
          const double xc = element_as_double(x, base + c);
          const double rot = c < d / 2 ? -element_as_double(x, base + c + d / 2) : element_as_double(x, base + c - d / 2);
          y.data<double>()[base + c] = xc * static_cast<double>(std::cos(angle)) + rot * static_cast<double>(std::sin(angle));
        }
  return y;
}

TEST(Rope, MatchesHuggingFaceFormula) {
  const Tensor x = randn({2, 5, 3, 16}, 1, DType::F64);
  const Tensor pos = randint({2, 5}, 2, 0, 4000, DType::I64);
  const Tensor freq = inv_freq(16, 2);
  const Tensor want = naive_rope(x, pos, freq);
  expect_close(ops::rope(x, pos, freq), want, 1e-15, "f64");
  expect_close(ops::rope(x.to(DType::F32), pos.to(DType::I32), freq), want, 1e-6, "f32, i32 positions");
}

TEST(Rope, ZeroFrequenciesLeavePairsUnchanged) {
  const Tensor x = randn({1, 4, 2, 8}, 3, DType::F64);
  const Tensor pos = randint({1, 4}, 4, 0, 100);
  const Tensor y = ops::rope(x, pos, inv_freq(8, 2));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = i % 8;
    if (c == 2 || c == 3 || c == 6 || c == 7) {
      EXPECT_EQ(y.data<double>()[i], x.data<double>()[i]);
    }
  }
}

TEST(Rope, GradientIsInverseRotation) {
  const Tensor x = randn({2, 3, 2, 8}, 5, DType::F64);
  const Tensor pos = randint({2, 3}, 6, 0, 50);
  const Tensor freq = inv_freq(8);
  const auto f = [&](const std::vector<Tensor>& in) { return ops::rope(in[0], pos, freq); };
  expect_gradients(f, {x}, 7, [&](const Tensor& dy) { return std::vector<Tensor>{ops::rope_backward(dy, pos, freq)}; });
  expect_close(ops::rope_backward(ops::rope(x, pos, freq), pos, freq), x, 1e-6, "round trip");
}

TEST(Rope, Errors) {
  const Tensor x = randn({1, 4, 2, 8}, 1);
  expect_error([&] { ops::rope(x, randint({1, 3}, 2, 0, 9), inv_freq(8)); }, {"rope", "[1, 3]", "f32[1, 4, 2, 8]"});
  expect_error([&] { ops::rope(x, randint({1, 4}, 2, 0, 9), inv_freq(6)); }, {"rope", "f32[3]"});
  expect_error([&] { ops::rope(x.reshape({4, 2, 8}), randint({1, 4}, 2, 0, 9), inv_freq(8)); }, {"rope", "f32[4, 2, 8]"});
}

}  // namespace
}  // namespace g4

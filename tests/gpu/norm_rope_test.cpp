// GPU rmsnorm (with and without weight, forward and backward) and rope (forward and backward,
// i32 and i64 positions) against the CPU reference, on bf16 and f32 GPU tensors with bf16-exact
// inputs. Tolerances relative to the reference's largest magnitude: bf16 1e-2 (one rounding of
// the output is 2^-9; rope's cos/sin are also rounded to bf16, as Hugging Face does), f32 1e-5
// (rmsnorm's weight gradient 1e-4: an fp32 sum over up to 1000 rows against the CPU's double).
#include <cmath>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::gpu_f32;
using test::randn_bf16_exact;

constexpr double kBf16Rtol = 1e-2;
using test::kF32Rtol;
constexpr double kEps = 1e-6;

// Odd widths (no 16-byte packs), head dims (several rows per block), hidden sizes, and a row too
// long to keep in registers (the uncached path, and the column-reduction weight gradient).
// Rows of 12288 and 16384 need more threads per row than the register-heavy cached backward
// kernel may launch with, so the plan has to fall back to the uncached kernel.
const std::vector<Shape> kNormShapes = {{3, 5, 257}, {16, 8, 256}, {4, 2816}, {6, 2560}, {2, 512}, {1000, 64},
                                        {3, 40000}, {2, 1},     {2, 12288},  {3, 16384}};

TEST(GpuNorm, RmsnormForwardBackward) {
  G4_REQUIRE_GPU();
  uint64_t seed = 1000;
  for (const Shape& s : kNormShapes) {
    const int64_t d = s.back();
    const Tensor x = randn_bf16_exact(s, ++seed, 2.0), dy = randn_bf16_exact(s, ++seed);
    const Tensor w = randn_bf16_exact({d}, ++seed, 0.5);
    for (bool weighted : {true, false}) {
      const Tensor wc = weighted ? w : Tensor();
      const std::string what = std::string(weighted ? "rmsnorm " : "rmsnorm (no weight) ") + shape_str(s);
      const Tensor ref = ops::rmsnorm(x, wc, kEps);
      Tensor dx_ref, dw_ref;
      ops::rmsnorm_backward(dy, x, wc, kEps, dx_ref, dw_ref);
      for (bool bf : {true, false}) {
        auto up = [&](const Tensor& t) { return t.defined() ? (bf ? gpu_bf16(t) : gpu_f32(t)) : Tensor(); };
        const double rtol = bf ? kBf16Rtol : kF32Rtol;
        const std::string tag = what + (bf ? " bf16" : " f32");
        const Tensor y = ops::rmsnorm(up(x), up(wc), kEps);
        EXPECT_EQ(y.dtype(), bf ? DType::BF16 : DType::F32);
        expect_close_scaled(y, ref, 1e-6, rtol, tag);
        Tensor dx, dw;
        ops::rmsnorm_backward(up(dy), up(x), up(wc), kEps, dx, dw);
        expect_close_scaled(dx, dx_ref, 1e-6, rtol, tag + " dx");
        if (weighted) {
          ASSERT_TRUE(dw.defined());
          EXPECT_EQ(dw.device(), Device::CUDA);
          expect_close_scaled(dw, dw_ref, 1e-5, bf ? kBf16Rtol : 1e-4, tag + " dw");
        }
      }
    }
  }
}

TEST(GpuNorm, BadArguments) {
  G4_REQUIRE_GPU();
  const Tensor x = gpu_bf16(randn_bf16_exact({2, 8}, 1));
  EXPECT_THROW(ops::rmsnorm(x, gpu_bf16(randn_bf16_exact({7}, 2)), kEps), Error);
  EXPECT_THROW(ops::rmsnorm(x, gpu_f32(randn_bf16_exact({8}, 2)), kEps), Error);
  EXPECT_THROW(ops::rmsnorm(x, randn_bf16_exact({8}, 2), kEps), Error);  // weight on the CPU
}

// inv_freq like Gemma's: 1 / base^(2i/d), with the last quarter zero (partial rotary: pairs left
// unrotated).
Tensor make_inv_freq(int64_t half) {
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[i] = i >= half - half / 4 && half >= 4 ? 0.f : static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / (2 * half)));
  return Tensor::from_vector(f, {half});
}

TEST(GpuRope, ForwardBackward) {
  G4_REQUIRE_GPU();
  struct Case {
    Shape x;
    int64_t max_pos;
  };
  // Head dims 256 and 512 (Gemma), an odd half (3: no packs), decoding (one token), and positions
  // large enough for sincosf's slow argument reduction.
  const std::vector<Case> cases = {{{2, 7, 3, 256}, 4096}, {{1, 5, 2, 512}, 200000}, {{3, 4, 5, 6}, 100},
                                   {{1, 1, 8, 256}, 131072}, {{2, 33, 1, 128}, 50}};
  uint64_t seed = 2000;
  for (const Case& c : cases) {
    const int64_t batch = c.x[0], seq = c.x[1], half = c.x[3] / 2;
    const Tensor x = randn_bf16_exact(c.x, ++seed), dy = randn_bf16_exact(c.x, ++seed);
    const Tensor inv_freq = make_inv_freq(half);
    const Tensor inv_freq_gpu = inv_freq.to(Device::CUDA);
    for (DType pdt : {DType::I64, DType::I32}) {
      const Tensor pos = randint({batch, seq}, ++seed, 0, c.max_pos, pdt);
      const Tensor pos_gpu = pos.to(Device::CUDA);
      const Tensor ref = ops::rope(x, pos, inv_freq);
      const Tensor back_ref = ops::rope_backward(dy, pos, inv_freq);
      const std::string what = "rope " + shape_str(c.x) + " pos<" + std::to_string(c.max_pos) + " " + dtype_name(pdt);
      expect_close_scaled(ops::rope(gpu_bf16(x), pos_gpu, inv_freq_gpu), ref, 1e-6, kBf16Rtol, what + " bf16");
      expect_close_scaled(ops::rope(gpu_f32(x), pos_gpu, inv_freq_gpu), ref, 1e-6, kF32Rtol, what + " f32");
      expect_close_scaled(ops::rope_backward(gpu_bf16(dy), pos_gpu, inv_freq_gpu), back_ref, 1e-6, kBf16Rtol,
                          what + " backward bf16");
      expect_close_scaled(ops::rope_backward(gpu_f32(dy), pos_gpu, inv_freq_gpu), back_ref, 1e-6, kF32Rtol,
                          what + " backward f32");
    }
  }
}

TEST(GpuRope, BadArguments) {
  G4_REQUIRE_GPU();
  const Tensor x = gpu_bf16(randn_bf16_exact({1, 2, 1, 8}, 1));
  const Tensor pos = randint({1, 2}, 2, 0, 10, DType::I64);
  const Tensor inv = make_inv_freq(4);
  try {
    ops::rope(x, pos, inv.to(Device::CUDA));  // positions on the CPU
    ADD_FAILURE() << "no error for positions on the CPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope: positions"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::rope(x, pos.to(Device::CUDA), inv), Error);  // inv_freq on the CPU
  EXPECT_THROW(ops::rope(x, pos.to(Device::CUDA), make_inv_freq(3).to(Device::CUDA)), Error);
  EXPECT_THROW(ops::rope(x, pos.to(Device::CUDA).to(DType::F32), inv.to(Device::CUDA)), Error);
}

}  // namespace
}  // namespace g4

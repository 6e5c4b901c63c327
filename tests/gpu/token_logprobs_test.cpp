// RL's token log-probs from the fused LM head (ag::linear_token_logprobs) on the GPU in bf16
// against the CPU's f32 run on the same bf16-exact numbers: log-probs, dx, and dw both into an
// fp32_grad weight's f32 gradient (accumulating over two backwards) and as a bf16 gradient.
#include <cmath>
#include <cstdio>

#include "autograd/functions.h"
#include "gpu_test.h"
#include "ops/matmul.h"

namespace g4 {
namespace {

struct Case {
  int64_t n, h, v;
  double softcap, temperature, w_std;
  int64_t chunk_rows;  // 0: the default (all rows in one chunk here)
};

TEST(GpuTokenLogprobs, Bf16MatchesCpuF32) {
  G4_REQUIRE_GPU();
  // 77 rows in chunks of 32 (uneven), a vectorised vocabulary; an odd one (the unvectorised path).
  for (const Case c : {Case{77, 128, 32000, 30.0, 0.7, 0.1, 32}, Case{50, 64, 1001, 0.0, 1.3, 0.2, 0}}) {
    const std::string tag = "V=" + std::to_string(c.v) + " T=" + std::to_string(c.temperature);
    const Tensor x = test::randn_bf16_exact({c.n, c.h}, 71, 1.0);
    const Tensor w = test::randn_bf16_exact({c.v, c.h}, 72, c.w_std);
    Tensor targets = randint({c.n}, 73, 0, c.v, DType::I64);
    targets.data<int64_t>()[2] = -100;
    targets.data<int64_t>()[c.n - 1] = -100;
    const Tensor dout = randn({c.n}, 74);

    ag::Var xc(x, true), wc(w, true);
    const ag::Var want = ag::linear_token_logprobs(xc, wc, targets, c.softcap, c.temperature, c.chunk_rows);
    ag::backward(want, dout);

    ag::Var xg(test::gpu_bf16(x), true), wg(test::gpu_bf16(w), true);
    wg.impl()->fp32_grad = true;
    const ag::Var got = ag::linear_token_logprobs(xg, wg, targets, c.softcap, c.temperature, c.chunk_rows);
    EXPECT_EQ(got.value().device(), Device::CUDA);
    EXPECT_EQ(got.value().dtype(), DType::F32);
    ag::backward(got, dout.to(Device::CUDA));

    // The GPU's logits are the bf16-rounded product (relative error <= 2^-8 each), and the
    // softcap is 1-Lipschitz and log-sum-exp moves by at most the largest change of its inputs,
    // so row r may be off by 2^-8 / T * (|logit of the target| + max |logit|), plus fp32 noise.
    const Tensor logits = ops::matmul(x, w, false, true);
    const Tensor lp = test::host_f32(got.value());
    double worst = 0;
    for (int64_t r = 0; r < c.n; ++r) {
      const int64_t t = targets.data<int64_t>()[r];
      if (t == -100) {
        EXPECT_EQ(lp.data<float>()[r], 0.0f) << tag << " ignored row " << r;
        continue;
      }
      double mx = 0;
      for (int64_t j = 0; j < c.v; ++j) mx = std::max(mx, std::fabs(static_cast<double>(logits.data<float>()[r * c.v + j])));
      const double bound = std::ldexp(1.0, -8) / c.temperature * (std::fabs(logits.data<float>()[r * c.v + t]) + mx) + 1e-4;
      const double err = std::fabs(lp.data<float>()[r] - want.value().data<float>()[r]);
      EXPECT_LE(err, bound) << tag << " row " << r << ": " << lp.data<float>()[r] << " vs "
                            << want.value().data<float>()[r];
      worst = std::max(worst, err / bound);
    }
    std::printf("  %-24s log-probs: worst error / bound %.3f\n", tag.c_str(), worst);

    // Gradients: one bf16 rounding of dlogits and of dx, fp32 accumulation; within 1% of the
    // largest element, as the fused loss's gradients are held to.
    EXPECT_EQ(xg.grad().dtype(), DType::BF16);
    test::expect_close_scaled(xg.grad(), xc.grad(), 0, 1e-2, tag + " dx");
    ASSERT_EQ(wg.grad().dtype(), DType::F32) << "an fp32_grad weight's gradient is f32";
    test::expect_close_scaled(wg.grad(), wc.grad(), 0, 1e-2, tag + " dw");

    // A second backward adds into the f32 gradient in place.
    const Tensor first = wg.grad().to(Device::CPU);
    ag::backward(ag::linear_token_logprobs(xg, wg, targets, c.softcap, c.temperature, c.chunk_rows),
                 dout.to(Device::CUDA));
    const Tensor twice = wg.grad().to(Device::CPU);
    double d = 0, n2 = 0;
    for (int64_t i = 0; i < first.numel(); ++i) {
      const double f = first.data<float>()[i], s = twice.data<float>()[i];
      d = std::max(d, std::fabs(s - 2 * f));
      n2 = std::max(n2, std::fabs(2 * f));
    }
    EXPECT_LE(d, 1e-5 * n2) << tag << " accumulated dw";

    // A bf16 weight without an f32 gradient gets a bf16 one, the f32 result rounded.
    ag::Var wb(test::gpu_bf16(w), true);
    ag::backward(ag::linear_token_logprobs(ag::Var(test::gpu_bf16(x)), wb, targets, c.softcap, c.temperature,
                                           c.chunk_rows),
                 dout.to(Device::CUDA));
    ASSERT_EQ(wb.grad().dtype(), DType::BF16);
    test::expect_close_scaled(wb.grad(), first, 0, 1e-2, tag + " bf16 dw");
  }
}

}  // namespace
}  // namespace g4

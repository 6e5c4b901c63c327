// Cross-entropy on the GPU against the CPU reference: Gemma's 262 144-token vocabulary, small and
// odd vocabularies (the unvectorised path), ignored rows, softcap on and off, temperatures other
// than 1 (RL's log-probs), in-place backward, and a bad target raised at the next synchronisation
// point.
#include <cmath>

#include "gpu_test.h"
#include "ops/device_checks.h"
#include "ops/loss.h"

namespace g4 {
namespace {

// Every element within rtol·|expected| + atol_scale·max|expected|: the bf16 gradient is rounded
// per element, so a tolerance relative to each element is the meaningful one.
void expect_close_each(const Tensor& actual_gpu, const Tensor& expected, double rtol, double atol_scale,
                       const std::string& what) {
  const Tensor a = test::host_f32(actual_gpu), e = expected.to(DType::F32);
  ASSERT_EQ(a.shape(), e.shape()) << what;
  double scale = 0;
  for (int64_t i = 0; i < e.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(e.data<float>()[i])));
  double worst = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < e.numel(); ++i) {
    const double x = a.data<float>()[i], y = e.data<float>()[i];
    const double ratio = std::fabs(x - y) / (rtol * std::fabs(y) + atol_scale * scale);
    if (!(ratio <= worst)) {
      worst = ratio;
      at = i;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": worst element " << at << " actual " << a.data<float>()[at] << " expected "
                        << e.data<float>()[at];
  std::printf("  %-40s worst error / tolerance %.3f (max|ref| %.3e)\n", what.c_str(), worst, scale);
}

struct Case {
  int64_t n, v;
  double softcap, std;
  double temperature = 1.0;
};

Tensor make_targets(int64_t n, int64_t v, uint64_t seed) {
  Tensor t = randint({n}, seed, 0, v, DType::I64);
  t.data<int64_t>()[1 % n] = -100;  // one ignored row
  if (n > 4) t.data<int64_t>()[4] = -100;
  return t;
}

TEST(GpuCrossEntropy, RowsMatchCpu) {
  G4_REQUIRE_GPU();
  for (const Case c : {Case{7, 262144, 0.0, 3.0}, Case{7, 262144, 30.0, 20.0}, Case{5, 1000, 30.0, 40.0},
                       Case{9, 13, 0.0, 2.0}, Case{3, 37, 5.0, 10.0}, Case{7, 262144, 30.0, 20.0, 0.7},
                       Case{5, 1000, 0.0, 4.0, 1.6}, Case{3, 37, 5.0, 10.0, 0.5}}) {
    const std::string tag = "N=" + std::to_string(c.n) + " V=" + std::to_string(c.v) +
                            " cap=" + std::to_string(static_cast<int>(c.softcap)) +
                            (c.temperature != 1.0 ? " T=" + std::to_string(c.temperature) : "");
    const double t = c.temperature;
    const Tensor logits = test::randn_bf16_exact({c.n, c.v}, 100 + static_cast<uint64_t>(c.v), c.std);
    const Tensor targets = make_targets(c.n, c.v, 7);
    const ops::CrossEntropyRows want = ops::cross_entropy_rows(logits, targets, c.softcap, -100, t);
    for (DType dt : {DType::BF16, DType::F32}) {
      const std::string what = tag + (dt == DType::BF16 ? " bf16" : " f32");
      const Tensor lg = logits.to(dt).to(Device::CUDA);
      const ops::CrossEntropyRows got = ops::cross_entropy_rows(lg, targets.to(Device::CUDA), c.softcap, -100, t);
      EXPECT_EQ(got.loss.device(), Device::CUDA);
      test::expect_close_scaled(got.loss, want.loss, 1e-4, 1e-5, what + " loss");
      test::expect_close_scaled(got.lse, want.lse, 1e-4, 1e-5, what + " lse");
      const Tensor loss = test::host_f32(got.loss);
      EXPECT_EQ(loss.data<float>()[1], 0.0f) << "ignored row";

      const Tensor grad_rows = randn({c.n}, 9);
      const Tensor dwant = ops::cross_entropy_rows_backward(logits, targets, want.lse, c.softcap, grad_rows, -100, {}, t);
      const Tensor dgot =
          ops::cross_entropy_rows_backward(lg, targets, got.lse, c.softcap, grad_rows.to(Device::CUDA), -100, {}, t);
      EXPECT_EQ(dgot.dtype(), dt);
      // bf16 output: one rounding (2^-9 relative) plus fp32 exp/tanh error.
      expect_close_each(dgot, dwant, dt == DType::BF16 ? 8e-3 : 5e-5, 1e-6, what + " dlogits");
      const Tensor dhost = test::host_f32(dgot);
      for (int64_t j = 0; j < c.v; ++j) ASSERT_EQ(dhost.data<float>()[1 * c.v + j], 0.0f) << "ignored row";

      // In place into the logits' own buffer: the same bits.
      Tensor buf = lg.clone();
      const Tensor inplace =
          ops::cross_entropy_rows_backward(buf, targets, got.lse, c.softcap, grad_rows.to(Device::CUDA), -100, buf, t);
      EXPECT_TRUE(inplace.same_storage(buf));
      test::expect_close_scaled(inplace, test::host_f32(dgot), 0, 0, what + " in place");
    }
  }
}

TEST(GpuCrossEntropy, SumAndBackwardMatchCpu) {
  G4_REQUIRE_GPU();
  const int64_t n = 6, v = 262144;
  const Tensor logits = test::randn_bf16_exact({n, v}, 5, 4.0);
  const Tensor targets = make_targets(n, v, 8);
  const ops::CrossEntropyResult want = ops::cross_entropy(logits, targets);
  for (DType dt : {DType::BF16, DType::F32}) {
    const Tensor lg = logits.to(dt).to(Device::CUDA);
    const ops::CrossEntropyResult got = ops::cross_entropy(lg, targets);  // CPU targets are uploaded
    EXPECT_EQ(got.count, want.count);
    EXPECT_NEAR(got.loss_sum, want.loss_sum, 1e-5 * std::fabs(want.loss_sum) + 1e-4);
    std::printf("  loss_sum gpu %.8f cpu %.8f\n", got.loss_sum, want.loss_sum);
    const Tensor dwant = ops::cross_entropy_backward(logits, targets, 0.125);
    expect_close_each(ops::cross_entropy_backward(lg, targets.to(DType::I32).to(Device::CUDA), 0.125), dwant,
                      dt == DType::BF16 ? 8e-3 : 5e-5, 1e-6, dt == DType::BF16 ? "backward bf16" : "backward f32");
  }
}

TEST(GpuCrossEntropy, BadTargetIsRaisedAtTheNextCheck) {
  G4_REQUIRE_GPU();
  const Tensor logits = test::gpu_bf16(randn({3, 64}, 1));
  const Tensor targets = Tensor::from_vector<int64_t>({2, 70, -100}, {3}).to(Device::CUDA);
  const ops::CrossEntropyRows rows = ops::cross_entropy_rows(logits, targets);
  const Tensor loss = test::host_f32(rows.loss);
  EXPECT_TRUE(std::isnan(loss.data<float>()[1]));
  EXPECT_TRUE(std::isfinite(loss.data<float>()[0]));
  try {
    ops::check_device_index_errors();
    ADD_FAILURE() << "expected the bad target to be raised";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* part : {"cross_entropy_rows", "target 70", "row 1", "[0, 64)"})
      EXPECT_NE(msg.find(part), std::string::npos) << part << " not in: " << msg;
  }
  ops::check_device_index_errors();  // cleared
  const ops::CrossEntropyRows ok = ops::cross_entropy_rows(logits, Tensor::from_vector<int64_t>({2, 3, -100}, {3}));
  ops::check_device_index_errors();
  EXPECT_TRUE(std::isfinite(test::host_f32(ok.loss).data<float>()[1]));
  // The synchronous cross_entropy raises at once.
  EXPECT_THROW(ops::cross_entropy(logits, targets), Error);
}

}  // namespace
}  // namespace g4

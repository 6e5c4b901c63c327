// The GPU sampler against the CPU reference on Gemma's 262 144-token vocabulary: the same tokens
// and top-N ids in every mode (both compute the noise and the cuts bit for bit alike), log-probs
// within fp32 summation-order error, rows independent of their batch, bad rows named, and the
// time per call printed.
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "generate/cuda/sampling.h"
#include "generate/sampling.h"
#include "gpu_test.h"
#include "ops/elementwise.h"
#include "support/error_message.h"

namespace g4 {
namespace {

using gen::LogprobMode;
using gen::RowSampling;
using gen::SampledToken;

constexpr int64_t kVocab = 262144;

RowSampling mode(double temperature, int64_t top_k, double top_p, double min_p, int64_t top_n, LogprobMode lm,
                 uint64_t seed) {
  RowSampling r;
  r.params.temperature = temperature;
  r.params.top_k = top_k;
  r.params.top_p = top_p;
  r.params.min_p = min_p;
  r.params.seed = seed;
  r.draw = seed * 7 + 3;
  r.top_logprobs = top_n;
  r.logprob_mode = lm;
  return r;
}

// Every setting the engine can ask for, cycled over the rows.
std::vector<RowSampling> all_modes(int64_t rows) {
  const std::vector<RowSampling> modes = {
      mode(0.0, 0, 1.0, 0.0, 0, LogprobMode::kRaw, 1),          // greedy
      mode(0.0, 40, 0.9, 0.0, 5, LogprobMode::kProcessed, 2),   // greedy ignores the filters
      mode(1.0, 0, 1.0, 0.0, 0, LogprobMode::kProcessed, 3),    // RL rollouts
      mode(1.0, 0, 1.0, 0.0, 20, LogprobMode::kRaw, 4),
      mode(0.7, 50, 1.0, 0.0, 8, LogprobMode::kProcessed, 5),   // top-k
      mode(1.0, 1, 1.0, 0.0, 2, LogprobMode::kProcessed, 6),
      mode(0.9, 0, 0.9, 0.0, 20, LogprobMode::kProcessed, 7),   // top-p
      mode(1.3, 0, 0.5, 0.0, 3, LogprobMode::kRaw, 8),
      mode(1.0, 0, 1.0, 0.05, 10, LogprobMode::kProcessed, 9),  // min-p
      mode(0.8, 1000, 0.95, 0.01, 64, LogprobMode::kProcessed, 10),
      mode(2.0, 20000, 0.99, 0.0, 1, LogprobMode::kRaw, 11),
      mode(1e-3, 0, 1.0, 0.0, 4, LogprobMode::kProcessed, 12),
  };
  std::vector<RowSampling> out;
  for (int64_t r = 0; r < rows; ++r) {
    RowSampling m = modes[r % modes.size()];
    m.params.seed += 1000 * static_cast<uint64_t>(r / modes.size());
    out.push_back(m);
  }
  return out;
}

// Same tokens and ids; log-probs within 1e-5 (the GPU sums Σ exp in fp32 in another order: about
// 1e-6 on a log-sum-exp near ln(262144) = 12.5), -inf exactly where the reference has it.
void expect_same(const std::vector<SampledToken>& gpu, const std::vector<SampledToken>& cpu,
                 const std::vector<RowSampling>& rows, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double worst = 0;
  auto close = [&](float a, float b, const std::string& where) {
    if (std::isinf(b)) {
      EXPECT_EQ(a, b) << where;
      return;
    }
    const double err = std::fabs(static_cast<double>(a) - b);
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-5) << where << ": GPU " << a << " CPU " << b;
  };
  for (size_t r = 0; r < cpu.size(); ++r) {
    const std::string where = what + " row " + std::to_string(r) + " (T " + std::to_string(rows[r].params.temperature) +
                              ", k " + std::to_string(rows[r].params.top_k) + ", p " +
                              std::to_string(rows[r].params.top_p) + ", min_p " + std::to_string(rows[r].params.min_p) +
                              ")";
    EXPECT_EQ(gpu[r].token, cpu[r].token) << where;
    close(gpu[r].logprob, cpu[r].logprob, where + " logprob");
    EXPECT_EQ(gpu[r].top_ids, cpu[r].top_ids) << where;
    ASSERT_EQ(gpu[r].top_logprobs.size(), cpu[r].top_logprobs.size()) << where;
    for (size_t i = 0; i < cpu[r].top_logprobs.size(); ++i)
      close(gpu[r].top_logprobs[i], cpu[r].top_logprobs[i], where + " top " + std::to_string(i));
  }
  std::printf("  %-44s %zu rows, same tokens; worst log-prob difference %.2e\n", what.c_str(), cpu.size(), worst);
}

void expect_identical(const std::vector<SampledToken>& a, const std::vector<SampledToken>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t r = 0; r < a.size(); ++r) {
    EXPECT_EQ(a[r].token, b[r].token) << what << " row " << r;
    EXPECT_EQ(a[r].logprob, b[r].logprob) << what << " row " << r;
    EXPECT_EQ(a[r].top_ids, b[r].top_ids) << what << " row " << r;
    EXPECT_EQ(a[r].top_logprobs, b[r].top_logprobs) << what << " row " << r;
  }
  std::printf("  %-44s %zu rows, identical draws, log-probs and alternatives\n", what.c_str(), a.size());
}

TEST(SamplingGpu, MatchesTheCpuReferenceInEveryMode) {
  G4_REQUIRE_GPU();
  struct Case {
    int64_t rows, vocab;
    bool ties;  // logits rounded to bf16: many equal values, ties at every cut
    double std;
    std::string what;
    int64_t finite = 0;  // > 0: only the first `finite` tokens of each row are finite, the rest -inf
  };
  const std::vector<Case> cases = {
      {48, kVocab, false, 2.0, "V 262144, f32 logits"},
      {24, kVocab, true, 3.0, "V 262144, bf16-rounded logits (ties)"},
      {24, kVocab, false, 8.0, "V 262144, peaked logits (std 8)"},
      {24, 1001, false, 1.0, "V 1001 (unvectorised)"},
      {12, 7, true, 1.0, "V 7"},
      // Top-k 1000 and 20000 then cut at -inf (the k-th largest logit is -inf).
      {24, kVocab, false, 2.0, "V 262144, 500 finite logits a row", 500},
  };
  for (const Case& c : cases) {
    Tensor x = c.ties ? test::randn_bf16_exact({c.rows, c.vocab}, 17, c.std)
                      : randn({c.rows, c.vocab}, 17, DType::F32, c.std);
    if (c.finite > 0)
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t i = c.finite; i < c.vocab; ++i) x.data<float>()[r * c.vocab + i] = -INFINITY;
    const std::vector<RowSampling> rows = all_modes(c.rows);
    expect_same(gen::sample_batch(x.to(Device::CUDA), rows), gen::sample_batch(x, rows), rows, c.what);
  }
}

// The engine hands the sampler the LM head's product (bf16, or f32 on an f32 model) with the final
// softcap still to apply: it must draw exactly what sampling ops::softcap_to_f32's (ops::softcap's)
// output draws, log-probs and alternatives bit for bit, in every mode.
TEST(SamplingGpu, CapsTheHeadProductAsSoftcapToF32Does) {
  G4_REQUIRE_GPU();
  const double cap = 30.0;
  for (const int64_t vocab : {kVocab, int64_t{1001}}) {
    const int64_t R = 24;
    const Tensor product =  // std 20: some logits past the cap
        test::randn_bf16_exact({R, vocab}, 23, 20.0).to(DType::BF16).to(Device::CUDA);
    const std::vector<RowSampling> rows = all_modes(R);
    const std::string what = "V " + std::to_string(vocab);
    expect_identical(gen::cuda::sample_batch_async(product, rows, cap).wait(),
                     gen::sample_batch(ops::softcap_to_f32(product, cap), rows), what + ", bf16 product");
    const Tensor product32 = product.to(DType::F32);
    expect_identical(gen::cuda::sample_batch_async(product32, rows, cap).wait(),
                     gen::sample_batch(ops::softcap(product32, cap), rows), what + ", f32 product");
  }
}

TEST(SamplingGpu, ARowSamplesTheSameAloneAndInABatch) {
  G4_REQUIRE_GPU();
  const int64_t R = 64;
  const Tensor x = randn({R, kVocab}, 5, DType::F32, 2.0).to(Device::CUDA);
  const std::vector<RowSampling> rows = all_modes(R);
  const std::vector<SampledToken> batch = gen::sample_batch(x, rows);
  for (int64_t r : {0, 3, 9, 41, 63}) {
    const SampledToken alone = gen::sample_batch(x.slice0(r, 1), {rows[r]}).at(0);
    EXPECT_EQ(alone.token, batch[r].token) << r;
    EXPECT_EQ(alone.logprob, batch[r].logprob) << r;
    EXPECT_EQ(alone.top_ids, batch[r].top_ids) << r;
    EXPECT_EQ(alone.top_logprobs, batch[r].top_logprobs) << r;
  }
}

TEST(SamplingGpu, BadRowsAreNamed) {
  G4_REQUIRE_GPU();
  Tensor x = randn({3, 1000}, 1, DType::F32, 1.0);
  x.data<float>()[1000 + 17] = std::nanf("");
  const std::vector<RowSampling> rows(3, mode(1.0, 0, 1.0, 0.0, 2, LogprobMode::kRaw, 1));
  std::string e = test::error_of([&] { gen::sample_batch(x.to(Device::CUDA), rows); });
  EXPECT_NE(e.find("sample_batch: row 1 has a NaN or +inf logit"), std::string::npos) << e;
  x.data<float>()[1000 + 17] = 0;
  for (int64_t i = 2000; i < 3000; ++i) x.data<float>()[i] = -INFINITY;
  e = test::error_of([&] { gen::sample_batch(x.to(Device::CUDA), rows); });
  EXPECT_NE(e.find("sample_batch: row 2 has no finite logit"), std::string::npos) << e;
}

// Printed, never asserted: wall time of one call (kernels, the upload of the settings and the copy
// of the results), the figure a decode step pays.
TEST(SamplingGpu, Timing) {
  G4_REQUIRE_GPU();
  for (int64_t R : {1, 64, 256}) {
    const Tensor x = randn({R, kVocab}, 3, DType::F32, 2.0).to(Device::CUDA);
    struct Setting {
      const char* what;
      RowSampling row;
    };
    for (const Setting& s : {Setting{"greedy", mode(0.0, 0, 1.0, 0.0, 0, LogprobMode::kRaw, 1)},
                             Setting{"T 1 (RL)", mode(1.0, 0, 1.0, 0.0, 0, LogprobMode::kProcessed, 1)},
                             Setting{"T 0.7 top-k 50 top-p 0.9", mode(0.7, 50, 0.9, 0.0, 0, LogprobMode::kRaw, 1)},
                             Setting{"T 1 + top-20 logprobs", mode(1.0, 0, 1.0, 0.0, 20, LogprobMode::kRaw, 1)}}) {
      const std::vector<RowSampling> rows(static_cast<size_t>(R), s.row);
      gen::sample_batch(x, rows);  // warm-up
      const int iters = 10;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) gen::sample_batch(x, rows);
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
      std::printf("  R %3lld V %lld %-26s %9.1f us per call\n", static_cast<long long>(R),
                  static_cast<long long>(kVocab), s.what, us);
    }
  }
}

}  // namespace
}  // namespace g4

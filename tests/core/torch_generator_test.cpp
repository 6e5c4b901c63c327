#include "core/torch_generator.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "support/error_message.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

// MT19937 written from Matsumoto & Nishimura's published algorithm (init_genrand, the twist, the
// tempering), independent of the standard library, to show that std::mt19937 is that algorithm.
class ReferenceMt19937 {
 public:
  explicit ReferenceMt19937(uint32_t seed) {
    state_[0] = seed;
    for (uint32_t i = 1; i < 624; ++i) state_[i] = 1812433253u * (state_[i - 1] ^ (state_[i - 1] >> 30)) + i;
  }
  uint32_t next() {
    if (index_ == 624) {
      for (size_t k = 0; k < 624; ++k) {
        const uint32_t y = (state_[k] & 0x80000000u) | (state_[(k + 1) % 624] & 0x7FFFFFFFu);
        state_[k] = state_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908B0DFu : 0u);
      }
      index_ = 0;
    }
    uint32_t y = state_[index_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    return y ^ (y >> 18);
  }

 private:
  std::array<uint32_t, 624> state_{};
  size_t index_ = 624;
};

TEST(TorchGenerator, EngineIsMt19937InitGenrandWithTheSeedsLow32Bits) {
  // Seeds past 2^32 keep only their low half; a fresh random one besides the classics.
  const uint64_t fresh = element_as_int(randint({1}, 915, 0, int64_t(1) << 62), 0);
  for (const uint64_t seed : {uint64_t(0), uint64_t(5489), uint64_t(0xFFFFFFFF), (uint64_t(7) << 32) + 321, fresh}) {
    TorchGenerator gen(seed);
    ReferenceMt19937 ref(static_cast<uint32_t>(seed));
    for (int i = 0; i < 2000; ++i) ASSERT_EQ(gen.u32(), ref.next()) << "seed " << seed << " draw " << i;
  }
  // The standard's own check value: the 10000th output of the default-seeded engine.
  TorchGenerator gen(5489);
  for (int i = 0; i < 9999; ++i) gen.u32();
  EXPECT_EQ(gen.u32(), 4123659995u);
}

TEST(TorchGenerator, TorchManualSeedZero) {
  // torch.manual_seed(0); torch.rand(2) prints tensor([0.4963, 0.7682]);
  // torch.manual_seed(0); torch.randint(0, 10, (5,)) prints tensor([4, 9, 3, 0, 3]).
  TorchGenerator a(0);
  EXPECT_NEAR(a.rand_f32(), 0.4963f, 5e-5f);
  EXPECT_NEAR(a.rand_f32(), 0.7682f, 5e-5f);
  TorchGenerator b(0);
  const Tensor r = b.randint({5}, 0, 10);
  EXPECT_EQ(std::vector<int64_t>(r.data<int64_t>(), r.data<int64_t>() + 5), (std::vector<int64_t>{4, 9, 3, 0, 3}));
}

TEST(TorchGenerator, ConversionsAndRanges) {
  const uint64_t seed = element_as_int(randint({1}, 916, 0, int64_t(1) << 40), 0);
  TorchGenerator gen(seed), raw(seed);
  const uint64_t hi = raw.u32(), lo = raw.u32();
  EXPECT_EQ(gen.u64(), (hi << 32) | lo);
  EXPECT_EQ(gen.rand_f32(), static_cast<float>(raw.u32() % (1u << 24)) / 16777216.0f);
  const double u = static_cast<double>(raw.u64() % (uint64_t(1) << 53)) / 9007199254740992.0;
  EXPECT_EQ(gen.exponential_f32(), static_cast<float>(-std::log1p(-u)));
  // Below 2^32 a range takes one 32-bit draw, from 2^32 on one 64-bit draw.
  EXPECT_EQ(gen.randint(-5, 7), -5 + static_cast<int64_t>(raw.u32() % 12));
  const int64_t big = (int64_t(1) << 40) + 3;
  EXPECT_EQ(gen.randint(10, 10 + big), 10 + static_cast<int64_t>(raw.u64() % static_cast<uint64_t>(big)));
  EXPECT_EQ(gen.randint(0, int64_t(1) << 32), static_cast<int64_t>(raw.u64() % (uint64_t(1) << 32)));
  EXPECT_EQ(gen.u32(), raw.u32());  // still in step
  for (int i = 0; i < 1000; ++i) {
    const float f = gen.rand_f32(), e = gen.exponential_f32();
    ASSERT_TRUE(f >= 0 && f < 1) << f;
    ASSERT_TRUE(e >= 0 && std::isfinite(e)) << e;
    const int64_t k = gen.randint(-3, 4);
    ASSERT_TRUE(k >= -3 && k < 4) << k;
  }
  EXPECT_NE(test::error_of([&] { gen.randint(3, 3); }).find("empty range [3, 3)"), std::string::npos);
}

TEST(TorchGenerator, BulkFillsAreTheScalarDrawsRowMajor) {
  const uint64_t seed = element_as_int(randint({1}, 917, 0, int64_t(1) << 31), 0);
  TorchGenerator bulk(seed), one(seed);
  const Tensor ints = bulk.randint({3, 5}, 2, 300), unif = bulk.rand({2, 7}), expo = bulk.exponential({4, 3});
  ASSERT_EQ(ints.shape(), (Shape{3, 5}));
  ASSERT_EQ(ints.dtype(), DType::I64);
  ASSERT_EQ(unif.dtype(), DType::F32);
  ASSERT_EQ(expo.shape(), (Shape{4, 3}));
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(ints.data<int64_t>()[i], one.randint(2, 300)) << i;
  for (int64_t i = 0; i < 14; ++i) EXPECT_EQ(unif.data<float>()[i], one.rand_f32()) << i;
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(expo.data<float>()[i], one.exponential_f32()) << i;
  EXPECT_EQ(bulk.u32(), one.u32());
}

TEST(SampleArgmaxRatio, TiesNaNAndInvalidRows) {
  const std::vector<float> p{0.2f, 0.4f, 0.0f, 0.4f}, q{1.0f, 2.0f, 0.5f, 2.0f};
  EXPECT_EQ(sample_argmax_ratio(p.data(), q.data(), 4), 0);  // 0.2 three times: the first
  const std::vector<float> q2{1.0f, 1.0f, 0.5f, 1.0f};
  EXPECT_EQ(sample_argmax_ratio(p.data(), q2.data(), 4), 1);  // 0.4 twice: the first
  // An Exp draw of 0 under p = 0 gives 0/0 = NaN, which torch's argmax picks over any number.
  const std::vector<float> q3{1.0f, 1.0f, 0.0f, 1.0f};
  EXPECT_EQ(sample_argmax_ratio(p.data(), q3.data(), 4), 2);
  // p > 0 over q = 0 is +inf and wins as a number; a later NaN still beats it.
  const std::vector<float> p4{0.5f, 0.5f, 0.0f, 0.0f}, q4{0.0f, 1.0f, 1.0f, 0.0f};
  EXPECT_EQ(sample_argmax_ratio(p4.data(), q4.data(), 4), 3);
  const std::vector<float> q5{0.0f, 1.0f, 1.0f, 1.0f};
  EXPECT_EQ(sample_argmax_ratio(p4.data(), q5.data(), 4), 0);

  const std::vector<float> negative{0.5f, -0.1f, 0.6f}, nan{0.5f, std::nanf(""), 0.5f}, zero{0, 0, 0};
  EXPECT_NE(test::error_of([&] { sample_argmax_ratio(negative.data(), q.data(), 3); }).find("at index 1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { sample_argmax_ratio(nan.data(), q.data(), 3); }).find("inf, nan or negative"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { sample_argmax_ratio(zero.data(), q.data(), 3); }).find("sums to 0"),
            std::string::npos);
}

TEST(SampleArgmaxRatio, IsTheLargestRatioAndSamplesP) {
  const int64_t V = 37;
  TorchGenerator gen(element_as_int(randint({1}, 918, 0, int64_t(1) << 31), 0));
  // A fresh softmax row.
  const Tensor logits = randn({V}, 919, DType::F64, 2.0);
  std::vector<float> p(V);
  double total = 0;
  for (int64_t v = 0; v < V; ++v) total += std::exp(logits.data<double>()[v]);
  for (int64_t v = 0; v < V; ++v) p[v] = static_cast<float>(std::exp(logits.data<double>()[v]) / total);
  std::vector<double> hits(V, 0);
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> q(V);
    gen.fill_exponential(q.data(), V);
    const int64_t s = sample_argmax_ratio(p.data(), q.data(), V);
    for (int64_t v = 0; v < V; ++v) ASSERT_LE(p[v] / q[v], p[s] / q[s]);
    hits[s] += 1.0 / draws;
  }
  for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(hits[v], p[v], 0.012) << v;
}

TEST(SampleArgmaxRatio, MultinomialOneDrawsExactlyOneExpPerEntry) {
  const uint64_t seed = element_as_int(randint({1}, 920, 0, int64_t(1) << 31), 0);
  const std::vector<float> p{0.1f, 0.3f, 0.05f, 0.25f, 0.3f};
  TorchGenerator gen(seed), ref(seed);
  for (int row = 0; row < 4; ++row) {
    std::vector<float> q(p.size());
    ref.fill_exponential(q.data(), static_cast<int64_t>(q.size()));
    EXPECT_EQ(gen.multinomial_one(p.data(), static_cast<int64_t>(p.size())),
              sample_argmax_ratio(p.data(), q.data(), static_cast<int64_t>(q.size())));
  }
  EXPECT_EQ(gen.u32(), ref.u32());
}

TEST(AutomodelSeeds, FormulasKeepTheFullValue) {
  // The corruption seed over a wrap of 2^64, against 128-bit arithmetic (Python's integers).
  const int64_t step = 10'000'000'000, dp_rank = 3, dp_size = 4, local_bs = 2, grad_acc = 3, mb = 2, row = 1;
  const uint64_t base = 1234567;
  const unsigned __int128 gidx = static_cast<unsigned __int128>(step) * (local_bs * dp_size * grad_acc) + dp_rank +
                                 (mb * local_bs + row) * dp_size;
  const unsigned __int128 want = (base + (static_cast<unsigned __int128>(1) << 43) + gidx * 2654435761u) %
                                 (static_cast<unsigned __int128>(1) << 63);
  EXPECT_EQ(automodel_corruption_seed(base, step, dp_rank, dp_size, local_bs, grad_acc, mb, row),
            static_cast<uint64_t>(want));
  EXPECT_EQ(automodel_coin_seed(base, 5, 2), base + 5 * 7919 + 2);
  EXPECT_EQ(automodel_selection_seed(base, 5, 2), base + 5 * 7919 + 2 + (uint64_t(1) << 42));
  EXPECT_NE(test::error_of([] { automodel_corruption_seed(42, 1, 1, 1, 2, 1, 0, 0); }).find("dp rank 1 of 1"),
            std::string::npos);
  EXPECT_NE(
      test::error_of([] { automodel_corruption_seed(42, 1, 0, 1, 2, 1, 0, 2); }).find("row 2 of a local batch of 2"),
      std::string::npos);
}

// ---- The fixtures: every recorded torch draw, rebuilt from the recorded seeds ----------------

struct Fixture {
  nlohmann::json ref;
  io::SafetensorsReader tensors;
};

Fixture load_fixture(const std::string& name) {
  const std::string dir = test::data_dir() + "/hf-diffusion-gemma/" + name;
  return {io::read_json_file(dir + "/reference.json", "reference", io::kMaxConfigBytes),
          io::SafetensorsReader::open(dir + "/reference.safetensors")};
}

void expect_same_ints(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t i = 0; i < want.numel(); ++i) {
    ASSERT_EQ(element_as_int(got, i), element_as_int(want, i)) << what << " element " << i;
  }
}

void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(want.dtype(), DType::F32) << what;
  ASSERT_EQ(std::memcmp(got.data<float>(), want.data<float>(), want.nbytes()), 0) << what;
}

class TorchGeneratorFixture : public testing::TestWithParam<std::string> {};

// transformers' generate with torch.manual_seed(seed): per block the initial canvas randint [B,C];
// per denoising step Exp(1) [B·C, V] inside multinomial, then the renoise randint [B,C].
TEST_P(TorchGeneratorFixture, GenerateDraws) {
  const Fixture fx = load_fixture(GetParam());
  const int64_t V = fx.ref.at("vocab_size"), C = fx.ref.at("canvas_length");
  int runs = 0;
  for (const auto& [run, spec] : fx.ref.at("generate").items()) {
    SCOPED_TRACE(GetParam() + " " + run);
    const int64_t B = fx.tensors.get(run + ".prompt").size(0);
    const bool has_expo = fx.tensors.has(run + ".expo");
    // Where the temperature is ~0 the softmax is one-hot at the argmax, so multinomial's sample
    // is the recorded argmax whatever the Exp draws: that replays the sampler there.
    const bool one_hot = spec.at("settings").at("t_max").get<double>() < 1e-3;
    const Tensor argmax = fx.tensors.get(run + ".trace.argmax");
    TorchGenerator gen(spec.at("seed").get<uint64_t>());
    std::vector<Tensor> init, renoise, expo, sampled;
    int64_t step = 0;
    for (const int64_t steps : spec.at("steps_per_block").get<std::vector<int64_t>>()) {
      init.push_back(gen.randint({1, B, C}, 0, V));
      for (int64_t s = 0; s < steps; ++s, ++step) {
        if (has_expo) {
          expo.push_back(gen.exponential({1, B * C, V}));
        } else {
          Tensor row = Tensor::empty({1, B, C}, DType::I64);
          for (int64_t i = 0; i < B * C; ++i) {
            std::vector<float> p(V, 0.0f);
            p[element_as_int(argmax, step * B * C + i)] = 1.0f;
            row.data<int64_t>()[i] = gen.multinomial_one(p.data(), V);
          }
          sampled.push_back(row);
        }
        renoise.push_back(gen.randint({1, B, C}, 0, V));
      }
    }
    auto cat = [](const std::vector<Tensor>& parts) {
      Shape shape = parts.at(0).shape();
      shape[0] = static_cast<int64_t>(parts.size());
      Tensor out = Tensor::empty(shape, parts[0].dtype());
      for (size_t i = 0; i < parts.size(); ++i) out.slice0(static_cast<int64_t>(i), 1).copy_from(parts[i]);
      return out;
    };
    expect_same_ints(cat(init), fx.tensors.get(run + ".init_canvas"), "init_canvas");
    expect_same_ints(cat(renoise), fx.tensors.get(run + ".renoise_canvas"), "renoise_canvas");
    if (has_expo) {
      expect_same_bits(cat(expo), fx.tensors.get(run + ".expo"), "expo");
    } else {
      ASSERT_TRUE(one_hot) << "a sampled run without recorded Exp draws";
      expect_same_ints(cat(sampled), fx.tensors.get(run + ".denoiser_canvas"), "denoiser_canvas");
    }
    ++runs;
  }
  EXPECT_EQ(runs, 3);
}

// NeMo Automodel's training step: per-example corruption generators, then the block-selection and
// self-conditioning uniforms of the micro-batch.
TEST_P(TorchGeneratorFixture, TrainingDraws) {
  const Fixture fx = load_fixture(GetParam());
  const nlohmann::json& am = fx.ref.at("automodel");
  const uint64_t base = am.at("base_seed");
  const int64_t step = am.at("step"), mb = am.at("microbatch_idx"), V = fx.ref.at("vocab_size");
  const Tensor ids = fx.tensors.get("train.input_ids");
  const int64_t B = ids.size(0), S = ids.size(1);
  const Tensor seeds = fx.tensors.get("train.corrupt.seed"), t = fx.tensors.get("train.corrupt.t");
  const Tensor u = fx.tensors.get("train.corrupt.u"), repl = fx.tensors.get("train.corrupt.repl");
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t seed = automodel_corruption_seed(base, step, am.at("dp_rank"), am.at("dp_size"),
                                                    am.at("local_batch_size"), am.at("grad_acc_steps"), mb, b);
    EXPECT_EQ(static_cast<int64_t>(seed), element_as_int(seeds, b)) << "row " << b;
    const AutomodelCorruptionDraws d = automodel_corruption_draws(seed, S, V, am.at("eps").get<double>());
    EXPECT_EQ(d.t, t.data<float>()[b]) << "row " << b;
    expect_same_bits(d.u, u.select0(b), "train.corrupt.u row " + std::to_string(b));
    expect_same_ints(d.replacement, repl.select0(b), "train.corrupt.repl row " + std::to_string(b));
  }
  TorchGenerator selection(automodel_selection_seed(base, step, mb)), coins(automodel_coin_seed(base, step, mb));
  expect_same_bits(selection.rand({B}), fx.tensors.get("train.sel_u"), "train.sel_u");
  expect_same_bits(coins.rand({B}), fx.tensors.get("train.sc_u"), "train.sc_u");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TorchGeneratorFixture, testing::Values("tiny-dg-a", "tiny-dg-b"));

}  // namespace
}  // namespace g4

// The block diffusion sampler against transformers 5.17's CPU generate() (tests/data/hf-diffusion-gemma):
// all three recorded runs of both fixtures replayed with torch's CPU generator and the recorded
// seeds, every step's trace compared; then the step's rules on small hand-made inputs, and the
// Philox draws' independence from the rest of the batch.
#include "diffusion/sampler.h"
#include "diffusion/step_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/random.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "support/diffusion_fixtures.h"
#include "support/error_message.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

using nlohmann::json;

std::string fixture(const std::string& name) {
  return test::data_dir() + "/hf-diffusion-gemma/" + name;
}

std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = element_as_int(t, i);
  return v;
}

// Element range [first, first + n) of a tensor as integers.
std::vector<int64_t> slice(const Tensor& t, int64_t first, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = element_as_int(t, first + i);
  return v;
}

std::vector<int64_t> widen(const std::vector<uint8_t>& v) {
  return {v.begin(), v.end()};
}

// generate()'s keyword arguments of a recorded run, as overrides of the model's generation_config.json.
struct Case {
  std::string fixture, run;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.fixture << " " << c.run; }

class RecordedRun : public ::testing::TestWithParam<Case> {};

TEST_P(RecordedRun, MatchesTransformersTokenForToken) {
  const Case c = GetParam();
  const std::string dir = fixture(c.fixture), pre = c.run + ".";
  const auto m = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const json meta = io::read_json_file(dir + "/reference.json", "reference", 1 << 24);
  const json& run = meta.at("generate").at(c.run);
  const Tensor prompt = ref.get(pre + "prompt").clone();
  const int64_t B = prompt.size(0), P = prompt.size(1), C = m->config().canvas_length;
  const Tensor mask = ref.has(pre + "attention_mask") ? ref.get(pre + "attention_mask").clone() : Tensor();
  const diffusion::GenerationConfig cfg = diffusion::resolve_generation_config(
      m->config().generation_config, "generation_config.json", test::diffusion_run_overrides(run.at("settings")), "run settings", P);

  diffusion::TorchCpuDraws draws(run.at("seed").get<uint64_t>());
  std::vector<diffusion::StepTrace> trace;
  diffusion::GenerateInputs inputs;
  inputs.attention_mask = mask;
  const diffusion::GenerateOutput out = diffusion::generate(*m, prompt, inputs, cfg, draws, &trace);

  const Tensor want_steps = ref.get(pre + "steps_per_block");
  EXPECT_EQ(out.steps_per_block, ints(want_steps));
  EXPECT_EQ(out.steps_per_block, run.at("steps_per_block").get<std::vector<int64_t>>());
  const Tensor cur_step = ref.get(pre + "trace.cur_step");
  const Tensor temperature = ref.get_f32(pre + "trace.temperature", {cur_step.numel()});
  ASSERT_EQ(static_cast<int64_t>(trace.size()), cur_step.numel());
  const Tensor entropy = ref.get_f32(pre + "trace.entropy", {cur_step.numel(), B, C});
  const int64_t BC = B * C;
  for (int64_t t = 0; t < cur_step.numel(); ++t) {
    const diffusion::StepTrace& s = trace[t];
    SCOPED_TRACE(c.fixture + " " + c.run + " step " + std::to_string(t));
    EXPECT_EQ(s.cur_step, element_as_int(cur_step, t));
    EXPECT_EQ(s.temperature, temperature.data<float>()[t]);  // bit for bit
    EXPECT_EQ(s.canvas_in, slice(ref.get(pre + "trace.canvas_in"), t * BC, BC));
    EXPECT_EQ(s.canvas_out, slice(ref.get(pre + "trace.canvas_out"), t * BC, BC));
    EXPECT_EQ(s.argmax, slice(ref.get(pre + "trace.argmax"), t * BC, BC));
    EXPECT_EQ(widen(s.accept), slice(ref.get(pre + "trace.accept"), t * BC, BC));
    EXPECT_EQ(widen(s.finished_in), slice(ref.get(pre + "trace.finished_in"), t * B, B));
    EXPECT_EQ(widen(s.finished_out), slice(ref.get(pre + "trace.finished_out"), t * B, B));
    // The entropies inherit the logits' difference from transformers' (the forward matches to
    // about 1e-5, divided by T >= 0.4 here). At a block's first step that is all; afterwards each
    // step's logits, noise included, self-condition the next forward and the difference grows:
    // to 8.1e-4 by the last step of tiny-dg-b's blocks (adding 1e-5 of noise to every step's logits
    // of g4's own run moves it by 1.4e-3 there). Every decision above stays exact.
    const double tol = s.cur_step == *cfg.max_denoising_steps ? 5e-5 : 2e-3;
    for (int64_t i = 0; i < BC; ++i)
      EXPECT_NEAR(s.entropy[i], entropy.data<float>()[t * BC + i], tol) << "position " << i;
  }
  EXPECT_EQ(ints(out.sequences), ints(ref.get(pre + "output")));
  EXPECT_EQ(out.sequences.shape(), ref.get(pre + "output").shape());
  const Tensor tpf = ref.get_f32(pre + "tokens_per_forward", {B});
  for (int64_t b = 0; b < B; ++b) EXPECT_EQ(out.tokens_per_forward[b], tpf.data<float>()[b]) << "row " << b;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RecordedRun,
                         ::testing::Values(Case{"tiny-dg-a", "gen_argmax"}, Case{"tiny-dg-a", "gen_argmax_stop"},
                                           Case{"tiny-dg-a", "gen_sample"}, Case{"tiny-dg-b", "gen_argmax"},
                                           Case{"tiny-dg-b", "gen_argmax_stop"}, Case{"tiny-dg-b", "gen_sample"}),
                         [](const auto& info) {
                           std::string n = info.param.fixture + "_" + info.param.run;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(SamplerStep, EntropyIsTheCategoricalEntropyOfTheRow) {
  const int64_t n = 300;
  const Tensor rows = randn({4, n}, 4101, DType::F32, 6.0);
  for (int64_t r = 0; r < 4; ++r) {
    const float* x = rows.data<float>() + r * n;
    long double m = x[0], sum = 0, h = 0;
    for (int64_t v = 0; v < n; ++v) m = std::max<long double>(m, x[v]);
    for (int64_t v = 0; v < n; ++v) sum += std::exp(static_cast<long double>(x[v]) - m);
    for (int64_t v = 0; v < n; ++v) {
      const long double l = x[v] - m - std::log(sum);
      h -= l * std::exp(l);
    }
    EXPECT_NEAR(diffusion::categorical_entropy(x, n), static_cast<double>(h), 1e-6) << "row " << r;
  }
  // A row with one finite logit is certain: exactly 0, not NaN from -inf * 0.
  std::vector<float> one_hot(5, -std::numeric_limits<float>::infinity());
  one_hot[3] = 2.5f;
  EXPECT_EQ(diffusion::categorical_entropy(one_hot.data(), 5), 0.0f);
  const std::vector<float> flat(64, 1.25f);
  EXPECT_NEAR(diffusion::categorical_entropy(flat.data(), 64), std::log(64.0), 1e-6);
}

TEST(SamplerStep, ArgmaxAndSoftmax) {
  const std::vector<float> row = {1.0f, 3.0f, -2.0f, 3.0f};
  EXPECT_EQ(diffusion::argmax_first(row.data(), 4), 1);  // the first of equal maxima, as torch.argmax
  std::vector<float> p(4);
  diffusion::softmax_row(row.data(), 4, p.data());
  const double z = std::exp(-2.0) + 2.0 + std::exp(-5.0);
  EXPECT_NEAR(p[0], std::exp(-2.0) / z, 1e-7);
  EXPECT_NEAR(p[1], 1.0 / z, 1e-7);
  EXPECT_NEAR(p[2], std::exp(-5.0) / z, 1e-7);
  EXPECT_EQ(p[1], p[3]);
}

TEST(SamplerStep, TemperatureScheduleIsTorchsFloatArithmetic) {
  // cur_step = N gives t_max, counting down to t_min + (t_max - t_min) / N at cur_step 1.
  EXPECT_EQ(diffusion::schedule_temperature(0.4, 0.8, 8, 8), 0.8f);
  EXPECT_EQ(diffusion::schedule_temperature(0.4, 0.8, 4, 8), 0.6f);
  // Each operation rounded to float: 1e-6 * 0.75 in float, then added to f32(0).
  EXPECT_EQ(diffusion::schedule_temperature(0.0, 1e-6, 3, 4), 1e-6f * 0.75f);
}

std::vector<int64_t> accepted(const std::vector<float>& entropy, double bound) {
  std::vector<uint8_t> a(entropy.size());
  diffusion::entropy_bound_accept(entropy.data(), static_cast<int64_t>(entropy.size()), bound, a.data());
  return widen(a);
}

TEST(SamplerStep, EntropyBoundAcceptsTheLowestEntropiesUpToTheBound) {
  // Sorted: 0 (pos 1), 0.05 (pos 2), 0.2 (pos 3), 0.3 (pos 0); sums of the ones below: 0, 0, 0.05, 0.25.
  EXPECT_EQ(accepted({0.3f, 0.0f, 0.05f, 0.2f}, 0.1), (std::vector<int64_t>{0, 1, 1, 1}));
  // The lowest entropy is always accepted, however high.
  EXPECT_EQ(accepted({5.0f, 4.0f, 7.0f}, 0.1), (std::vector<int64_t>{0, 1, 0}));
  // Equal entropies straddling the bound: the lower position first.
  EXPECT_EQ(accepted({0.2f, 0.2f, 0.0f}, 0.1), (std::vector<int64_t>{1, 0, 1}));
  // The comparison is in float: 0.2f - 0.1f is 0.1f, which equals f32(0.1) though above the double 0.1.
  EXPECT_EQ(accepted({0.1f, 0.1f, 0.3f}, 0.1), (std::vector<int64_t>{1, 1, 0}));
  // NaN sorts last.
  EXPECT_EQ(accepted({std::nanf(""), 0.0f}, 100.0), (std::vector<int64_t>{0, 1}));
}

TEST(SamplerStep, FinalizePadsAfterTheFirstEosAndRowsFinishedEarlier) {
  diffusion::GenerationConfig cfg;
  cfg.eos_token_id = std::vector<int64_t>{7, 9};
  cfg.pad_token_id = 0;
  // Rows of [prompt 2 | block 4]; row 2 finished in an earlier block.
  const std::vector<int64_t> ids = {11, 12, 5, 7, 8, 9,  //
                                    11, 12, 1, 2, 3, 4,  //
                                    11, 12, 7, 3, 7, 2};
  std::vector<int64_t> out = ids;
  std::vector<uint8_t> finished = {0, 0, 1};
  diffusion::finalize_block(out, 3, 4, cfg, finished);
  EXPECT_EQ(out, (std::vector<int64_t>{11, 12, 5, 7, 0, 0, 11, 12, 1, 2, 3, 4, 11, 12, 0, 0, 0, 0}));
  EXPECT_EQ(widen(finished), (std::vector<int64_t>{1, 0, 1}));

  // Without a pad id the tokens stay; the rows still finish.
  cfg.pad_token_id.reset();
  out = ids;
  finished = {0, 0, 1};
  diffusion::finalize_block(out, 3, 4, cfg, finished);
  EXPECT_EQ(out, ids);
  EXPECT_EQ(widen(finished), (std::vector<int64_t>{1, 0, 1}));

  // max_length finishes every row; with no EOS in the block only rows finished before are padded.
  cfg.pad_token_id = 0;
  cfg.eos_token_id.reset();
  cfg.max_length = 6;
  out = ids;
  finished = {0, 0, 1};
  diffusion::finalize_block(out, 3, 4, cfg, finished);
  EXPECT_EQ(out, (std::vector<int64_t>{11, 12, 5, 7, 8, 9, 11, 12, 1, 2, 3, 4, 11, 12, 0, 0, 0, 0}));
  EXPECT_EQ(widen(finished), (std::vector<int64_t>{1, 1, 1}));
}

TEST(PhiloxDraws, ARowsDrawsDependOnlyOnItsSeed) {
  const int64_t C = 5, V = 37;
  diffusion::PhiloxDraws pair({1234, 99}), alone({1234}), other({1234, 7});
  std::vector<int64_t> a(2 * C), b(C), c(2 * C);
  pair.initial_canvas(3, 2, C, V, a.data());
  alone.initial_canvas(3, 1, C, V, b.data());
  other.initial_canvas(3, 2, C, V, c.data());
  EXPECT_EQ(std::vector<int64_t>(a.begin(), a.begin() + C), b);
  EXPECT_EQ(std::vector<int64_t>(c.begin(), c.begin() + C), b);
  EXPECT_NE(std::vector<int64_t>(a.begin() + C, a.end()), std::vector<int64_t>(c.begin() + C, c.end()));
  for (int64_t t : a) EXPECT_TRUE(t >= 0 && t < V);
  pair.renoise(3, 2, 2, C, V, a.data());
  alone.renoise(3, 2, 1, C, V, b.data());
  EXPECT_EQ(std::vector<int64_t>(a.begin(), a.begin() + C), b);
  std::vector<int64_t> next(C);
  alone.renoise(3, 3, 1, C, V, next.data());
  EXPECT_NE(next, b) << "each step draws afresh";

  const Tensor probs = rand_uniform({2 * C, V}, 4102, 0.01, 1.0);
  std::vector<float> p(probs.data<float>(), probs.data<float>() + 2 * C * V);
  for (int64_t r = 0; r < 2 * C; ++r) {
    float sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += p[r * V + v];
    for (int64_t v = 0; v < V; ++v) p[r * V + v] /= sum;
  }
  // Samples: the exponential race on the processed logits (log p here), keyed per row.
  std::vector<float> logp(p.size());
  for (size_t i = 0; i < p.size(); ++i) logp[i] = std::log(p[i]);
  const Tensor z2 = Tensor::from_vector(logp, {2 * C, V});
  const Tensor z1 = Tensor::from_vector(std::vector<float>(logp.begin(), logp.begin() + C * V), {C, V});
  auto race = [&](diffusion::PhiloxDraws& d, const Tensor& z, int64_t batch) {
    std::vector<uint64_t> seeds, draws;
    EXPECT_TRUE(d.race_keys(1, 4, 6, batch, C, seeds, draws));
    return diffusion::step_stats(z, 1.0f, seeds, draws).sample;
  };
  const std::vector<int64_t> sp = race(pair, z2, 2), so = race(other, z2, 2), sa = race(alone, z1, 1);
  EXPECT_EQ(std::vector<int64_t>(sp.begin(), sp.begin() + C), sa);
  EXPECT_EQ(std::vector<int64_t>(so.begin(), so.begin() + C), sa);
}

TEST(PhiloxDraws, SamplesFollowTheProbabilities) {
  // 4000 positions of one row draw from p = (0.6, 0.3, 0.1, 0).
  const int64_t C = 4000, V = 4;
  std::vector<float> p;
  for (int64_t j = 0; j < C; ++j) p.insert(p.end(), {0.6f, 0.3f, 0.1f, 0.0f});
  std::vector<float> logp;
  for (float x : p) logp.push_back(std::log(x));  // log 0 = -inf: never drawn
  diffusion::PhiloxDraws draws({20260});
  std::vector<uint64_t> seeds, keys;
  ASSERT_TRUE(draws.race_keys(0, 0, 1, 1, C, seeds, keys));
  const std::vector<int64_t> s = diffusion::step_stats(Tensor::from_vector(logp, {C, V}), 1.0f, seeds, keys).sample;
  std::vector<double> freq(V, 0);
  for (int64_t t : s) freq[t] += 1.0 / C;
  EXPECT_NEAR(freq[0], 0.6, 0.03);
  EXPECT_NEAR(freq[1], 0.3, 0.03);
  EXPECT_NEAR(freq[2], 0.1, 0.02);
  EXPECT_EQ(freq[3], 0.0);
}

// max_new_tokens near 2^63 (a generation_config.json or an API caller may give it) made the block
// count ceil(N / C) wrap negative: the context check passed and nothing was generated.
TEST(Sampler, MaxNewTokensNear2To63IsRefusedAgainstTheContext) {
  const auto m = model::load_hf_model(fixture("tiny-dg-a"));
  for (const int64_t n : {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() - 3}) {
    const json over = {{"max_new_tokens", n}, {"max_denoising_steps", 1}};
    const diffusion::GenerationConfig cfg =
        diffusion::resolve_generation_config(m->config().generation_config, "generation_config.json", over, "test", 2);
    diffusion::PhiloxDraws draws({1});
    const std::string e = test::error_of(
        [&] { diffusion::generate(*m, Tensor::from_vector(std::vector<int64_t>{5, 6}, {1, 2}), {}, cfg, draws); });
    EXPECT_NE(e.find("max_new_tokens " + std::to_string(n)), std::string::npos) << e;
    EXPECT_NE(e.find("over 2^63 positions in all"), std::string::npos) << e;
    EXPECT_NE(e.find("at most 1016 new tokens fit"), std::string::npos) << e;
  }
}

TEST(PhiloxDraws, ARowsTokensDoNotDependOnTheBatch) {
  // The same prompt generated alone and beside different prompts (equal lengths: no padding, whose
  // unshifted positions would change the row's forward) gives the same tokens.
  const auto m = model::load_hf_model(fixture("tiny-dg-a"));
  const int64_t P = 9, V = m->config().vocab_size;
  const Tensor prompts = randint({3, P}, 4103, 3, V);
  const std::vector<int64_t> all = ints(prompts);
  const json over = {
      {"max_new_tokens", 16}, {"max_denoising_steps", 6}, {"confidence_threshold", 0.5}, {"eos_token_id", nullptr}};
  const diffusion::GenerationConfig cfg =
      diffusion::resolve_generation_config(m->config().generation_config, "generation_config.json", over, "test", P);
  auto rows = [&](std::vector<int64_t> which, std::vector<uint64_t> seeds) {
    std::vector<int64_t> ids;
    for (int64_t r : which) ids.insert(ids.end(), all.begin() + r * P, all.begin() + (r + 1) * P);
    diffusion::PhiloxDraws draws(std::move(seeds));
    return diffusion::generate(*m, Tensor::from_vector(ids, {static_cast<int64_t>(which.size()), P}), {}, cfg, draws);
  };
  const diffusion::GenerateOutput alone = rows({0}, {77});
  const diffusion::GenerateOutput with1 = rows({0, 1}, {77, 5});
  const diffusion::GenerateOutput with2 = rows({2, 0}, {8, 77});
  const int64_t L = alone.sequences.size(1);
  ASSERT_EQ(with1.sequences.size(1), L);
  ASSERT_EQ(with2.sequences.size(1), L);
  EXPECT_EQ(slice(with1.sequences, 0, L), ints(alone.sequences));
  EXPECT_EQ(slice(with2.sequences, L, L), ints(alone.sequences));
  EXPECT_NE(slice(with1.sequences, L, L), slice(with2.sequences, 0, L));
}

}  // namespace
}  // namespace g4

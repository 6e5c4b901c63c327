// generate()'s inputs beyond the prompt, as transformers' generate takes them: a first canvas
// (decoder_input_ids) and first self-conditioning logits, and a conversation's cache
// (past_key_values) carried from one turn to the next. The fixtures record no such run, so these
// are checked against properties that pin transformers' semantics down: the recorded run comes
// back when seeded with its own initial canvas (the random canvas is still drawn), a run seeded
// with the state of step k continues as the unseeded run does from step k + 1, and a second turn
// on the first turn's cache equals the whole conversation generated from scratch.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/random.h"
#include "diffusion/sampler.h"
#include "io/json_input.h"
#include "support/diffusion_fixtures.h"
#include "support/tensor_compare.h"

namespace g4 {
namespace {

using nlohmann::json;

std::vector<int64_t> ints(const Tensor& t, int64_t first = 0, int64_t n = -1) {
  if (n < 0) n = t.numel() - first;
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = element_as_int(t, first + i);
  return v;
}

diffusion::GenerationConfig settings(const model::Gemma4& m, const json& over, int64_t prompt_length) {
  return diffusion::resolve_generation_config(m.config().generation_config, "generation_config.json", over, "test",
                                              prompt_length);
}

TEST(SeededFirstBlock, TheRecordedInitialCanvasGivesTheRecordedRun) {
  // transformers draws the random canvas even when decoder_input_ids replace it, so seeding with
  // the canvas it drew leaves every later draw, and so the whole run, as recorded.
  const std::string dir = test::diffusion_fixture_dir("tiny-dg-a");
  const auto m = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const json run = io::read_json_file(dir + "/reference.json", "reference", 1 << 24).at("generate").at("gen_sample");
  const Tensor prompt = ref.get("gen_sample.prompt").clone();
  const int64_t B = prompt.size(0), C = m->config().canvas_length;
  const diffusion::GenerationConfig cfg =
      settings(*m, test::diffusion_run_overrides(run.at("settings")), prompt.size(1));
  const Tensor init = ref.get("gen_sample.init_canvas");
  diffusion::GenerateInputs in;
  in.decoder_input_ids = Tensor::from_vector(ints(init, 0, B * C), {B, C});
  diffusion::TorchCpuDraws draws(run.at("seed").get<uint64_t>());
  const diffusion::GenerateOutput out = diffusion::generate(*m, prompt, in, cfg, draws);
  EXPECT_EQ(ints(out.sequences), ints(ref.get("gen_sample.output")));

  // Another canvas is the first step's input, and the draws after it are the same ones.
  std::vector<int64_t> other = ints(init, B * C, B * C);  // block 1's recorded draw
  in.decoder_input_ids = Tensor::from_vector(other, {B, C});
  diffusion::TorchCpuDraws again(run.at("seed").get<uint64_t>());
  std::vector<diffusion::StepTrace> trace;
  diffusion::generate(*m, prompt, in, cfg, again, &trace);
  ASSERT_FALSE(trace.empty());
  EXPECT_EQ(trace[0].canvas_in, other);
}

// Delegates to `draws` as if `offset` steps of every block had already run.
class SkipSteps final : public diffusion::CanvasDraws {
 public:
  SkipSteps(diffusion::CanvasDraws& draws, int64_t offset) : d_(draws), k_(offset) {}
  void initial_canvas(int64_t block, int64_t batch, int64_t C, int64_t V, int64_t* out) override {
    d_.initial_canvas(block, batch, C, V, out);
  }
  bool race_keys(int64_t block, int64_t step, int64_t steps, int64_t batch, int64_t C, std::vector<uint64_t>& seeds,
                 std::vector<uint64_t>& draws) override {
    return d_.race_keys(block, step + k_, steps + k_, batch, C, seeds, draws);
  }
  void renoise(int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) override {
    d_.renoise(block, step + k_, batch, C, V, out);
  }

 private:
  diffusion::CanvasDraws& d_;
  int64_t k_;
};

TEST(SeededFirstBlock, TheStateOfStepKContinuesTheUnseededRun) {
  // Without a temperature schedule or stability history a step depends only on its canvas, its
  // self-conditioning logits and its draws. Seeded with step k's output canvas and logits (the
  // next step's self-conditioning input), N - k steps drawn as steps k.. of the unseeded run must
  // repeat that run's steps k + 1..N exactly, and give its block.
  const auto m = model::load_hf_model(test::diffusion_fixture_dir("tiny-dg-a"));
  const int64_t B = 2, P = 9, N = 6, k = 2, C = m->config().canvas_length, V = m->config().vocab_size;
  const Tensor prompt = randint({B, P}, 5101, 3, V);
  json over = {{"max_new_tokens", C},
               {"max_denoising_steps", N},
               {"t_min", nullptr},
               {"stability_threshold", nullptr},
               {"eos_token_id", nullptr},
               {"sampler_config", {{"_cls_name", "EntropyBoundSamplerConfig"}, {"entropy_bound", 0.5}}}};
  diffusion::PhiloxDraws draws({31, 32});
  std::vector<diffusion::StepTrace> full;
  const diffusion::GenerateOutput unseeded = diffusion::generate(*m, prompt, {}, settings(*m, over, P), draws, &full);
  ASSERT_EQ(static_cast<int64_t>(full.size()), N);

  // Step k - 1's logits, rebuilt by running the chain of self-conditioned denoiser calls.
  diffusion::EncoderCache cache;
  diffusion::encode(*m, prompt, {}, cache);
  Tensor sc;
  for (int64_t t = 0; t < k; ++t)
    sc = diffusion::denoise(*m, Tensor::from_vector(full[t].canvas_in, {B, C}), cache, sc);
  diffusion::GenerateInputs in;
  in.decoder_input_ids = Tensor::from_vector(full[k - 1].canvas_out, {B, C});
  in.self_conditioning_logits = sc;
  over["max_denoising_steps"] = N - k;
  SkipSteps skipped(draws, k);
  std::vector<diffusion::StepTrace> rest;
  const diffusion::GenerateOutput seeded = diffusion::generate(*m, prompt, in, settings(*m, over, P), skipped, &rest);
  ASSERT_EQ(static_cast<int64_t>(rest.size()), N - k);
  for (int64_t i = 0; i < N - k; ++i) {
    SCOPED_TRACE("seeded step " + std::to_string(i));
    const diffusion::StepTrace &a = rest[i], &b = full[k + i];
    EXPECT_EQ(a.canvas_in, b.canvas_in);
    EXPECT_EQ(a.canvas_out, b.canvas_out);
    EXPECT_EQ(a.argmax, b.argmax);
    EXPECT_EQ(a.accept, b.accept);
    EXPECT_EQ(a.entropy, b.entropy);
  }
  EXPECT_EQ(ints(seeded.sequences), ints(unseeded.sequences));

  // Seeded with the canvas alone, the first step has no self-conditioning signal and differs.
  in.self_conditioning_logits = Tensor();
  std::vector<diffusion::StepTrace> plain;
  diffusion::generate(*m, prompt, in, settings(*m, over, P), skipped, &plain);
  EXPECT_NE(plain[0].entropy, full[k].entropy);
}

TEST(SeededFirstBlock, WrongShapesAreRefused) {
  const auto m = model::load_hf_model(test::diffusion_fixture_dir("tiny-dg-a"));
  const int64_t C = m->config().canvas_length, V = m->config().vocab_size;
  const Tensor prompt = randint({2, 5}, 5102, 3, V);
  const diffusion::GenerationConfig cfg = settings(*m, json::object(), 5);
  diffusion::PhiloxDraws draws({1, 2});
  diffusion::GenerateInputs in;
  in.decoder_input_ids = randint({2, C + 1}, 5103, 0, V);
  EXPECT_THROW(diffusion::generate(*m, prompt, in, cfg, draws), Error);
  in.decoder_input_ids = Tensor();
  in.self_conditioning_logits = randn({2, C, V - 1}, 5104);
  EXPECT_THROW(diffusion::generate(*m, prompt, in, cfg, draws), Error);
  in.self_conditioning_logits = Tensor();
  diffusion::EncoderCache three;
  diffusion::encode(*m, randint({3, 4}, 5105, 3, V), {}, three);
  in.past_key_values = &three;
  EXPECT_THROW(diffusion::generate(*m, prompt, in, cfg, draws), Error);
}

TEST(MultiTurn, TheSecondTurnOnTheFirstTurnsCacheEqualsRecomputing) {
  // Turn 1 keeps its cache (every block but the last, as transformers returns it); turn 2 passes
  // the last block and its own tokens. From scratch, the whole conversation is one prompt. Row 1 is
  // left-padded in turn 1, so the cache must carry its key validity.
  const auto m = model::load_hf_model(test::diffusion_fixture_dir("tiny-dg-a"));
  const int64_t B = 2, P = 9, T = 5, C = m->config().canvas_length, V = m->config().vocab_size;
  std::vector<int64_t> first = ints(randint({B, P}, 5106, 3, V)), mask(static_cast<size_t>(B * P), 1);
  for (int64_t j = 0; j < 3; ++j) {
    first[P + j] = m->config().pad_token_id;
    mask[P + j] = 0;
  }
  const json over = {{"max_new_tokens", 2 * C},
                     {"max_denoising_steps", 5},
                     {"confidence_threshold", 0.5},
                     {"eos_token_id", nullptr},
                     {"pad_token_id", 0}};
  diffusion::EncoderCache cache;
  diffusion::GenerateInputs in1;
  in1.attention_mask = Tensor::from_vector(mask, {B, P});
  in1.past_key_values = &cache;
  diffusion::PhiloxDraws d1({11, 12});
  const diffusion::GenerateOutput turn1 =
      diffusion::generate(*m, Tensor::from_vector(first, {B, P}), in1, settings(*m, over, P), d1);
  const int64_t L1 = turn1.sequences.size(1);
  ASSERT_EQ(L1, P + 2 * C);
  EXPECT_EQ(cache.length(), P + C) << "the last block is not encoded";

  const std::vector<int64_t> reply = ints(randint({B, T}, 5107, 3, V));
  std::vector<int64_t> next, whole, whole_mask;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int64_t> row = ints(turn1.sequences, b * L1, L1);
    next.insert(next.end(), row.end() - C, row.end());
    next.insert(next.end(), reply.begin() + b * T, reply.begin() + (b + 1) * T);
    whole.insert(whole.end(), row.begin(), row.end());
    whole.insert(whole.end(), reply.begin() + b * T, reply.begin() + (b + 1) * T);
    whole_mask.insert(whole_mask.end(), mask.begin() + b * P, mask.begin() + (b + 1) * P);
    whole_mask.insert(whole_mask.end(), 2 * C + T, 1);
  }
  const int64_t W = P + 2 * C + T;
  diffusion::GenerateInputs in2;
  in2.past_key_values = &cache;
  diffusion::PhiloxDraws d2({21, 22});
  std::vector<diffusion::StepTrace> cached_trace;
  const diffusion::GenerateOutput cached =
      diffusion::generate(*m, Tensor::from_vector(next, {B, C + T}), in2, settings(*m, over, W), d2, &cached_trace);

  diffusion::EncoderCache scratch_cache;
  diffusion::GenerateInputs in3;
  in3.attention_mask = Tensor::from_vector(whole_mask, {B, W});
  in3.past_key_values = &scratch_cache;
  diffusion::PhiloxDraws d3({21, 22});
  std::vector<diffusion::StepTrace> scratch_trace;
  const diffusion::GenerateOutput scratch =
      diffusion::generate(*m, Tensor::from_vector(whole, {B, W}), in3, settings(*m, over, W), d3, &scratch_trace);

  // Token for token: the new tokens, every step's decisions, the block counts.
  const int64_t L2 = cached.sequences.size(1), L3 = scratch.sequences.size(1), fresh = L2 - (C + T);
  ASSERT_EQ(L3 - W, fresh);
  for (int64_t b = 0; b < B; ++b)
    EXPECT_EQ(ints(cached.sequences, b * L2 + C + T, fresh), ints(scratch.sequences, b * L3 + W, fresh)) << "row " << b;
  EXPECT_EQ(cached.steps_per_block, scratch.steps_per_block);
  EXPECT_EQ(cached.tokens_per_forward, scratch.tokens_per_forward);
  ASSERT_EQ(cached_trace.size(), scratch_trace.size());
  for (size_t t = 0; t < cached_trace.size(); ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    EXPECT_EQ(cached_trace[t].canvas_out, scratch_trace[t].canvas_out);
    EXPECT_EQ(cached_trace[t].argmax, scratch_trace[t].argmax);
    EXPECT_EQ(cached_trace[t].accept, scratch_trace[t].accept);
    // fp32 noise of the keys (below), grown through the self-conditioning chain: 1.7e-5 measured.
    for (size_t i = 0; i < cached_trace[t].entropy.size(); ++i)
      EXPECT_NEAR(cached_trace[t].entropy[i], scratch_trace[t].entropy[i], 5e-5) << "position " << i;
  }

  // The caches hold the same keys up to fp32 summation order: layer 0's bit for bit, the deeper
  // ones within 1e-5, as the attention over [cache ; chunk] adds in another order than one pass
  // over all keys. The denoiser's logits over them (softcapped at 30) differ by 1.9e-5 at most.
  ASSERT_EQ(cache.length(), scratch_cache.length());
  for (size_t l = 0; l < cache.layers().size(); ++l) {
    EXPECT_LT(test::max_diff(cache.layers()[l].k.value(), scratch_cache.layers()[l].k.value()), 2e-5) << "layer " << l;
    EXPECT_LT(test::max_diff(cache.layers()[l].v.value(), scratch_cache.layers()[l].v.value()), 2e-5) << "layer " << l;
  }
  const Tensor canvas = randint({B, C}, 5108, 0, V), sc = randn({B, C, V}, 5109, DType::F32, 3.0);
  const Tensor a = diffusion::denoise(*m, canvas, cache, sc), b = diffusion::denoise(*m, canvas, scratch_cache, sc);
  EXPECT_LT(test::max_diff(a, b), 3e-5);
  EXPECT_LT(test::max_diff(diffusion::denoise(*m, canvas, cache), diffusion::denoise(*m, canvas, scratch_cache)), 3e-5);
  EXPECT_GT(test::max_diff(a, diffusion::denoise(*m, canvas, scratch_cache)), 1e-3) << "the signal matters";
}

}  // namespace
}  // namespace g4

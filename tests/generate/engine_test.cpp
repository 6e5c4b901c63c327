// The generation engine against the model's own full forward (which equals Hugging Face's): greedy
// tokens and log-probs of many prompts of different lengths in one batch, prefix sharing and copy
// on write, sliding pages given back, preemption, stop strings, cancellation, no page leaks, and
// errors for bad input.
#include "generate/engine.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <random>
#include <set>

#include "autograd/variable.h"
#include "core/random.h"
#include "generate/generator.h"
#include "generate/page_pool.h"
#include "generate/text_stream.h"
#include "io/safetensors.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/hf_fixtures.h"

namespace g4 {
namespace {

using gen::Completion;
using gen::Engine;
using gen::EngineOptions;
using gen::FinishReason;
using gen::kPoolBalanceTokens;
using gen::pool_pages_for_budget;
using gen::PoolPages;
using gen::Request;
using gen::StepHostTimes;
using test::error_of;

// Logits [S, V] of a full forward over `ids`.
Tensor full_logits(const model::Gemma4& m, const std::vector<int64_t>& ids) {
  ag::NoGrad no_grad;
  model::ForwardInputs in;
  in.input_ids = Tensor::from_vector(ids, {1, static_cast<int64_t>(ids.size())});
  in.return_logits = true;
  return m.forward(in).logits.value().reshape({static_cast<int64_t>(ids.size()), -1});
}

// Greedy continuation by repeated full forwards (the lowest id wins ties, as the sampler's argmax).
std::vector<int64_t> greedy_reference(const model::Gemma4& m, std::vector<int64_t> ids, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor logits = full_logits(m, ids);
    const int64_t V = logits.size(1);
    const float* row = logits.data<float>() + (logits.size(0) - 1) * V;
    const int64_t next = std::max_element(row, row + V) - row;
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

// The argmax of one full forward at the position before each generated token: equal to `gen`
// exactly when gen is the greedy continuation of prompt.
std::vector<int64_t> teacher_forced_argmax(const model::Gemma4& m, const std::vector<int64_t>& prompt,
                                           const std::vector<int64_t>& gen) {
  std::vector<int64_t> ids = prompt;
  ids.insert(ids.end(), gen.begin(), gen.end() - (gen.empty() ? 0 : 1));
  const Tensor logits = full_logits(m, ids);
  const int64_t V = logits.size(1), P = static_cast<int64_t>(prompt.size());
  std::vector<int64_t> out;
  for (size_t i = 0; i < gen.size(); ++i) {
    const float* row = logits.data<float>() + (P - 1 + static_cast<int64_t>(i)) * V;
    out.push_back(std::max_element(row, row + V) - row);
  }
  return out;
}

// log_softmax of the full forward's logits at the position before each generated token, in f64.
std::vector<double> reference_logprobs(const model::Gemma4& m, const std::vector<int64_t>& prompt,
                                       const std::vector<gen::GeneratedToken>& gen) {
  std::vector<int64_t> ids = prompt;
  for (size_t i = 0; i + 1 < gen.size(); ++i) ids.push_back(gen[i].id);
  const Tensor logits = full_logits(m, ids);
  const int64_t V = logits.size(1), P = static_cast<int64_t>(prompt.size());
  std::vector<double> out;
  for (size_t i = 0; i < gen.size(); ++i) {
    const float* row = logits.data<float>() + (P - 1 + static_cast<int64_t>(i)) * V;
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(row[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    out.push_back(double(row[gen[i].id]) - mx - std::log(sum));
  }
  return out;
}

std::vector<int64_t> ids_of(const Completion& c) {
  std::vector<int64_t> out;
  for (const auto& t : c.tokens) out.push_back(t.id);
  return out;
}

std::vector<int64_t> some_prompt(int64_t len, int64_t vocab, int64_t salt) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < len; ++i) p.push_back(3 + (i * 37 + salt * 11 + i * i) % (vocab - 3));
  return p;
}

Request greedy_request(std::vector<int64_t> prompt, int64_t max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.options.sampling.temperature = 0;
  r.options.max_tokens = max_tokens;
  r.options.ignore_eos = true;
  r.options.logprobs = 0;
  return r;
}

int64_t used_full(const Engine& e) { return e.stats().full_pages - e.stats().full_free; }
int64_t used_sliding(const Engine& e) { return e.stats().sliding_pages - e.stats().sliding_free; }

void expect_pool_whole(const Engine& e) {
  const gen::PoolStats s = e.stats();
  EXPECT_EQ(s.full_free, s.full_pages);
  EXPECT_EQ(s.sliding_free, s.sliding_pages);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
}

// The test models' ops are far too small to share between threads: on a busy machine, threads
// waiting for each other would take most of the time.
class OneThread {
 public:
  OneThread() : threads_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(threads_); }

 private:
  int threads_;
};

class EngineTest : public ::testing::Test {
  OneThread one_thread_;
};

class EngineFixture : public ::testing::TestWithParam<std::string> {
  OneThread one_thread_;
};

TEST_P(EngineFixture, GreedyBatchOfPromptsOfDifferentLengthsMatchesTheFullForward) {
  const std::string dir = test::hf_fixture_dir(GetParam());
  auto model = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const Tensor prompt = ref.get("generate.prompt"), expected = ref.get("generate.output");
  std::vector<int64_t> fixture_prompt, want;
  for (int64_t i = 0; i < prompt.numel(); ++i) fixture_prompt.push_back(element_as_int(prompt, i));
  for (int64_t i = prompt.numel(); i < expected.numel(); ++i) want.push_back(element_as_int(expected, i));

  // Small pages and steps: prompts span several pages and are prefilled in chunks beside decodes.
  EngineOptions eo;
  eo.page_size = 4;
  eo.max_step_tokens = 16;
  Engine engine(*model, eo);
  const int64_t V = model->config().vocab_size;
  std::vector<Request> requests{greedy_request(fixture_prompt, static_cast<int64_t>(want.size()))};
  for (int64_t len : {1, 6, 13, 27}) requests.push_back(greedy_request(some_prompt(len, V, len), 7));
  const std::vector<Request> asked = requests;
  const std::vector<Completion> done = engine.generate(std::move(requests));
  ASSERT_EQ(done.size(), asked.size());
  EXPECT_EQ(ids_of(done[0]), want) << "Hugging Face's greedy generation";
  double worst = 0;
  for (size_t i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].finish, FinishReason::kLength);
    EXPECT_EQ(done[i].prompt_tokens, static_cast<int64_t>(asked[i].prompt.size()));
    if (i > 0) {
      EXPECT_EQ(done[i].tokens.size(), 7u);
      EXPECT_EQ(ids_of(done[i]), teacher_forced_argmax(*model, asked[i].prompt, ids_of(done[i]))) << "prompt " << i;
    }
    const gen::SampleTimings& t = done[i].timings;
    EXPECT_TRUE(0 <= t.queued_s && t.queued_s <= t.first_token_s && t.first_token_s <= t.total_s) << i;
    const std::vector<double> lp = reference_logprobs(*model, asked[i].prompt, done[i].tokens);
    for (size_t t = 0; t < lp.size(); ++t) worst = std::max(worst, std::abs(lp[t] - done[i].tokens[t].logprob));
  }
  EXPECT_LT(worst, 1e-4) << "log-probs against log_softmax of the full forward";
  expect_pool_whole(engine);
}

TEST_P(EngineFixture, F64LogprobsAreTheFullForwardsToFloatPrecision) {
  // A double-precision model: the engine's f32 log-probs are log_softmax of the f64 forward's
  // logits, rounded once.
  auto model = model::load_hf_model(test::hf_fixture_dir(GetParam()))->copy_to(Device::CPU, DType::F64);
  EngineOptions eo;
  eo.page_size = 4;
  Engine engine(*model, eo);
  const int64_t V = model->config().vocab_size;
  std::vector<Request> requests;
  for (int64_t len : {3, 14}) requests.push_back(greedy_request(some_prompt(len, V, len), 5));
  const std::vector<Completion> done = engine.generate(requests);
  for (size_t i = 0; i < done.size(); ++i) {
    std::vector<int64_t> ids = requests[i].prompt;
    for (size_t t = 0; t + 1 < done[i].tokens.size(); ++t) ids.push_back(done[i].tokens[t].id);
    ag::NoGrad no_grad;
    model::ForwardInputs in;
    in.input_ids = Tensor::from_vector(ids, {1, static_cast<int64_t>(ids.size())});
    const Tensor logits = model->forward(in).logits.value();
    const int64_t P = static_cast<int64_t>(requests[i].prompt.size());
    for (size_t t = 0; t < done[i].tokens.size(); ++t) {
      const double* row = logits.data<double>() + (P - 1 + static_cast<int64_t>(t)) * V;
      double mx = -INFINITY, sum = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, row[v]);
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      const double want = row[done[i].tokens[t].id] - mx - std::log(sum);
      EXPECT_NEAR(done[i].tokens[t].logprob, want, 1e-5 * std::max(1.0, std::abs(want)));
      EXPECT_EQ(done[i].tokens[t].id, std::max_element(row, row + V) - row);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFixture,
                         ::testing::Values("tiny-dense-ple", "tiny-dense-keqv", "tiny-moe", "var-moe-untied",
                                           "var-ple-shared", "var-moe-top1"));

// Peak pages of the full pool over a run to completion.
int64_t run_peak(Engine& e) {
  int64_t peak = 0;
  while (!e.idle()) {
    e.step();
    peak = std::max(peak, used_full(e));
  }
  return peak;
}

TEST_F(EngineTest, SamplesOfOnePromptShareItsPagesAndDrawAsAlone) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  EngineOptions eo;
  eo.page_size = 4;
  Request r;
  r.prompt = some_prompt(30, model->config().vocab_size, 1);  // the last page is partial: copied on write
  r.options.sampling.temperature = 1.5;
  r.options.sampling.seed = 7;
  r.options.max_tokens = 12;
  r.options.ignore_eos = true;
  r.options.logprobs = 0;
  r.options.n = 4;
  Engine shared(*model, eo);
  shared.submit(r);
  const int64_t peak_shared = run_peak(shared);
  std::vector<Completion> together = shared.take_completions();
  ASSERT_EQ(together.size(), 4u);
  std::sort(together.begin(), together.end(), [](const auto& a, const auto& b) { return a.sample < b.sample; });
  expect_pool_whole(shared);

  int64_t peak_alone = 0;
  std::set<std::vector<int64_t>> distinct;
  for (int64_t k = 0; k < 4; ++k) {
    Engine alone(*model, eo);
    Request one = r;
    one.options.n = 1;
    one.options.sampling.seed = 7 + static_cast<uint64_t>(k);
    alone.submit(one);
    peak_alone += run_peak(alone);
    const std::vector<Completion> c = alone.take_completions();
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(ids_of(c[0]), ids_of(together[static_cast<size_t>(k)])) << "sample " << k;
    for (size_t t = 0; t < c[0].tokens.size(); ++t)
      EXPECT_NEAR(c[0].tokens[t].logprob, together[static_cast<size_t>(k)].tokens[t].logprob, 1e-4);
    distinct.insert(ids_of(c[0]));
  }
  EXPECT_GT(distinct.size(), 1u) << "the samples should differ (seed + k)";
  EXPECT_LT(peak_shared, peak_alone);
  EXPECT_LE(peak_shared, 8 + 4 * 4) << "8 shared prompt pages, then about 4 pages per sample";
}

// The host time of each step's phases is counted once per step that ran a forward; the phases add
// up to no more than the run's wall time.
TEST_F(EngineTest, HostTimesCountEachStepsPhases) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-moe"));
  Engine engine(*model, {});
  EXPECT_EQ(engine.host_times().steps, 0);
  Request r;
  r.prompt = some_prompt(9, model->config().vocab_size, 3);
  r.options.max_tokens = 5;
  r.options.ignore_eos = true;
  const auto t0 = std::chrono::steady_clock::now();
  engine.submit(r);
  int64_t steps = 0;
  while (!engine.idle()) {
    engine.step();
    ++steps;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const StepHostTimes t = engine.host_times();
  EXPECT_EQ(t.steps, steps);  // one prefill step, then 4 decode steps
  EXPECT_EQ(t.steps, 5);
  for (const double x : {t.prepare_s, t.forward_s, t.sample_s, t.bookkeeping_s}) EXPECT_GE(x, 0.0);
  EXPECT_GT(t.forward_s, 0.0);
  EXPECT_LE(t.prepare_s + t.forward_s + t.sample_s + t.bookkeeping_s, wall);
}

TEST_F(EngineTest, ANewPromptReusesTheWholePagesOfALiveOne) {
  // tiny-dense-ple has sliding layers (window 8): a reused prefix also needs the sliding keys of
  // the window before it, so it is reused only while the holder has them.
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  const int64_t V = model->config().vocab_size;
  EngineOptions eo;
  eo.page_size = 4;
  Engine engine(*model, eo);
  const std::vector<int64_t> prompt = some_prompt(40, V, 2);
  engine.submit(greedy_request(prompt, 6));
  engine.step();  // the whole prompt, and the first token
  const int64_t alone = used_full(engine);
  EXPECT_EQ(alone, 10);
  std::vector<int64_t> mine(prompt.begin(), prompt.begin() + 37);
  for (int64_t t : {5, 9, 11, 13}) mine.push_back(t);
  // b continues a's prompt: it shares a's 10 pages and the sliding pages of the window before
  // position 40, which a still holds. c departs on page 9: 9 pages match, but a gave back the
  // sliding pages of the window before position 36, so c shares nothing.
  engine.step();  // a's second token
  const std::vector<int64_t> b_prompt = [&] {
    std::vector<int64_t> p = prompt;
    p.push_back(greedy_reference(*model, prompt, 1)[0]);
    return p;
  }();
  const uint64_t b = engine.submit(greedy_request(b_prompt, 4));
  const uint64_t c = engine.submit(greedy_request(mine, 4));
  engine.step();
  EXPECT_EQ(used_full(engine), alone + 1 + 1 + 11) << "a: one more page (its second token); b: one; c: 11";
  while (!engine.idle()) engine.step();
  std::vector<Completion> done = engine.take_completions();
  ASSERT_EQ(done.size(), 3u);
  for (const Completion& d : done) {
    const std::vector<int64_t>& asked = d.request == b ? b_prompt : d.request == c ? mine : prompt;
    EXPECT_EQ(ids_of(d), teacher_forced_argmax(*model, asked, ids_of(d))) << d.request;
    EXPECT_EQ(d.tokens.size(), d.request == b || d.request == c ? 4u : 6u);
  }
  expect_pool_whole(engine);
}

TEST_F(EngineTest, SlidingPagesOutOfTheWindowAreGivenBack) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-keqv"));  // window 8
  EngineOptions eo;
  eo.page_size = 4;
  Engine engine(*model, eo);
  const std::vector<int64_t> prompt = some_prompt(5, model->config().vocab_size, 3);
  engine.submit(greedy_request(prompt, 120));
  int64_t sliding_peak = 0;
  while (!engine.idle()) {
    engine.step();
    sliding_peak = std::max(sliding_peak, used_sliding(engine));
  }
  // Keys p - 7 .. p: at most three pages of 4, and one more while a page fills.
  EXPECT_LE(sliding_peak, 4);
  const std::vector<Completion> done = engine.take_completions();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].tokens.size(), 120u);
  EXPECT_EQ(ids_of(done[0]), teacher_forced_argmax(*model, prompt, ids_of(done[0])));
  expect_pool_whole(engine);
}

// The completions of `requests` in a roomy pool (nothing preempted) and in a pool of `pages` pages
// per kind (some preempted; whole again at the end), pages of 4 tokens.
struct RoomyAndTight {
  std::vector<Completion> want, got;
};
RoomyAndTight run_roomy_and_tight(const model::Gemma4& model, const std::vector<Request>& requests, int64_t pages) {
  EngineOptions big;
  big.page_size = 4;
  Engine roomy(model, big);
  RoomyAndTight out{roomy.generate(requests), {}};
  EXPECT_EQ(roomy.stats().preempted_total, 0);
  EngineOptions small = big;
  small.num_pages = pages;
  Engine tight(model, small);
  out.got = tight.generate(requests);
  EXPECT_GT(tight.stats().preempted_total, 0);
  EXPECT_EQ(out.got.size(), out.want.size());
  expect_pool_whole(tight);
  return out;
}

TEST_F(EngineTest, ATooSmallPoolPreemptsAndStillGivesTheSameTokens) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-moe"));
  const int64_t V = model->config().vocab_size;
  std::vector<Request> requests;
  for (int64_t i = 0; i < 6; ++i) {
    Request r;
    r.prompt = some_prompt(5 + 5 * i, V, 10 + i);
    r.options.sampling.temperature = 1.0;
    r.options.sampling.seed = 100 + static_cast<uint64_t>(i);
    r.options.max_tokens = 20;
    r.options.ignore_eos = true;
    r.options.logprobs = 2;
    r.options.n = i == 2 ? 3 : 1;
    requests.push_back(r);
  }
  // 16 pages: one request at its longest (13 pages) fits, not two.
  const auto [want, got] = run_roomy_and_tight(*model, requests, 16);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(ids_of(got[i]), ids_of(want[i])) << "completion " << i;
    ASSERT_EQ(got[i].tokens.size(), want[i].tokens.size());
    for (size_t t = 0; t < got[i].tokens.size(); ++t) {
      EXPECT_NEAR(got[i].tokens[t].logprob, want[i].tokens[t].logprob, 1e-4);
      EXPECT_EQ(got[i].tokens[t].top_ids, want[i].tokens[t].top_ids);
    }
  }
}

// One character per id: ids below 128 are that ASCII character, ids 128 .. 255 raw bytes (so a
// multi-byte character spans tokens); like Hugging Face, an unfinished character decodes to U+FFFD.
class ByteTokenizer : public io::Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool) const override {
    std::string s;
    for (int32_t id : ids) s += static_cast<char>(id);
    // Cut an unfinished trailing character.
    size_t start = s.size();
    while (start > 0 && (static_cast<unsigned char>(s[start - 1]) & 0xC0) == 0x80) --start;
    if (start > 0 && static_cast<unsigned char>(s[start - 1]) >= 0xC0) {
      const unsigned char lead = static_cast<unsigned char>(s[start - 1]);
      const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
      if (s.size() - (start - 1) < need) s = s.substr(0, start - 1) + "\xEF\xBF\xBD";
    }
    return s;
  }
  int64_t vocab_size() const override { return 256; }
  std::optional<int32_t> token_to_id(const std::string&) const override { return std::nullopt; }
  std::string id_to_token(int32_t id) const override { return std::string(1, static_cast<char>(id)); }
};

TEST_F(EngineTest, StopStringsCutTheTextAndTextDeltasAddUpToIt) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  const std::vector<int64_t> prompt = some_prompt(9, model->config().vocab_size, 4);
  const std::vector<int64_t> ref = greedy_reference(*model, prompt, 24);
  ByteTokenizer tok;
  std::string full;
  for (int64_t id : ref) full += static_cast<char>(id);
  const std::string stop = full.substr(10, 3);
  const size_t cut = full.find(stop);

  EngineOptions eo;
  eo.tokenizer = &tok;
  Engine engine(*model, eo);
  Request r = greedy_request(prompt, 24);
  r.options.stop_strings = {"never there \x01\x02", stop};
  engine.submit(r);
  std::string streamed;
  FinishReason finish = FinishReason::kNone;
  while (!engine.idle())
    for (const gen::Event& e : engine.step()) {
      streamed += e.text_delta;
      if (e.finish != FinishReason::kNone) finish = e.finish;
    }
  const std::vector<Completion> done = engine.take_completions();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(finish, FinishReason::kStop);
  EXPECT_EQ(done[0].finish, FinishReason::kStop);
  // Generation stops at the token completing the stop string; the text ends before it.
  EXPECT_EQ(done[0].text, full.substr(0, cut));
  EXPECT_EQ(streamed, done[0].text);
  EXPECT_EQ(ids_of(done[0]), std::vector<int64_t>(ref.begin(), ref.begin() + static_cast<std::ptrdiff_t>(cut + 3)));
}

TEST_F(EngineTest, TextHoldsBackAnUnfinishedCharacter) {
  ByteTokenizer tok;
  const std::vector<std::string> stops;
  gen::TextStream text(&tok, &stops);
  std::string out;
  for (int64_t id : std::vector<int64_t>{'a', 0xE2, 0x82, 0xAC, 'b'}) {  // "a€b", the euro sign in three tokens
    text.push(id);
    const std::string d = text.take(false);
    EXPECT_EQ(d.find("\xEF\xBF\xBD"), std::string::npos);
    out += d;
  }
  out += text.take(true);
  EXPECT_EQ(out, "a\xE2\x82\xAC" "b");
}

// A model's vocabulary may be wider than its tokenizer's; an untrained model samples ids past the
// tokenizer, which have no text (and must not stop the run).
TEST_F(EngineTest, IdsPastTheTokenizerHaveNoText) {
  ByteTokenizer tok;
  const std::vector<std::string> stops;
  gen::TextStream text(&tok, &stops);
  for (int64_t id : std::vector<int64_t>{'a', tok.vocab_size(), tok.vocab_size() + 1000, 'b'}) EXPECT_FALSE(text.push(id));
  EXPECT_EQ(text.take(true), "ab");
}

TEST_F(EngineTest, EosAndStopIdsEndASample) {
  auto model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  const std::vector<int64_t> prompt = some_prompt(6, model->config().vocab_size, 5);
  const std::vector<int64_t> ref = greedy_reference(*model, prompt, 10);
  EngineOptions eo;
  eo.eos_ids = {ref[3]};
  Engine engine(*model, eo);
  Request r = greedy_request(prompt, 10);
  r.options.ignore_eos = false;
  Request s = greedy_request(prompt, 10);
  s.options.stop_ids = {ref[5]};
  const std::vector<Completion> done = engine.generate({r, s});
  const size_t first_eos = static_cast<size_t>(std::find(ref.begin(), ref.end(), ref[3]) - ref.begin());
  EXPECT_EQ(ids_of(done[0]), std::vector<int64_t>(ref.begin(), ref.begin() + static_cast<std::ptrdiff_t>(first_eos + 1)));
  EXPECT_EQ(done[0].finish, FinishReason::kStop);
  const size_t first_stop = static_cast<size_t>(std::find(ref.begin(), ref.end(), ref[5]) - ref.begin());
  EXPECT_EQ(ids_of(done[1]), std::vector<int64_t>(ref.begin(), ref.begin() + static_cast<std::ptrdiff_t>(first_stop + 1)));
  EXPECT_EQ(done[1].finish, FinishReason::kStop);
}

// A model small enough for thousands of requests: vocabulary 32, two layers (sliding, full).
std::unique_ptr<model::Gemma4> tiny_random_model(int64_t context) {
  const nlohmann::json o = {{"vocab_size", 32}, {"vocab_size_per_layer_input", 32}, {"hidden_size", 16},
                            {"intermediate_size", 16}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                            {"num_key_value_heads", 1}, {"head_dim", 8}, {"global_head_dim", 8},
                            {"num_global_key_value_heads", 1}, {"sliding_window", 6},
                            {"layer_types", {"sliding_attention", "full_attention"}},
                            {"max_position_embeddings", context}};
  auto m = std::make_unique<model::Gemma4>(io::parse_model_config(model::named_config("tiny-dense", o), "tiny model"));
  m->init_weights(5, 0.5);
  return m;
}

TEST_F(EngineTest, TheContextLengthEndsASample) {
  auto model = tiny_random_model(24);
  Engine engine(*model, {});
  const std::vector<Completion> done = engine.generate({greedy_request(some_prompt(20, 32, 6), 10)});
  EXPECT_EQ(done[0].tokens.size(), 4u);
  EXPECT_EQ(done[0].finish, FinishReason::kLength);
  EXPECT_NE(error_of([&] { engine.submit(greedy_request(some_prompt(24, 32, 6), 1)); })
                .find("leaves no room in the model's context (max_position_embeddings 24)"),
            std::string::npos);
}

TEST_F(EngineTest, CancelEndsEverySampleAndFreesThePages) {
  auto model = tiny_random_model(64);
  EngineOptions eo;
  eo.page_size = 4;
  Engine engine(*model, eo);
  Request r = greedy_request(some_prompt(10, 32, 7), 30);
  r.options.n = 3;
  r.options.sampling.temperature = 1;
  const uint64_t id = engine.submit(r);
  engine.step();
  engine.step();
  EXPECT_GT(used_full(engine), 0);
  engine.cancel(id);
  engine.cancel(id);      // twice: ignored
  engine.cancel(id + 9);  // unknown: ignored
  EXPECT_EQ(used_full(engine), 0);
  const std::vector<gen::Event> events = engine.step();
  ASSERT_EQ(events.size(), 3u);
  for (const gen::Event& e : events) EXPECT_EQ(e.finish, FinishReason::kCancelled);
  EXPECT_TRUE(engine.idle());
  const std::vector<Completion> done = engine.take_completions();
  ASSERT_EQ(done.size(), 3u);
  for (const Completion& c : done) {
    EXPECT_EQ(c.finish, FinishReason::kCancelled);
    EXPECT_EQ(c.tokens.size(), 2u);
    EXPECT_STREQ(gen::finish_reason_name(c.finish), "cancelled");
  }
  expect_pool_whole(engine);
}

TEST_F(EngineTest, TenThousandRandomRequestsWithCancellationsLeaveThePoolWhole) {
  auto model = tiny_random_model(64);
  EngineOptions eo;
  eo.page_size = 4;
  eo.num_pages = 40;  // tight: preemption happens
  eo.max_running = 24;
  eo.max_step_tokens = 64;
  Engine engine(*model, eo);
  std::mt19937_64 rng(11);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::vector<uint64_t> live;
  int64_t submitted = 0, finished = 0, cancelled = 0, samples = 0;
  // A few shared prompt starts, so that prefix sharing happens too.
  const std::vector<std::vector<int64_t>> starts = {some_prompt(12, 32, 1), some_prompt(9, 32, 2)};
  while (submitted < 10000 || !engine.idle()) {
    for (int64_t k = uniform(0, 12); k > 0 && submitted < 10000; --k, ++submitted) {
      Request r;
      if (uniform(0, 2) == 0) r.prompt = starts[static_cast<size_t>(uniform(0, 1))];
      for (int64_t n = uniform(r.prompt.empty() ? 1 : 0, 12); n > 0; --n) r.prompt.push_back(uniform(0, 31));
      r.options.max_tokens = uniform(1, 12);
      r.options.sampling.temperature = uniform(0, 1) ? 1.0 : 0.0;
      r.options.sampling.seed = static_cast<uint64_t>(submitted);
      r.options.n = uniform(0, 5) == 0 ? uniform(2, 4) : 1;
      r.options.stop_ids = {uniform(0, 31)};
      samples += r.options.n;
      live.push_back(engine.submit(r));
    }
    if (!live.empty() && uniform(0, 3) == 0) {
      const size_t i = static_cast<size_t>(uniform(0, static_cast<int64_t>(live.size()) - 1));
      engine.cancel(live[i]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    engine.step();
    for (const Completion& c : engine.take_completions()) {
      ++finished;
      cancelled += c.finish == FinishReason::kCancelled;
      EXPECT_LE(static_cast<int64_t>(c.tokens.size()), 12);
    }
    if (live.size() > 200) live.erase(live.begin(), live.begin() + 100);  // long finished, mostly
  }
  EXPECT_EQ(finished, samples);
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(engine.stats().preempted_total, 0);
  expect_pool_whole(engine);
}

TEST_F(EngineTest, BadInputIsAnErrorNamingIt) {
  auto model = tiny_random_model(64);
  Engine engine(*model, {});
  auto err = [&](auto edit) {
    Request r = greedy_request({1, 2, 3}, 4);
    edit(r);
    return error_of([&] { engine.submit(r); });
  };
  EXPECT_NE(err([](Request& r) { r.prompt.clear(); }).find("the prompt is empty"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.prompt[1] = 32; }).find("prompt token 1 is id 32, outside the vocabulary [0, 32)"),
            std::string::npos);
  EXPECT_NE(err([](Request& r) { r.prompt[0] = -1; }).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.max_tokens = 0; }).find("max_tokens must be > 0"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.n = 0; }).find("n must be > 0"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.sampling.temperature = -1; }).find("temperature"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.sampling.top_p = 0; }).find("top_p"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.logprobs = -2; }).find("logprobs"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.logprobs = 1000; }).find("logprobs"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.stop_ids = {40}; }).find("stop id 40"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.options.stop_strings = {"x"}; }).find("stop_strings need a tokenizer"),
            std::string::npos);
  EngineOptions bad;
  bad.page_size = 0;
  EXPECT_NE(error_of([&] { Engine e(*model, bad); }).find("page_size must be > 0"), std::string::npos);
  bad = {};
  bad.max_running = 0;
  EXPECT_NE(error_of([&] { Engine e(*model, bad); }).find("max_running must be > 0"), std::string::npos);
  bad = {};
  bad.eos_ids = {99};
  EXPECT_NE(error_of([&] { Engine e(*model, bad); }).find("eos id 99"), std::string::npos);
  bad = {};
  bad.num_pages = 2;
  EXPECT_NE(error_of([&] { Engine e(*model, bad); }).find("num_pages 2"), std::string::npos);
  bad.num_pages = 3;
  Engine small(*model, bad);
  EXPECT_NE(error_of([&] { small.submit(greedy_request(some_prompt(40, 32, 1), 20)); }).find("needs 4 pages of 16 tokens; the pool has 3"),
            std::string::npos);
  EXPECT_EQ(small.stats().waiting, 0);
}

TEST_F(EngineTest, MaxPagesCapsTheAutomaticPoolAtLeastOneWindowAndStep) {
  // RL's rollouts size the pool to what their requests can hold (rl/rollouts.cpp): the cap is taken
  // as given when above one sliding window and one step's tokens, and that much otherwise.
  auto model = model::load_hf_model(test::hf_fixture_dir("var-ple-shared"));
  const io::ModelConfig& cfg = model->config();
  ASSERT_GT(cfg.sliding_window, 0);
  EngineOptions o;
  o.page_size = 4;
  o.max_step_tokens = 32;
  const int64_t least = (cfg.sliding_window - 1 + 3) / 4 + 1 + 32 / 4;
  const int64_t automatic = Engine(*model, o).stats().full_pages;
  o.max_pages = least + 5;
  ASSERT_LT(o.max_pages, automatic);
  Engine capped(*model, o);
  EXPECT_EQ(capped.stats().full_pages, least + 5);
  EXPECT_EQ(capped.stats().sliding_pages, least + 5);
  o.max_pages = 1;
  Engine floor(*model, o);
  EXPECT_EQ(floor.stats().full_pages, least);
  // It still generates what the uncapped engine does.
  const Request r = greedy_request(some_prompt(9, cfg.vocab_size, 3), 6);
  EXPECT_EQ(capped.generate({r})[0].tokens.size(), 6u);
  o.max_pages = -1;
  EXPECT_NE(error_of([&] { Engine e(*model, o); }).find("max_pages must be >= 0"), std::string::npos);
}

TEST(PoolPagesForBudget, ATightBudgetSplitsThePoolsSoTheyRunOutTogether) {
  // The 26B-A4B on an 80 GB GPU: 27 401 MiB left for pages (what an H100 had after the weights).
  // Every running sequence's window would need about 57 GB of sliding pages, so the engine used to
  // leave the full pool nothing and refuse to start.
  const io::ModelConfig cfg = io::parse_model_config(model::named_config("gemma-4-26b-a4b"), "gemma-4-26b-a4b");
  const int64_t ps = 16, window = cfg.sliding_window;
  const int64_t full = model::page_bytes(cfg, DType::BF16, model::AttnKind::kFull, ps);
  const int64_t sliding = model::page_bytes(cfg, DType::BF16, model::AttnKind::kSliding, ps);
  ASSERT_GT(sliding, 5 * full);
  const int64_t window_pages = gen::window_pages(window, ps), step_pages = 8192 / ps;
  const int64_t wanted = 256 * (window_pages + 1) + step_pages, least = window_pages + step_pages;
  const int64_t budget = int64_t{27401} << 20;
  ASSERT_GT(wanted * sliding, budget);
  const PoolPages n = pool_pages_for_budget(budget, ps, window, full, sliding, wanted, least);
  EXPECT_LE(n.full * full + n.sliding * sliding, budget);
  EXPECT_GT(n.full * full + n.sliding * sliding, budget - full - sliding);  // nothing left unused
  // Sequences of kPoolBalanceTokens exhaust both pools at the same count (to one sequence).
  const int64_t full_each = kPoolBalanceTokens / ps, sliding_each = (std::min(kPoolBalanceTokens, window) + ps - 1) / ps;
  EXPECT_NEAR(static_cast<double>(n.full) / full_each, static_cast<double>(n.sliding) / sliding_each, 1.0);
  // 256 sequences of 320 tokens (g4 bench generate's batch of 256) run together.
  EXPECT_GE(n.sliding, 256 * 20);
  EXPECT_GE(n.full, 256 * 20);

  // With room to spare the sliding pool gets every page it can use, the full pool the rest.
  const int64_t big = wanted * sliding * 4;
  const PoolPages roomy = pool_pages_for_budget(big, ps, window, full, sliding, wanted, least);
  EXPECT_EQ(roomy.sliding, wanted);
  EXPECT_EQ(roomy.full, (big - wanted * sliding) / full);
  // Without sliding layers the full pool takes it all.
  const PoolPages dense = pool_pages_for_budget(budget, ps, 0, full, 0, 0, 0);
  EXPECT_EQ(dense.sliding, 0);
  EXPECT_EQ(dense.full, budget / full);
  // The least sliding pool is kept; below it and one full page the error names the sizes.
  const PoolPages tight = pool_pages_for_budget(least * sliding + 3 * full, ps, window, full, sliding, wanted, least);
  EXPECT_EQ(tight.sliding, least);
  EXPECT_EQ(tight.full, 3);
  const std::string e = error_of([&] { pool_pages_for_budget(least * sliding, ps, window, full, sliding, wanted, least); });
  EXPECT_NE(e.find("cannot hold the sliding layers' least pool (one window of " + std::to_string(window) + " tokens"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("one page of the full-attention layers"), std::string::npos) << e;

  // The 31B on an 80 GB GPU (about 12 GB left for pages): its sliding pages are 13 MB each, so 256
  // windows would need 221 GB; split, the pools hold about ten sequences of 4 096 tokens.
  const io::ModelConfig big_cfg = io::parse_model_config(model::named_config("gemma-4-31b"), "gemma-4-31b");
  const int64_t big_full = model::page_bytes(big_cfg, DType::BF16, model::AttnKind::kFull, ps);
  const int64_t big_sliding = model::page_bytes(big_cfg, DType::BF16, model::AttnKind::kSliding, ps);
  const int64_t big_window_pages = gen::window_pages(big_cfg.sliding_window, ps);
  const PoolPages b = pool_pages_for_budget(int64_t{12000} << 20, ps, big_cfg.sliding_window, big_full, big_sliding,
                                            256 * (big_window_pages + 1) + step_pages, big_window_pages + step_pages);
  EXPECT_GE(b.sliding, big_window_pages + step_pages);
  EXPECT_GE(b.full / full_each, 9);
  EXPECT_GE(b.sliding / sliding_each, 9);
}

TEST_F(EngineTest, GenerateKeepsItsContract) {
  // gen::generate: prompts of different lengths together, each row its prompt then its tokens.
  auto model = model::load_hf_model(test::hf_fixture_dir("var-ple-shared"));
  const int64_t V = model->config().vocab_size;
  const std::vector<std::vector<int64_t>> prompts = {some_prompt(3, V, 1), some_prompt(11, V, 2)};
  gen::GenerateOptions o;
  o.max_new_tokens = 5;
  const auto out = gen::generate(*model, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(out[i].size(), prompts[i].size() + 5);
    const std::vector<int64_t> gen(out[i].begin() + static_cast<std::ptrdiff_t>(prompts[i].size()), out[i].end());
    EXPECT_EQ(std::vector<int64_t>(out[i].begin(), out[i].begin() + static_cast<std::ptrdiff_t>(prompts[i].size())),
              prompts[i]);
    EXPECT_EQ(gen, teacher_forced_argmax(*model, prompts[i], gen));
  }
  o.max_new_tokens = 0;
  EXPECT_EQ(gen::generate(*model, prompts, o), prompts);
}


// --- Images and audio (tiny-mm-e: PLE, audio tower; tiny-mm-bidir: image blocks attend both ways
// on sliding layers). Media are random: images of h x w patches (h·w/9 soft tokens), clips whose
// first frames are valid (ceil(valid / 4) soft tokens), videos of T frames of h x w patches (each
// frame after its timestamp's text, as the processor expands a video).
constexpr int64_t kBoi = 300, kEoi = 301, kImage = 304, kAudio = 305, kVideo = 306;

std::unique_ptr<model::Gemma4> mm_model(const std::string& name) {
  return model::load_hf_model(test::data_dir() + "/hf-gemma4-mm/" + name);
}

// Text ids below the media ids.
std::vector<int64_t> text_tokens(int64_t len, int64_t salt) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < len; ++i) p.push_back(3 + (i * 37 + salt * 11 + i * i) % 290);
  return p;
}

struct MmPrompt {
  std::vector<int64_t> ids{2};  // <bos>
  gen::RequestMedia media;
  std::vector<std::pair<int64_t, int64_t>> grids;  // patches (h, w) of each image
  std::vector<int64_t> valid_frames;               // of each clip
  std::vector<std::pair<int64_t, int64_t>> video_grids;  // patches (h, w) of each video's frames
  int64_t video_frames = 0;                               // frames of every video
  uint64_t seed = 0;
  MmPrompt& text(int64_t len, int64_t salt) {
    const std::vector<int64_t> t = text_tokens(len, salt);
    ids.insert(ids.end(), t.begin(), t.end());
    return *this;
  }
  MmPrompt& image(int64_t h, int64_t w) {
    ids.push_back(kBoi);
    ids.insert(ids.end(), static_cast<size_t>(h * w / 9), kImage);
    ids.push_back(kEoi);
    grids.emplace_back(h, w);
    return *this;
  }
  MmPrompt& video(int64_t frames, int64_t h, int64_t w) {
    for (int64_t f = 0; f < frames; ++f) {
      text(2, 40 + f);  // the frame's timestamp
      ids.push_back(kBoi);
      ids.insert(ids.end(), static_cast<size_t>(h * w / 9), kVideo);
      ids.push_back(kEoi);
    }
    video_grids.emplace_back(h, w);
    video_frames = frames;
    return *this;
  }
  MmPrompt& audio(int64_t valid) {
    ids.insert(ids.end(), static_cast<size_t>((valid + 3) / 4), kAudio);
    valid_frames.push_back(valid);
    return *this;
  }
  // Pixels and patch positions of images of the grids, padded to the largest as the processor pads.
  static std::pair<Tensor, Tensor> patches(const std::vector<std::pair<int64_t, int64_t>>& grids, int64_t p,
                                           uint64_t seed) {
    const int64_t N = static_cast<int64_t>(grids.size());
    int64_t P = 0;
    for (const auto& [h, w] : grids) P = std::max(P, h * w);
    Tensor pixels = rand_uniform({N, P, 3 * p * p}, seed, 0.0, 1.0);
    Tensor positions = Tensor::full({N, P, 2}, -1.0, DType::I64);
    for (int64_t i = 0; i < N; ++i) {
      const auto [h, w] = grids[static_cast<size_t>(i)];
      int64_t* at = positions.data<int64_t>() + i * P * 2;
      for (int64_t k = 0; k < h * w; ++k) {
        at[2 * k] = k % w;
        at[2 * k + 1] = k / w;
      }
      for (int64_t k = h * w; k < P; ++k)
        for (int64_t c = 0; c < 3 * p * p; ++c) pixels.data<float>()[(i * P + k) * 3 * p * p + c] = 0;
    }
    return {pixels, positions};
  }
  // The processors' tensors for the media added, from `seed` (padding as the processors pad).
  MmPrompt& make(const model::Gemma4& m, uint64_t media_seed) {
    seed = media_seed;
    const int64_t p = m.config().vision ? m.config().vision->patch_size : 0;
    if (!grids.empty()) std::tie(media.pixel_values, media.image_position_ids) = patches(grids, p, seed);
    if (!video_grids.empty()) {
      // Every frame of video v has its grid; frames in (video, frame) order.
      std::vector<std::pair<int64_t, int64_t>> frames;
      for (const auto& g : video_grids) frames.insert(frames.end(), static_cast<size_t>(video_frames), g);
      auto [pixels, at] = patches(frames, p, seed + 2);
      const int64_t V = static_cast<int64_t>(video_grids.size()), P = at.size(1);
      media.pixel_values_videos = pixels.reshape({V, video_frames, P, 3 * p * p});
      media.video_position_ids = at.reshape({V, video_frames, P, 2});
    }
    if (!valid_frames.empty()) {
      const int64_t C = static_cast<int64_t>(valid_frames.size());
      const int64_t F = *std::max_element(valid_frames.begin(), valid_frames.end()) + 5;
      media.input_features = randn({C, F, 128}, seed + 1);
      media.input_features_mask = Tensor::zeros({C, F}, DType::Bool);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t f = 0; f < F; ++f) {
          const bool valid = f < valid_frames[static_cast<size_t>(c)];
          static_cast<uint8_t*>(media.input_features_mask.raw())[c * F + f] = valid;
          if (!valid) media.input_features.reshape({C * F, 128}).slice0(c * F + f, 1).fill(0.0);
        }
    }
    return *this;
  }
  Request request(int64_t max_tokens) const {
    Request r = greedy_request(ids, max_tokens);
    r.media = media;
    return r;
  }
};

// Greedy continuation by repeated full forwards with the prompt's media (mm_token_type_ids too, so
// a bidirectional-vision model's forward applies its image blocks).
std::vector<int64_t> mm_greedy_reference(const model::Gemma4& m, const MmPrompt& p, int64_t n) {
  std::vector<int64_t> ids = p.ids, out;
  for (int64_t i = 0; i < n; ++i) {
    ag::NoGrad no_grad;
    model::ForwardInputs in;
    const int64_t S = static_cast<int64_t>(ids.size());
    in.input_ids = Tensor::from_vector(ids, {1, S});
    std::vector<int64_t> types;
    for (int64_t id : ids) types.push_back(id == kImage ? 1 : id == kVideo ? 2 : id == kAudio ? 3 : 0);
    in.mm_token_type_ids = Tensor::from_vector(types, {1, S});
    in.pixel_values = p.media.pixel_values;
    in.image_position_ids = p.media.image_position_ids;
    in.pixel_values_videos = p.media.pixel_values_videos;
    in.video_position_ids = p.media.video_position_ids;
    in.input_features = p.media.input_features;
    in.input_features_mask = p.media.input_features_mask;
    const Tensor logits = m.forward(in).logits.value().reshape({S, -1});
    const int64_t V = logits.size(1);
    const float* row = logits.data<float>() + (S - 1) * V;
    out.push_back(std::max_element(row, row + V) - row);
    ids.push_back(out.back());
  }
  return out;
}

// The prompts in one engine (pages of 4, steps of max_step_tokens): 6 greedy tokens each, equal to
// the full forward's greedy continuation.
void expect_greedy_as_the_full_forward(const model::Gemma4& model, const std::vector<MmPrompt>& prompts,
                                       int64_t max_step_tokens) {
  EngineOptions eo;
  eo.page_size = 4;
  eo.max_step_tokens = max_step_tokens;
  Engine engine(model, eo);
  std::vector<Request> requests;
  for (const MmPrompt& p : prompts) requests.push_back(p.request(6));
  const std::vector<Completion> done = engine.generate(requests);
  ASSERT_EQ(done.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(ids_of(done[i]), mm_greedy_reference(model, prompts[i], 6)) << "prompt " << i;
  expect_pool_whole(engine);
}

TEST_F(EngineTest, ImagesAndAudioInABatchGenerateAsTheFullForward) {
  auto model = mm_model("tiny-mm-e");
  std::vector<MmPrompt> prompts(4);
  prompts[0].text(5, 1).image(9, 12).text(7, 2).make(*model, 11);                 // 12 soft tokens
  prompts[1].text(20, 3);                                                           // text only
  prompts[2].text(3, 4).image(6, 6).text(4, 5).image(3, 9).text(6, 6).make(*model, 12);  // 4 + 3
  prompts[3].text(4, 7).audio(41).text(3, 8).image(6, 9).text(5, 9).make(*model, 13);   // 11 audio + 6
  // Small steps: every prompt is prefilled in chunks, beside the others' decodes.
  expect_greedy_as_the_full_forward(*model, prompts, 8);
}

TEST_F(EngineTest, ImageBlocksOfABidirectionalModelArePrefilledWhole) {
  auto model = mm_model("tiny-mm-bidir");  // sliding window 8
  std::vector<MmPrompt> prompts(3);
  prompts[0].text(6, 1).image(9, 12).text(5, 2).make(*model, 21);                  // a block of 12 > window
  prompts[1].text(2, 3).image(6, 6).text(1, 4).image(9, 9).text(4, 5).make(*model, 22);  // 4 and 9
  prompts[2].text(11, 6);
  // Blocks fit a step of 16; a chunk that would cut one stops before it. (A causal prefill of the
  // blocks gives other tokens: the bidirectional visibility is what makes them equal.)
  expect_greedy_as_the_full_forward(*model, prompts, 16);

  EngineOptions small;
  small.page_size = 4;
  small.max_step_tokens = 11;
  Engine tight(*model, small);
  EXPECT_NE(error_of([&] { tight.submit(prompts[0].request(2)); })
                .find("the image block at prompt positions [8, 20) has 12 tokens, more than one step takes (11"),
            std::string::npos);
}

// One long prompt in steps of 100 tokens: the first attends over its own keys, the next two over
// the keys the sequence holds (model::PagedStep::dense, the sliding layers' from inside the window),
// the rest of the prompt and the decode steps through the paged kernel; the tokens are the full
// forward's.
TEST_F(EngineTest, LongPromptChunksAfterHeldKeysGenerateAsTheFullForward) {
  auto model = mm_model("tiny-mm-e");
  std::vector<MmPrompt> prompts(1);
  prompts[0].text(330, 5);
  expect_greedy_as_the_full_forward(*model, prompts, 100);
}

// A 3-frame video beside an image, a clip and a text prompt, prefilled in chunks of 8 (tiny-mm-e)
// or 16 (tiny-mm-bidir, where each frame is its own bidirectional block, as the forward's
// vision_block_ids makes it).
TEST_F(EngineTest, VideosGenerateAsTheFullForward) {
  for (const auto& [name, step] : {std::pair<const char*, int64_t>{"tiny-mm-e", 8}, {"tiny-mm-bidir", 16}}) {
    SCOPED_TRACE(name);
    auto model = mm_model(name);
    std::vector<MmPrompt> prompts(3);
    prompts[0].text(4, 1).video(3, 6, 9).text(5, 2).make(*model, 71);  // 3 frames of 6 soft tokens
    prompts[1].text(9, 3);
    prompts[2].text(3, 4).image(6, 6).text(2, 5).video(3, 9, 9).text(3, 6);  // image 4, frames of 9
    if (model->config().has_audio) prompts[2].audio(21);
    prompts[2].text(2, 7).make(*model, 72);
    expect_greedy_as_the_full_forward(*model, prompts, step);
  }
}

// Also for videos: 3 frames of 4 soft tokens, each after its timestamp, in the same 32 tokens.
TEST_F(EngineTest, SamePlaceholdersOfDifferentImagesOrVideosNeverSharePages) {
  for (const auto& [name, video] : {std::pair<const char*, bool>{"tiny-mm-e", false}, {"tiny-mm-bidir", false},
                                    {"tiny-mm-e", true}, {"tiny-mm-bidir", true}}) {
    SCOPED_TRACE(std::string(name) + (video ? " video" : " image"));
    auto model = mm_model(name);
    const auto media = [&](MmPrompt& p) -> MmPrompt& {
      return video ? p.video(3, 6, 6).text(4, 2) : p.image(12, 12).text(10, 2);
    };
    MmPrompt a, b;
    media(a.text(3, 1)).make(*model, 31);  // 32 tokens, 16 (image) or 12 (video) of them soft
    media(b.text(3, 1)).make(*model, 32);  // the same ids, another image or video
    ASSERT_EQ(a.ids.size(), 32u);
    MmPrompt a2 = a;
    for (MmPrompt* p : {&a2, &b}) p->ids.push_back(7);  // one more token: a's 8 whole pages match
    EngineOptions eo;
    eo.page_size = 4;
    std::vector<std::vector<int64_t>> solo;
    for (const MmPrompt* p : {&a, &b, &a2}) {
      Engine alone(*model, eo);
      solo.push_back(ids_of(alone.generate({p->request(5)})[0]));
    }
    EXPECT_NE(solo[0], solo[1]) << "different media should give different tokens";
    // The second prompt arrives while a holds its 8 prompt pages (and the sliding pages of the
    // window before its end); in that step a's next token takes a ninth page.
    const auto pages_added = [&](const MmPrompt& second, size_t want) {
      Engine engine(*model, eo);
      engine.submit(a.request(5));
      engine.step();
      const int64_t alone = used_full(engine);
      EXPECT_EQ(alone, 8);
      const uint64_t id = engine.submit(second.request(5));
      engine.step();
      const int64_t added = used_full(engine) - alone;
      while (!engine.idle()) engine.step();
      for (const Completion& c : engine.take_completions())
        EXPECT_EQ(ids_of(c), solo[c.request == id ? want : 0]) << c.request;
      expect_pool_whole(engine);
      return added;
    };
    EXPECT_EQ(pages_added(b, 1), 1 + 9) << "b computes all of its 9 pages";
    EXPECT_EQ(pages_added(a2, 2), 1 + 1) << "a2 reuses a's 8 pages and computes its last token on a new one";
  }
}

TEST_F(EngineTest, PreemptedRequestsWithMediaGiveTheSameTokens) {
  auto model = mm_model("tiny-mm-e");
  std::vector<Request> requests;
  for (int64_t i = 0; i < 5; ++i) {
    MmPrompt p;
    p.text(3 + i, i).image(6, 9).text(2, i + 1);
    if (i % 2 == 1) p.audio(13 + 4 * i);
    p.text(3, i + 2).make(*model, 40 + static_cast<uint64_t>(i));
    Request r = p.request(16);
    r.options.sampling.temperature = 1.0;
    r.options.sampling.seed = 50 + static_cast<uint64_t>(i);
    requests.push_back(r);
  }
  // 14 pages: one request at its longest fits, not two.
  const auto [want, got] = run_roomy_and_tight(*model, requests, 14);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(ids_of(got[i]), ids_of(want[i])) << "completion " << i;
}

TEST_F(EngineTest, BadMediaIsAnErrorNamingIt) {
  auto model = mm_model("tiny-mm-e");
  Engine engine(*model, {});
  MmPrompt p;
  p.text(3, 1).image(6, 6).text(2, 2).make(*model, 60);
  const auto err = [&](const std::function<void(Request&)>& edit) {
    Request r = p.request(2);
    edit(r);
    return error_of([&] { engine.submit(r); });
  };
  EXPECT_NE(err([](Request& r) { r.media = {}; }).find("the prompt holds 4 image placeholders (id 304) but its images give 0"),
            std::string::npos);
  EXPECT_NE(err([](Request& r) { r.prompt.push_back(kImage); }).find("5 image placeholders"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.prompt.push_back(kVideo); }).find("1 video placeholders (id 306) but its videos give 0"),
            std::string::npos);
  EXPECT_NE(err([](Request& r) { r.media.pixel_values_videos = r.media.pixel_values; }).find("together"),
            std::string::npos);
  EXPECT_NE(err([](Request& r) {
              r.media.pixel_values_videos = r.media.pixel_values;
              r.media.video_position_ids = r.media.image_position_ids;
            }).find("must be [videos, frames, patches, 3·patch²]"),
            std::string::npos);
  EXPECT_NE(err([](Request& r) { r.media.image_position_ids = Tensor(); }).find("together"), std::string::npos);
  EXPECT_NE(err([](Request& r) { r.prompt.push_back(kAudio); }).find("1 audio placeholders (id 305) but its clips give 0"),
            std::string::npos);
  auto text_model = model::load_hf_model(test::hf_fixture_dir("tiny-dense-ple"));
  Engine text(*text_model, {});
  Request r = p.request(2);
  r.prompt = {2, 5, 6};
  EXPECT_NE(error_of([&] { text.submit(r); }).find("images given, but the model has no vision tower"), std::string::npos);
  EXPECT_EQ(engine.stats().waiting, 0);
}

}  // namespace
}  // namespace g4

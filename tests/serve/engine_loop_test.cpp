// The server's engine thread on a real (tiny) engine: results arrive on the channels, a cancel
// frees the pages, a refused request and a shutdown end their channels with a status.
#include "serve/engine_loop.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4::serve {
namespace {

gen::Request request(std::vector<int64_t> prompt, int64_t max_tokens, int64_t n = 1) {
  gen::Request r;
  r.prompt = std::move(prompt);
  r.options.max_tokens = max_tokens;
  r.options.n = n;
  r.options.ignore_eos = true;
  r.options.sampling.temperature = 1.0;
  r.options.sampling.seed = 5;
  return r;
}

// Waits (at most 60 s) for the channel to end, returning the events it streamed.
std::vector<gen::Event> drain(Channel& channel) {
  std::vector<gen::Event> all;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool done = false;
  while (!done && std::chrono::steady_clock::now() < deadline)
    for (gen::Event& e : channel.wait(100, done)) all.push_back(std::move(e));
  EXPECT_TRUE(done);
  return all;
}

EngineLoop::Stats wait_idle(const EngineLoop& loop) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  EngineLoop::Stats s = loop.stats();
  while ((s.requests > 0 || s.pool.running > 0 || s.pool.waiting > 0) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = loop.stats();
  }
  return s;
}

TEST(EngineLoop, ResultsCancelsRefusalsAndShutdown) {
  const auto model = model::load_hf_model(test::data_dir() + "/hf-gemma4/tiny-dense-ple");
  gen::EngineOptions options;
  options.max_running = 8;
  gen::Engine engine(*model, options);
  EngineLoop loop(engine);

  // A whole request with two samples, and a stream beside it.
  auto whole = loop.submit(request({2, 10, 11, 12}, 6, 2), false);
  auto stream = loop.submit(request({2, 30}, 5), true);
  EXPECT_TRUE(stream->wait_accepted());
  drain(*whole);
  EXPECT_EQ(whole->error(), "");
  const std::vector<gen::Completion> samples = whole->completions();
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].sample, 0);
  EXPECT_EQ(samples[1].sample, 1);
  EXPECT_EQ(samples[0].tokens.size(), 6u);
  int64_t streamed = 0;
  for (const gen::Event& e : drain(*stream)) streamed += static_cast<int64_t>(e.tokens.size());
  EXPECT_EQ(streamed, 5);
  ASSERT_EQ(stream->completions().size(), 1u);
  EXPECT_EQ(stream->completions()[0].finish, gen::FinishReason::kLength);

  // A long request cancelled once it runs: its pages come back.
  auto longer = loop.submit(request({2, 40, 41}, 3000), true);
  bool done = false;
  while (longer->wait(1000, done).empty() && !done) {
  }
  ASSERT_FALSE(done);
  EXPECT_LT(loop.stats().pool.full_free, loop.stats().pool.full_pages);
  loop.cancel(longer);
  drain(*longer);
  EXPECT_EQ(longer->error_status(), 499);
  const EngineLoop::Stats idle = wait_idle(loop);
  EXPECT_EQ(idle.requests, 0);
  EXPECT_EQ(idle.pool.full_free, idle.pool.full_pages);
  EXPECT_EQ(idle.pool.sliding_free, idle.pool.sliding_pages);
  EXPECT_EQ(idle.error, "");

  // The engine refuses a request: its channel ends with a 400 and the engine's message.
  auto refused = loop.submit(request({2, 999}, 3), true);
  EXPECT_FALSE(refused->wait_accepted());
  drain(*refused);
  EXPECT_EQ(refused->error_status(), 400);
  EXPECT_NE(refused->error().find("999"), std::string::npos) << refused->error();

  // Shutdown ends what runs and refuses what comes after.
  auto running = loop.submit(request({2, 50}, 3000), true);
  while (running->wait(1000, done).empty() && !done) {
  }
  loop.shutdown();
  drain(*running);
  EXPECT_EQ(running->error_status(), 503);
  auto late = loop.submit(request({2, 60}, 3), false);
  drain(*late);
  EXPECT_EQ(late->error_status(), 503);
}

}  // namespace
}  // namespace g4::serve

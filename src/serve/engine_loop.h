// The engine behind the server: one thread owns the gen::Engine (which is not thread-safe) and
// steps it while anything runs; HTTP threads hand it submissions and cancels through a queue and
// wait on their request's Channel for what the engine reports.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "generate/engine.h"

namespace g4::serve {

// What the engine reported for one request, filled by the loop thread, read by one HTTP thread.
class Channel {
 public:
  explicit Channel(bool stream) : stream_(stream) {}
  // Waits at most `timeout_ms` for something new: events (when streaming) or the end.
  // Returns the events taken; `done` tells whether the request has ended (completions or error).
  std::vector<gen::Event> wait(int timeout_ms, bool& done);
  // Waits until the engine has taken the request (true) or refused it (false: error() says why).
  bool wait_accepted();
  // After done: the completions in sample order, or the error that ended the request.
  std::vector<gen::Completion> completions() const;
  std::string error() const;  // "" when none
  int error_status() const;   // the HTTP status that fits the error: 400 refused, 500 failed, 503 shutting down

 private:
  friend class EngineLoop;
  void push(std::vector<gen::Event> events);
  void push(gen::Completion completion);
  void fail(int status, const std::string& message);
  void accept();

  const bool stream_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<gen::Event> events_;
  std::vector<gen::Completion> completions_;
  int64_t expected_ = 0;  // samples (the request's n)
  bool done_ = false, accepted_ = false;
  std::string error_;
  int error_status_ = 0;
  uint64_t id_ = 0;  // the engine's id once submitted (loop thread only)
  bool submitted_ = false, cancelled_ = false;
};

class EngineLoop {
 public:
  explicit EngineLoop(gen::Engine& engine);
  ~EngineLoop();  // cancels what is left and joins the thread
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request; what happens to it arrives on the returned channel (an engine that refuses
  // it ends the channel with the error).
  std::shared_ptr<Channel> submit(gen::Request request, bool stream);
  // Ends the request (a client went away): its samples stop and its pages are freed at the next step.
  void cancel(const std::shared_ptr<Channel>& channel);
  // Cancels everything and stops the thread; later submissions end at once with an error.
  void shutdown();

  struct Stats {
    gen::PoolStats pool;
    int64_t requests = 0;  // submitted and not yet finished (includes those still queued)
    int64_t steps = 0;
    std::string error;  // the last failure of Engine::step ("" when none)
  };
  Stats stats() const;

 private:
  void run();
  void apply(std::deque<std::pair<gen::Request, std::shared_ptr<Channel>>>& submits,
             std::vector<std::shared_ptr<Channel>>& cancels);
  void route(std::vector<gen::Event> events);

  gen::Engine& engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<gen::Request, std::shared_ptr<Channel>>> submits_;
  std::vector<std::shared_ptr<Channel>> cancels_;
  bool stopping_ = false;
  Stats stats_;
  // Loop thread only: the channels of the requests in the engine.
  std::unordered_map<uint64_t, std::shared_ptr<Channel>> live_;
  std::thread thread_;
};

}  // namespace g4::serve

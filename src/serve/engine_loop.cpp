#include "serve/engine_loop.h"

#include <algorithm>
#include <chrono>

#include "core/log.h"

namespace g4::serve {

std::vector<gen::Event> Channel::wait(int timeout_ms, bool& done) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return done_ || !events_.empty(); });
  std::vector<gen::Event> out;
  out.swap(events_);
  done = done_;
  return out;
}

bool Channel::wait_accepted() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return accepted_ || done_; });
  return accepted_;
}

void Channel::accept() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepted_ = true;
  }
  cv_.notify_all();
}

std::vector<gen::Completion> Channel::completions() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<gen::Completion> out = completions_;
  std::sort(out.begin(), out.end(),
            [](const gen::Completion& a, const gen::Completion& b) { return a.sample < b.sample; });
  return out;
}

std::string Channel::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Channel::push(std::vector<gen::Event> events) {
  if (!stream_ || events.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (gen::Event& e : events) events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Channel::push(gen::Completion completion) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    completions_.push_back(std::move(completion));
    done_ = static_cast<int64_t>(completions_.size()) >= expected_;
  }
  cv_.notify_all();
}

int Channel::error_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_status_;
}

void Channel::fail(int status, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    error_ = message;
    error_status_ = status;
    done_ = true;
  }
  cv_.notify_all();
}

EngineLoop::EngineLoop(gen::Engine& engine) : engine_(engine) {
  stats_.pool = engine_.stats();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Channel> EngineLoop::submit(gen::Request request, bool stream) {
  auto channel = std::make_shared<Channel>(stream);
  channel->expected_ = request.options.n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      channel->fail(503, "the server is shutting down");
      return channel;
    }
    submits_.emplace_back(std::move(request), channel);
    ++stats_.requests;
  }
  cv_.notify_all();
  return channel;
}

void EngineLoop::cancel(const std::shared_ptr<Channel>& channel) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(channel);
  }
  cv_.notify_all();
}

void EngineLoop::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

EngineLoop::Stats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void EngineLoop::apply(std::deque<std::pair<gen::Request, std::shared_ptr<Channel>>>& submits,
                       std::vector<std::shared_ptr<Channel>>& cancels) {
  for (auto& [request, channel] : submits) {
    try {
      channel->id_ = engine_.submit(std::move(request));
      channel->submitted_ = true;
      live_[channel->id_] = channel;
      channel->accept();
    } catch (const std::exception& e) {
      channel->fail(400, e.what());  // the engine names the field it refuses
    }
  }
  for (const std::shared_ptr<Channel>& channel : cancels) {
    if (!channel->submitted_ || channel->cancelled_) continue;
    channel->cancelled_ = true;
    engine_.cancel(channel->id_);
    live_.erase(channel->id_);
    channel->fail(499, "cancelled");
  }
}

void EngineLoop::route(std::vector<gen::Event> events) {
  std::unordered_map<uint64_t, std::vector<gen::Event>> by_request;
  for (gen::Event& e : events)
    if (live_.count(e.request)) by_request[e.request].push_back(std::move(e));
  for (auto& [id, list] : by_request) live_[id]->push(std::move(list));
  for (gen::Completion& c : engine_.take_completions()) {
    const auto it = live_.find(c.request);
    if (it == live_.end()) continue;  // cancelled: nobody waits for it
    const std::shared_ptr<Channel> channel = it->second;
    channel->push(std::move(c));
    bool done = false;
    {
      std::lock_guard<std::mutex> lock(channel->mu_);
      done = channel->done_;
    }
    if (done) live_.erase(it);
  }
}

void EngineLoop::run() {
  for (;;) {
    std::deque<std::pair<gen::Request, std::shared_ptr<Channel>>> submits;
    std::vector<std::shared_ptr<Channel>> cancels;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !submits_.empty() || !cancels_.empty() || !engine_.idle(); });
      submits.swap(submits_);
      cancels.swap(cancels_);
      stopping = stopping_;
    }
    if (stopping) {
      // Everything still queued or running ends; the engine frees the pages of what it cancels.
      for (auto& [request, channel] : submits) channel->fail(503, "the server is shutting down");
      for (auto& [id, channel] : live_) {
        engine_.cancel(id);
        channel->fail(503, "the server is shutting down");
      }
      live_.clear();
      std::lock_guard<std::mutex> lock(mu_);
      stats_.requests = 0;
      return;
    }
    apply(submits, cancels);
    std::string error;
    std::vector<gen::Event> events;
    const bool step = !engine_.idle();
    if (step) {
      try {
        events = engine_.step();
      } catch (const std::exception& e) {
        // The engine's state after a failed step is unknown: end every request it holds.
        error = e.what();
        G4_LOG("serve: engine step failed: ", error);
        for (auto& [id, channel] : live_) {
          engine_.cancel(id);
          channel->fail(500, std::string("internal error: ") + error);
        }
        live_.clear();
      }
    }
    {
      // Before the events go out, so that a client that has seen a token sees the pages it took.
      std::lock_guard<std::mutex> lock(mu_);
      stats_.pool = engine_.stats();
      if (step) ++stats_.steps;
      if (!error.empty()) stats_.error = error;
    }
    route(std::move(events));
    std::lock_guard<std::mutex> lock(mu_);
    stats_.requests = static_cast<int64_t>(submits_.size() + live_.size());
  }
}

}  // namespace g4::serve

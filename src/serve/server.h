// `g4 serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of an EngineLoop.
//   GET  /health               status, in-flight requests and the page pools (tests check them)
//   GET  /v1/models            the one served model
//   POST /v1/completions       prompt (text or token ids)
//   POST /v1/chat/completions  messages through the Gemma 4 chat template
// Both POSTs answer whole or as server-sent events (stream: true); a streaming client that goes
// away cancels its request, which frees its pages.
#pragma once
#include <memory>
#include <string>

#include "serve/engine_loop.h"
#include "serve/request.h"

namespace g4::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: any free port (bind() tells which)
  std::string model_name;  // the name clients send as "model"
  int threads = 64;        // HTTP worker threads: each open stream holds one
  // A non-streamed reply not ready after this long is sent chunked (status 200 committed, a space
  // every second until the body), so that a client that leaves is noticed and its request cancelled.
  int whole_reply_patience_ms = 5000;
};

class Server {
 public:
  Server(EngineLoop& loop, ModelInfo model, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns the port. Throws a g4::Error when it cannot.
  int bind();
  // Serves until stop() (from another thread or a signal handler's thread).
  void listen();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace g4::serve

#include "serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <sstream>

#include "core/clock.h"
#include "io/json_input.h"
#include "serve/openai.h"

namespace g4::serve {

using nlohmann::json;

namespace {

constexpr size_t kMaxBodyBytes = 64 * io::kMiB;
// A stream with nothing to send for this long gets an SSE comment, so that a client that went
// away is noticed (a write fails) even while its request waits for pages.
constexpr int kKeepAliveMs = 1000;
constexpr int kPollMs = 100;



std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void reply_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

// One line per request on stderr; handler threads would interleave the parts of a G4_LOG.
void log_line(const std::string& line) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << "[g4] serve: " << line << std::endl;
}

std::string fixed3(double v) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << v;
  return os.str();
}

std::string request_line(const std::string& method, const std::string& path, int status, double seconds,
                         const std::string& detail) {
  return method + " " + path + " " + std::to_string(status) + " " + fixed3(seconds) + "s" +
         (detail.empty() ? "" : " " + detail);
}

std::string counts(int64_t prompt, int64_t completion, int64_t n, bool stream) {
  std::ostringstream os;
  os << "prompt=" << prompt << " completion=" << completion << " n=" << n << (stream ? " stream" : "");
  return os.str();
}

int64_t generated_tokens(const std::vector<gen::Completion>& samples) {
  int64_t total = 0;
  for (const gen::Completion& c : samples) total += static_cast<int64_t>(c.tokens.size());
  return total;
}

// What one streaming response keeps between calls of its content provider.
struct StreamState {
  std::shared_ptr<Channel> channel;
  ResponseHead head;
  bool include_usage = false;
  int64_t prompt_tokens = 0, completion_tokens = 0, n = 1;
  std::vector<bool> started;
  std::vector<int64_t> text_offsets;  // per sample: characters of its log-prob tokens so far
  Clock::time_point t0, last_write;
  bool finished = false;
};

// The methods a route takes ("" for an unknown path).
std::string allowed_methods(const std::string& path) {
  if (path == "/v1/completions" || path == "/v1/chat/completions") return "POST";
  if (path == "/health" || path == "/v1/models" || path.rfind("/v1/models/", 0) == 0) return "GET";
  return "";
}

}  // namespace

struct Server::Impl {
  EngineLoop& loop;
  ModelInfo model;
  ServerOptions options;
  httplib::Server http;
  int64_t started = 0;

  Impl(EngineLoop& l, ModelInfo m, ServerOptions o) : loop(l), model(std::move(m)), options(std::move(o)) {}

  json model_card() const {
    return {{"id", options.model_name},
            {"object", "model"},
            {"created", started},
            {"owned_by", "g4"},
            {"max_model_len", model.context_len}};
  }

  json health() const {
    const EngineLoop::Stats s = loop.stats();
    return {{"status", s.error.empty() ? "ok" : "degraded"},
            {"model", options.model_name},
            {"requests", s.requests},
            {"steps", s.steps},
            {"error", s.error},
            {"pool",
             {{"full_pages", s.pool.full_pages},
              {"full_free", s.pool.full_free},
              {"sliding_pages", s.pool.sliding_pages},
              {"sliding_free", s.pool.sliding_free},
              {"running", s.pool.running},
              {"waiting", s.pool.waiting},
              {"preempted_total", s.pool.preempted_total}}}};
  }

  void routes() {
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) { reply_json(res, 200, health()); });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      reply_json(res, 200, {{"object", "list"}, {"data", json::array({model_card()})}});
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.matches[1] == options.model_name) return reply_json(res, 200, model_card());
      reply_json(res, 404, error_body(unknown_model(req.matches[1])));
    });
    http.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, Api::Completions); });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, Api::Chat); });
    // Unknown routes (and anything else that ends in an error without a body) answer in the
    // OpenAI error shape too.
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      // cpp-httplib answers a known path asked with another method 404; HTTP (and vLLM's server)
      // say 405 with the methods it takes.
      const std::string allow = allowed_methods(req.path);
      if (res.status == 404 && !allow.empty()) {
        res.status = 405;
        res.set_header("Allow", allow);
      }
      const std::string message =
          res.status == 404   ? "no route " + req.method + " " + req.path
          : res.status == 405 ? req.path + " takes " + allow + ", not " + req.method
          : res.status == 413 ? "the request body is over the limit of " + std::to_string(kMaxBodyBytes / io::kMiB) +
                                    " MiB"
                              : "HTTP error " + std::to_string(res.status);
      res.set_content(dump(error_body(res.status, message)), "application/json");
      log_line(request_line(req.method, req.path, res.status, 0, ""));
    });
    http.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string message = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        message += std::string(": ") + e.what();
      } catch (...) {
      }
      reply_json(res, 500, error_body(500, message));
      log_line(request_line(req.method, req.path, 500, 0, message));
    });
  }

  RequestError unknown_model(const std::string& name) const {
    return RequestError(404, "model",
                        "the model '" + name + "' does not exist; this server serves '" + options.model_name + "'",
                        "model_not_found");
  }

  void generate(const httplib::Request& req, httplib::Response& res, Api api) {
    const Clock::time_point t0 = Clock::now();
    ParsedRequest p;
    try {
      const json body = [&] {
        try {
          return io::parse_json(req.body, "the request body", kMaxBodyBytes);
        } catch (const Error& e) {
          throw RequestError(400, "", e.what());
        }
      }();
      p = parse_request(body, api, model, api_defaults(api));
      if (!p.model.empty() && p.model != options.model_name) throw unknown_model(p.model);
    } catch (const RequestError& e) {
      reply_json(res, e.status(), error_body(e));
      log_line(request_line(req.method, req.path, e.status(), seconds_since(t0), "error: " + std::string(e.what())));
      return;
    }
    ResponseHead head = new_head(api == Api::Chat, options.model_name, p.request.options.logprobs);
    head.tokens_as_ids = p.tokens_as_ids;
    const int64_t prompt_tokens = static_cast<int64_t>(p.request.prompt.size());
    const int64_t n = p.request.options.n;
    auto channel = loop.submit(std::move(p.request), p.stream);
    // A refusal (the request cannot fit the page pool, ...) is still a status code, not an event
    // in a stream that has already answered 200.
    if (!channel->wait_accepted()) {
      const int status = channel->error_status();
      reply_json(res, status, error_body(status, channel->error()));
      log_line(request_line(req.method, req.path, status, seconds_since(t0), "error: " + channel->error()));
      return;
    }
    if (!p.stream) return reply_whole(req, res, head, channel, t0, prompt_tokens, n);

    auto state = std::make_shared<StreamState>();
    state->channel = channel;
    state->head = head;
    state->include_usage = p.include_usage;
    state->prompt_tokens = prompt_tokens;
    state->n = n;
    state->started.assign(static_cast<size_t>(n), false);
    state->text_offsets.assign(static_cast<size_t>(n), 0);
    state->t0 = state->last_write = t0;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, state](size_t, httplib::DataSink& sink) { return stream_some(*state, sink); },
        [this, state, method = req.method, path = req.path](bool success) {
          if (success && state->finished) return;
          // The client went away (or a write failed): stop generating for it.
          loop.cancel(state->channel);
          log_line(method + " " + path + " client disconnected after " + std::to_string(state->completion_tokens) +
                   " tokens; request cancelled");
        });
  }

  void reply_whole(const httplib::Request& req, httplib::Response& res, const ResponseHead& head,
                   const std::shared_ptr<Channel>& channel, Clock::time_point t0, int64_t prompt_tokens, int64_t n) {
    bool done = false;
    // A whole reply not ready within the patience is sent chunked: its status line goes out, then a
    // space (which JSON ignores) every kKeepAliveMs until the body; a failed write tells that the
    // client left, so the request is cancelled and its pages freed, as for a stream. Replies that
    // finish sooner keep an exact status code.
    while (!done && seconds_since(t0) * 1000 < options.whole_reply_patience_ms) channel->wait(kPollMs, done);
    if (done) {
      int status = 200;
      const json body = whole_body(channel, head, status);
      reply_json(res, status, body);
      log_line(request_line(req.method, req.path, status, seconds_since(t0), whole_detail(channel, prompt_tokens, n)));
      return;
    }
    auto last_write = std::make_shared<Clock::time_point>(Clock::now());
    auto finished = std::make_shared<bool>(false);
    res.set_chunked_content_provider(
        "application/json",
        [this, channel, head, last_write, finished, prompt_tokens, n, t0, method = req.method, path = req.path](
            size_t offset, httplib::DataSink& sink) {
          const auto write = [&](const std::string& text) {
            *last_write = Clock::now();
            return sink.write(text.data(), text.size());
          };
          if (offset == 0 && !write(" ")) return false;  // the status line and headers go out now
          bool over = false;
          channel->wait(kPollMs, over);
          if (over) {
            int status = 200;  // an error now travels in the body: the status line has gone out
            if (!write(dump(whole_body(channel, head, status)))) return false;
            *finished = true;
            sink.done();
            log_line(request_line(method, path, status, seconds_since(t0), whole_detail(channel, prompt_tokens, n)));
            return true;
          }
          if (seconds_since(*last_write) * 1000 >= kKeepAliveMs) return write(" ");
          return true;
        },
        [this, channel, finished, method = req.method, path = req.path](bool success) {
          if (success && *finished) return;
          loop.cancel(channel);
          log_line(method + " " + path + " client disconnected before the whole reply; request cancelled");
        });
  }

  // The JSON of a finished whole reply: the completions, or the error with its status.
  json whole_body(const std::shared_ptr<Channel>& channel, const ResponseHead& head, int& status) const {
    if (const std::string error = channel->error(); !error.empty()) {
      status = channel->error_status();
      return error_body(status, error);
    }
    status = 200;
    return completion_body(head, channel->completions(), model.tokenizer);
  }

  std::string whole_detail(const std::shared_ptr<Channel>& channel, int64_t prompt_tokens, int64_t n) const {
    if (const std::string error = channel->error(); !error.empty()) return "error: " + error;
    return counts(prompt_tokens, generated_tokens(channel->completions()), n, false);
  }

  // One call of a stream's content provider: sends what arrived; false ends the response.
  bool stream_some(StreamState& s, httplib::DataSink& sink) {
    const auto write = [&](const std::string& text) {
      s.last_write = Clock::now();
      return sink.write(text.data(), text.size());
    };
    bool done = false;
    for (const gen::Event& e : s.channel->wait(kPollMs, done)) {
      const size_t k = static_cast<size_t>(e.sample);
      const bool known = k < s.started.size();
      const json chunk = chunk_body(s.head, e, known && !s.started[k], model.tokenizer, s.include_usage,
                                    known ? &s.text_offsets[k] : nullptr);
      if (known) s.started[k] = true;
      s.completion_tokens += static_cast<int64_t>(e.tokens.size());
      if (!chunk.is_null() && !write(sse(chunk))) return false;
    }
    if (done) {
      int status = 200;
      std::string detail = counts(s.prompt_tokens, s.completion_tokens, s.n, true);
      if (const std::string error = s.channel->error(); !error.empty()) {
        // The status line has gone out already: the error travels as an event, as OpenAI's does.
        status = s.channel->error_status();
        if (!write(sse(error_body(status, error)))) return false;
        detail = "error: " + error;
      } else if (s.include_usage && !write(sse(usage_chunk(s.head, s.prompt_tokens, s.completion_tokens)))) {
        return false;
      }
      if (!write("data: [DONE]\n\n")) return false;
      s.finished = true;
      sink.done();
      log_line(request_line("POST", s.head.chat ? "/v1/chat/completions" : "/v1/completions", status,
                            seconds_since(s.t0), detail));
      return true;
    }
    if (seconds_since(s.last_write) * 1000 >= kKeepAliveMs) return write(": keep-alive\n\n");
    return true;
  }
};

Server::Server(EngineLoop& loop, ModelInfo model, ServerOptions options)
    : impl_(std::make_unique<Impl>(loop, std::move(model), std::move(options))) {
  impl_->started =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const int threads = std::max(impl_->options.threads, 2);
  impl_->http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  impl_->http.set_payload_max_length(kMaxBodyBytes);
  // cpp-httplib's default socket options set SO_REUSEPORT, with which a second g4 serve on a port in
  // use bound it too, said it was serving, and the kernel split the connections between the two
  // servers (two models behind one address). SO_REUSEADDR alone still lets a restarted server take
  // its port while old connections linger in TIME_WAIT, but refuses a port another socket listens on.
  impl_->http.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  impl_->routes();
}

Server::~Server() = default;

int Server::bind() {
  const ServerOptions& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->http.bind_to_any_port(o.host);
    G4_CHECK(port > 0, "serve: cannot listen on ", o.host, " (any port)");
    return port;
  }
  G4_CHECK(impl_->http.bind_to_port(o.host, o.port), "serve: cannot listen on ", o.host, ":", o.port,
           " (in use, or not an address of this machine)");
  return o.port;
}

void Server::listen() {
  impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->http.stop();
}

}  // namespace g4::serve

// g4 serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--served-model-name NAME] [engine options]
// An OpenAI-compatible HTTP server (src/serve/server.h; docs/serving.md). SIGINT/SIGTERM stop it:
// running requests end (streams get an error event), then the process exits 0.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "serve/server.h"

namespace g4::cli {

namespace {

// The handler only writes the signal's number into a pipe (async-signal-safe, and fine in whatever
// thread the signal lands, OpenBLAS's and OpenMP's included); a thread of ours reads it and stops
// the server.
int g_stop_pipe[2] = {-1, -1};
extern "C" void on_stop_signal(int sig) {
  const char c = static_cast<char>(sig);
  [[maybe_unused]] const ssize_t n = write(g_stop_pipe[1], &c, 1);
}

class SignalStop {
 public:
  explicit SignalStop(std::function<void()> on_signal) {
    G4_CHECK(pipe(g_stop_pipe) == 0, "serve: cannot create a pipe for signal handling");
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
    thread_ = std::thread([on_signal] {
      char sig = 0;
      if (read(g_stop_pipe[0], &sig, 1) != 1 || sig == 0) return;  // 0: the server ended by itself
      std::cerr << "[g4] serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ", shutting down" << std::endl;
      on_signal();
    });
  }
  ~SignalStop() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    const char zero = 0;
    [[maybe_unused]] const ssize_t n = write(g_stop_pipe[1], &zero, 1);
    thread_.join();
    close(g_stop_pipe[0]);
    close(g_stop_pipe[1]);
  }
  SignalStop(const SignalStop&) = delete;
  SignalStop& operator=(const SignalStop&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
  std::thread thread_;
};

}  // namespace

void add_serve(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (completions, chat, streaming)");
  struct Opts {
    EngineSetup setup;
    serve::ServerOptions server;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->setup.model_dir, "Hugging Face model directory")->required();
  cmd->add_option("--host", o->server.host, "address to listen on");
  cmd->add_option("--port", o->server.port, "port to listen on (0: any free port, printed at start)")
      ->check(integer_in(0, 65535));
  cmd->add_option("--served-model-name", o->server.model_name,
                  "the model's name in the API (default: the directory name)");
  cmd->add_option("--http-threads", o->server.threads, "HTTP worker threads (each open stream holds one)")
      ->check(integer_in(2, 4096));
  cmd->add_option("--whole-reply-patience-ms", o->server.whole_reply_patience_ms,
                  "a non-streamed reply not ready after this long is sent chunked (status 200 committed, spaces "
                  "until the JSON), so that a client that disconnects is noticed and its request cancelled")
      ->check(integer_in(0, 3600000));
  cmd->add_option("--tokenizer", o->setup.tokenizer, "tokenizer file or directory (default: the model directory)");
  add_engine_options(cmd, o->setup);
  cmd->callback([&action, o] {
    action = [o] {
      if (o->server.model_name.empty())
        o->server.model_name = std::filesystem::path(o->setup.model_dir).lexically_normal().filename().string();
      if (o->server.model_name.empty() || o->server.model_name == ".")
        o->server.model_name =
            std::filesystem::absolute(o->setup.model_dir).lexically_normal().parent_path().filename().string();
      LoadedModel loaded = load_for_generation(o->setup);
      gen::EngineOptions engine_options = o->setup.engine;
      engine_options.tokenizer = loaded.tokenizer.get();
      gen::Engine engine(*loaded.model, engine_options);
      serve::EngineLoop loop(engine);
      if (loaded.tokenizer) data::warn_chat_tokenizer(*loaded.tokenizer, "the model's tokenizer (for chat requests)");
      serve::Server server(loop, serve::model_info(loaded.model->config(), loaded.tokenizer.get(), o->setup.model_dir), o->server);
      SignalStop signals([&] {
        loop.shutdown();
        server.stop();
      });
      const int port = server.bind();
      std::cerr << "g4 serve: " << describe_pools(engine, loaded.model->config(), engine_options.page_size) << std::endl;
      // Tests and scripts read the port from this line (with --port 0).
      std::cout << "g4 serve: " << o->server.model_name << " on http://" << o->server.host << ":" << port << std::endl;
      server.listen();
      loop.shutdown();
    };
  });
}

}  // namespace g4::cli

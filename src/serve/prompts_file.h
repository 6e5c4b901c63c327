// `g4 generate --prompts IN.jsonl --out OUT.jsonl`: one request per line of IN (the API's field
// names, serve/request.h), all submitted to one engine, one output line per sample in input order.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "generate/engine.h"
#include "serve/request.h"

namespace g4::serve {

struct FileRequest {
  int64_t line = 0;  // 1-based line of the prompts file
  gen::Request request;
};

// Reads every non-blank line; a mistake is a g4::Error "<path>:<line>: <what is wrong>".
// With `chat`, lines hold "messages"; without it, "prompt" or "prompt_ids".
std::vector<FileRequest> read_prompts_file(const std::string& path, bool chat, const ModelInfo& model,
                                           const Defaults& defaults);

// {"index", "sample" (n > 1 only), "text" (null without a tokenizer), "token_ids", "logprobs" (null
//  unless asked), "top_logprobs" (logprobs > 0: [{"id", "logprob"}] per token), "finish_reason",
//  "prompt_tokens", "timings": {"queued_s", "first_token_s", "total_s"}}
nlohmann::json output_line(int64_t index, const gen::RequestOptions& options, const gen::Completion& c,
                           const io::Tokenizer* tok);

struct RunTotals {
  int64_t requests = 0, samples = 0, prompt_tokens = 0, generated_tokens = 0;
  double seconds = 0;
};

// Submits every request, steps the engine until it is idle, and writes the output lines to
// `out` through `out`.tmp renamed at the end (a failure never leaves a complete-looking file).
RunTotals run_prompts(gen::Engine& engine, const std::vector<FileRequest>& requests, const std::string& in_path,
                      const std::string& out, const io::Tokenizer* tok);

}  // namespace g4::serve

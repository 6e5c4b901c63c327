#include "serve/prompts_file.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "io/json_input.h"

namespace g4::serve {

using nlohmann::json;

namespace {
// A prompts file is read whole; RL prompt sets are far smaller.
constexpr size_t kMaxPromptsFileBytes = 4096 * io::kMiB;
}  // namespace

std::vector<FileRequest> read_prompts_file(const std::string& path, bool chat, const ModelInfo& model,
                                           const Defaults& defaults) {
  const std::string text = io::read_regular_file(path, "prompts file", kMaxPromptsFileBytes);
  // Media parts name files relative to the prompts file's folder, as the training reader's do.
  ModelInfo info = model;
  info.media_folder = std::filesystem::path(path).parent_path().string();
  if (info.media_folder.empty()) info.media_folder = ".";
  std::vector<FileRequest> out;
  size_t begin = 0;
  for (int64_t line = 1; begin < text.size(); ++line) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string_view row(text.data() + begin, end - begin);
    begin = end + 1;
    if (row.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = path + ":" + std::to_string(line);
    const json j = io::parse_json(row, where, io::kMaxJsonLineBytes);
    try {
      if (j.is_object() && chat != j.contains("messages"))
        throw RequestError(400, chat ? "prompt" : "messages",
                           chat ? "--chat expects \"messages\" on every line" : "\"messages\" needs --chat");
      out.push_back({line, parse_request(j, Api::File, info, defaults).request});
    } catch (const RequestError& e) {
      G4_FAIL(where, ": ", e.what());
    }
  }
  G4_CHECK(!out.empty(), "prompts file ", path, " holds no request (one JSON object per line)");
  return out;
}

json output_line(int64_t index, const gen::RequestOptions& options, const gen::Completion& c,
                 const io::Tokenizer* tok) {
  json ids = json::array(), lps = json::array(), tops = json::array();
  for (const gen::GeneratedToken& t : c.tokens) {
    ids.push_back(t.id);
    lps.push_back(t.logprob);
    json alts = json::array();
    for (size_t i = 0; i < t.top_ids.size(); ++i)
      alts.push_back({{"id", t.top_ids[i]}, {"logprob", t.top_logprobs[i]}});
    tops.push_back(alts);
  }
  json out = {{"index", index}};
  if (options.n > 1) out["sample"] = c.sample;
  out["text"] = tok ? json(c.text) : json(nullptr);
  out["token_ids"] = ids;
  out["logprobs"] = options.logprobs >= 0 ? lps : json(nullptr);
  if (options.logprobs > 0) out["top_logprobs"] = tops;
  out["finish_reason"] = gen::finish_reason_name(c.finish);
  out["prompt_tokens"] = c.prompt_tokens;
  out["timings"] = {
      {"queued_s", c.timings.queued_s}, {"first_token_s", c.timings.first_token_s}, {"total_s", c.timings.total_s}};
  return out;
}

RunTotals run_prompts(gen::Engine& engine, const std::vector<FileRequest>& requests, const std::string& in_path,
                      const std::string& out, const io::Tokenizer* tok) {
  const auto t0 = std::chrono::steady_clock::now();
  std::map<uint64_t, size_t> index_of;  // engine id -> request index
  for (size_t i = 0; i < requests.size(); ++i) {
    try {
      index_of[engine.submit(requests[i].request)] = i;
    } catch (const Error& e) {
      G4_FAIL(in_path, ":", requests[i].line, ": ", e.what());
    }
  }
  std::vector<gen::Completion> done;
  while (!engine.idle()) {
    engine.step();
    for (gen::Completion& c : engine.take_completions()) done.push_back(std::move(c));
  }
  for (gen::Completion& c : engine.take_completions()) done.push_back(std::move(c));
  std::sort(done.begin(), done.end(), [&](const gen::Completion& a, const gen::Completion& b) {
    return std::make_pair(index_of.at(a.request), a.sample) < std::make_pair(index_of.at(b.request), b.sample);
  });

  RunTotals totals;
  totals.requests = static_cast<int64_t>(requests.size());
  try {
    io::write_file_atomic(out, [&](std::ostream& f) {
      for (const gen::Completion& c : done) {
        const size_t i = index_of.at(c.request);
        f << output_line(static_cast<int64_t>(i), requests[i].request.options, c, tok)
                 .dump(-1, ' ', false, json::error_handler_t::replace)
          << "\n";
        ++totals.samples;
        totals.generated_tokens += static_cast<int64_t>(c.tokens.size());
        if (c.sample == 0) totals.prompt_tokens += c.prompt_tokens;
      }
    });
  } catch (const Error& e) {
    G4_FAIL("--out: ", e.what());
  }
  totals.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return totals;
}

}  // namespace g4::serve

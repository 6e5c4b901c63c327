// The generation engine: many requests at once over one paged KV cache, on the CPU or the GPU
// (the same scheduler and pages; only the kernels differ).
//
// - Continuous batching: requests join and leave at every step; prompts of any length, packed
//   with no padding (a long prompt is prefilled in chunks of at most max_step_tokens).
// - Paged KV cache (generate/page_pool.h): fixed-size pages from one pool per attention kind
//   (full / sliding); sliding layers give back pages that fell out of the window; KV-shared
//   layers read their source layer's pages.
// - Prefix sharing: the n samples of a request, and requests whose prompts start with the same
//   whole pages as a live one, share those pages (reference counted; a shared page that is
//   written to is copied first).
// - Preemption: when the pool runs out, the most recently admitted request gives back its pages
//   and waits; it is recomputed (prompt + tokens so far) when pages are free again. Nothing is lost
//   and its sampled tokens do not change (draws are counted per request).
//
// Not thread-safe: one thread calls submit / cancel / step (the server wraps it in a queue).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "generate/sampling.h"
#include "io/tokenizer.h"
#include "model/gemma4.h"

namespace g4::gen {

enum class FinishReason {
  kNone,       // still running
  kStop,       // an end-of-sequence id, a stop id or a stop string
  kLength,     // max_tokens, or the model's context (max_position_embeddings) is full
  kCancelled,  // cancel()
};
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled" ("" for kNone)

struct RequestOptions {
  SamplingParams sampling;
  int64_t max_tokens = 16;
  std::vector<int64_t> stop_ids;          // besides EngineOptions::eos_ids
  std::vector<std::string> stop_strings;  // need EngineOptions::tokenizer; not part of the text
  bool ignore_eos = false;                // do not stop on EngineOptions::eos_ids
  int64_t logprobs = -1;                  // -1: none; 0: the sampled token's; N > 0: and N alternatives
  LogprobMode logprob_mode = LogprobMode::kRaw;
  int64_t n = 1;                          // samples of the prompt (sample k uses seed + k)
};

// A request's images, videos and audio clips as the processors give them (io/image_processor.h,
// io/video_processor.h, io/audio_features.h), on the host, under transformers' names. The prompt's
// image_token_id placeholders take the images' soft tokens in order, its video_token_id
// placeholders the videos' (frame by frame), its audio_token_id placeholders the clips'; each
// prompt token's mm type follows from its id (as transformers' mm_token_type_ids do).
struct RequestMedia {
  Tensor pixel_values, image_position_ids;     // [N, P, 3·patch²], [N, P, 2]; undefined: no image
  Tensor input_features, input_features_mask;  // [C, F, 128], [C, F]; undefined: no audio
  // [V, T, P, 3·patch²], [V, T, P, 2] (T frames each); undefined: no video
  Tensor pixel_values_videos, video_position_ids;
  bool empty() const {
    return !pixel_values.defined() && !input_features.defined() && !pixel_values_videos.defined();
  }
};

struct Request {
  std::vector<int64_t> prompt;  // token ids (non-empty, within the vocabulary)
  RequestOptions options;
  RequestMedia media;  // for the prompt's placeholders (none: a text prompt)
};

struct GeneratedToken {
  int64_t id = 0;
  float logprob = 0;  // when logprobs >= 0
  std::vector<int64_t> top_ids;
  std::vector<float> top_logprobs;
};

// What one step did to one sample of one request.
struct Event {
  uint64_t request = 0;
  int64_t sample = 0;                  // 0 .. n - 1
  std::vector<GeneratedToken> tokens;  // tokens generated this step (0 or 1)
  std::string text_delta;              // new text (with a tokenizer; held back while a stop
                                       // string or a UTF-8 character may still be incomplete)
  FinishReason finish = FinishReason::kNone;
};

struct SampleTimings {
  double queued_s = 0;       // submit -> first scheduled
  double first_token_s = 0;  // submit -> first generated token
  double total_s = 0;        // submit -> finished
};

// A finished sample, whole.
struct Completion {
  uint64_t request = 0;
  int64_t sample = 0;
  std::vector<GeneratedToken> tokens;
  std::string text;  // with a tokenizer, cut before a matched stop string
  FinishReason finish = FinishReason::kNone;
  int64_t prompt_tokens = 0;
  SampleTimings timings;
};

struct EngineOptions {
  int64_t page_size = 16;          // tokens per page
  int64_t num_pages = 0;           // per attention kind; 0 = sized from free memory (GPU) or
                                   // enough for max_running sequences of the model's context within
                                   // 4 GiB (CPU); the sliding kind by default holds max_running
                                   // windows and one step's tokens
  double memory_fraction = 0.85;   // of the GPU memory free after the weights, for the pages
  // Caps the automatic sizing (num_pages 0) per kind, e.g. at what a known set of requests can hold,
  // but never below one sliding window and one step's tokens; 0: no cap.
  int64_t max_pages = 0;
  int64_t max_running = 256;       // sequences in one decode step
  int64_t max_step_tokens = 4096;  // tokens in one forward (prefill chunks + decode rows)
  std::vector<int64_t> eos_ids;    // default: the model config's eos_token_ids
  const io::Tokenizer* tokenizer = nullptr;  // for text_delta, Completion::text, stop strings
  // GPU: a step of decode rows only (one token per sequence, each sampled) replays a CUDA graph of
  // the whole forward, one per batch bucket (docs/architecture.md); the CPU ignores it.
  bool cuda_graphs = true;
  // Prefill steps of prompts starting with nothing cached, or of one sequence's chunk of 64 tokens
  // or more after keys it holds, attend with ops::attention over keys read back from the pages
  // (model::PagedStep::dense); off: every step through the paged kernel.
  bool dense_prefill = true;
  // GPU, with cuda_graphs: in a steady decode (every running sequence one token a step, nothing
  // waiting), the next step is queued before this step's tokens reach the host, its token ids
  // copied on the device, so the GPU does not idle while the host reads tokens and queues work.
  // The tokens are the same either way; a row whose sequence drew a stop is computed and dropped.
  bool lookahead = true;
};

struct PoolStats {
  int64_t full_pages = 0, full_free = 0;        // pool of the full-attention layers
  int64_t sliding_pages = 0, sliding_free = 0;  // pool of the sliding layers (0 when none)
  int64_t running = 0, waiting = 0, preempted_total = 0;
};

// Host time the engine's steps spent in each phase, summed over the steps that ran a forward
// (seconds). With the forward queued asynchronously on a GPU, what the GPU may wait for between two
// steps is about prepare + forward + bookkeeping; sample includes waiting for the forward to end.
// `g4 bench generate --profile` prints it per decode step.
struct StepHostTimes {
  int64_t steps = 0;
  double prepare_s = 0;      // cancellations, scheduling, pages and the step's layout
  double forward_s = 0;      // queuing the forward (a CUDA graph replay, or each kernel)
  double sample_s = 0;       // sampling, until its results are on the host
  double bookkeeping_s = 0;  // the drawn tokens into their requests: stops, events, forks, freed pages

  StepHostTimes& operator+=(const StepHostTimes& o) {
    steps += o.steps, prepare_s += o.prepare_s, forward_s += o.forward_s, sample_s += o.sample_s;
    bookkeeping_s += o.bookkeeping_s;
    return *this;
  }
  // The steps and times since `earlier` (a copy taken from the same engine before).
  StepHostTimes operator-(const StepHostTimes& earlier) const {
    return {steps - earlier.steps, prepare_s - earlier.prepare_s, forward_s - earlier.forward_s,
            sample_s - earlier.sample_s, bookkeeping_s - earlier.bookkeeping_s};
  }
};

class Engine {
 public:
  // The model must outlive the engine; its dtype and device decide the kernels.
  Engine(const model::Gemma4& model, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id. Bad options or prompts throw a g4::Error naming the field.
  uint64_t submit(Request request);
  // Ends every sample of the request at the next step (finish kCancelled) and frees its pages.
  // Unknown or finished ids are ignored.
  void cancel(uint64_t request);
  // One scheduler iteration: admits waiting requests, runs one forward over prefill chunks and
  // decode rows, samples, and reports what happened to every sample it touched.
  std::vector<Event> step();
  bool idle() const;  // nothing waiting or running
  // Finished samples not yet taken, in finishing order.
  std::vector<Completion> take_completions();

  // Convenience: submits every request, steps until idle, returns completions in request order
  // (sample k of request i at index sum of earlier n + k).
  std::vector<Completion> generate(std::vector<Request> requests);

  PoolStats stats() const;
  StepHostTimes host_times() const;
  const EngineOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace g4::gen

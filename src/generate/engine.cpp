// The engine's scheduler: requests, sequences and their pages (docs/architecture.md, "The
// generation engine", states the rules).
//
// A sequence is what holds pages: a request's prompt before it is forked into its n samples (a
// "group"), then one per sample. Its `tokens` are all tokens whose keys it will hold (prompt, then
// the sample's tokens); `computed` of them have their keys in the pages. Each step feeds every
// running sequence tokens [computed, computed + chunk); a sequence whose chunk reaches its last
// token samples its next one from that row's logits.
#include "generate/engine.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <deque>
#include <map>
#include <optional>

#include "core/device_memory.h"
#include "core/hash.h"
#include "generate/page_pool.h"
#include "generate/prefix_cache.h"
#include "generate/text_stream.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#ifdef G4_WITH_CUDA
#include "generate/cuda/sampling.h"
#include "generate/cuda/step_graph.h"
#endif

namespace g4::gen {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kNone: break;
  }
  return "";
}

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kFull = static_cast<size_t>(model::AttnKind::kFull);
constexpr size_t kSliding = static_cast<size_t>(model::AttnKind::kSliding);

double seconds(Clock::time_point from, Clock::time_point to) { return std::chrono::duration<double>(to - from).count(); }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Tensor index_tensor(const std::vector<int64_t>& v, DType dtype, Device device) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::I32)
      t.data<int32_t>()[i] = static_cast<int32_t>(v[i]);
    else
      t.data<int64_t>()[i] = v[i];
  }
  return device == Device::CPU ? t : t.to(device);
}

#ifdef G4_WITH_CUDA
// Batch sizes a decode step is padded up to, one CUDA graph each (issue 13).
constexpr std::array<int64_t, 9> kGraphBuckets{1, 2, 4, 8, 16, 32, 64, 128, 256};
#endif
}  // namespace

struct Engine::Impl {
  struct Sample {
    std::vector<GeneratedToken> tokens;
    TextStream text;
    FinishReason finish = FinishReason::kNone;
    double first_token_s = 0;
  };
  struct Req {
    uint64_t id = 0;
    std::vector<int64_t> prompt;
    RequestOptions o;
    std::vector<Sample> samples;
    Clock::time_point submitted;
    double queued_s = -1;  // -1: not scheduled yet
    int64_t unfinished = 0;
    bool cancelled = false;
    // Media (all empty for a text prompt). The soft tokens of the prompt's placeholders in prompt
    // order [M, H], on the model's device: the towers run once, at submit, and a preempted request
    // recomputes its prompt with the same ones.
    Tensor soft;
    std::vector<int64_t> soft_before;  // [prompt + 1]: soft tokens before each prompt position
    // Per prompt position, the first and last position of its image block, -1 outside one
    // (bidirectional-vision models only: a block's queries see its later keys on sliding layers).
    std::vector<int64_t> block_first, block_last;
    // Per prompt page: a hash of the images and clips whose soft tokens it holds, 0 when none; it
    // joins the page's prefix key, so equal placeholders of different media never share pages.
    std::vector<uint64_t> page_media;
    uint64_t media_of_page(int64_t j) const {
      return j < static_cast<int64_t>(page_media.size()) ? page_media[static_cast<size_t>(j)] : 0;
    }
  };
  struct Seq {
    Req* req = nullptr;
    int64_t sample = -1;  // -1: the request's prompt before the fork (all its samples)
    std::vector<int64_t> tokens;
    int64_t computed = 0;
    std::array<std::vector<int64_t>, model::kAttnKinds> pages;  // -1: a sliding page given back
    int64_t sliding_released = 0;  // leading sliding pages given back
    int64_t registered = 0;        // whole prompt pages offered to the prefix cache
    uint64_t last_key = 0;         // prefix key of page registered - 1
    bool running = false;
    uint64_t serial = 0;  // unique over the engine's life (a freed Seq's address may come back)
    int64_t samples() const { return sample < 0 ? static_cast<int64_t>(req->samples.size()) : 1; }
    int64_t len() const { return static_cast<int64_t>(tokens.size()); }
  };

  const model::Gemma4& model;
  const io::ModelConfig& cfg;
  EngineOptions opt;
  int64_t ps = 0, window = 0, context = 0, max_chunk = 0;
  double softcap = 0;  // the model's final-logit softcap (0: none), which the GPU sampler applies
  std::vector<int64_t> placeholders;  // model.placeholder_ids(): a look-ahead maps them on the device
  bool sliding = false;  // a sliding kind with its own pages
  model::PagedKV kv;
  std::vector<PagePool> pools;
  PrefixCache prefix;

  std::map<uint64_t, std::unique_ptr<Req>> requests;
  std::deque<std::unique_ptr<Seq>> waiting;
  std::vector<std::unique_ptr<Seq>> running;  // in admission order (forks take their group's place)
  std::vector<uint64_t> cancelled;             // reported at the next step
  std::vector<Completion> completions;
  StepHostTimes host_times;
  uint64_t next_id = 1, next_serial = 1;
  int64_t preempted_total = 0;

#ifdef G4_WITH_CUDA
  // The captured decode step of one bucket of rows. Rows past the live sequences are padding:
  // no visible key, slot -1 (nothing written), logits ignored. Page tables are `width` wide.
  struct DecodeGraph {
    std::array<int64_t, model::kAttnKinds> width{};
    uint64_t weights = 0;  // weights_key() at the capture
    // The inputs on the device (the step's tensors are views of them) and their host staging, two
    // of each used in turn: a look-ahead step is staged while the step before it may not have
    // read its inputs yet (a buffer is staged again only after the results of its last step came
    // back, and those come after its upload).
    Tensor i64, i32;
    std::array<cuda::PinnedBuffer, 2> host64, host32;
    int next_host = 0;
    Tensor src;  // a look-ahead step's rows of the previous step's results (-1: padding), on the device
    model::PagedStep step;
    std::unique_ptr<cuda::StepGraph> graph;
  };
  // A decode step queued before the tokens of the step before it came back to the host (issue 14:
  // the GPU no longer waits while the host reads a step's tokens, keeps its books and queues the
  // next). Its rows are the sequences of that step which would go on unless they draw a stop; its
  // token ids are copied on the device from that step's draws. The next engine step takes its
  // results for the rows whose sequences still run as expected, or drops it whole (the weights
  // changed): its keys are then written again where it wrote them.
  struct Ahead {
    struct Row {
      Seq* seq;
      uint64_t serial;
      int64_t computed;  // the sequence's `computed` when the step's results are taken
    };
    std::vector<Row> rows;
    cuda::PendingSamples samples;
    uint64_t weights = 0;
  };
  DevicePool graph_pool;                  // every tensor the graphs create, kept from other work
  std::map<int64_t, DecodeGraph> graphs;  // by bucket
  // Declared after the graphs, so destroyed first: its results are waited for before the graph
  // it replayed goes.
  std::optional<Ahead> ahead;
  // Logits [n, V] of a decode step (n = ids.size() sequences, one row each) through its bucket's graph.
  Tensor decode_graph_step(const std::vector<int64_t>& ids, const std::vector<int64_t>& positions,
                           const std::array<std::vector<int64_t>, model::kAttnKinds>& slots,
                           const std::array<std::vector<int64_t>, model::kAttnKinds>& tables,
                           const std::array<int64_t, model::kAttnKinds>& width, const std::vector<int64_t>& kv_len);
  // Writes a step's inputs into g's next host staging and queues their upload; `src` (empty: none)
  // are the rows of the previous step's results that write_sampled_ids takes the ids from.
  void stage_inputs(DecodeGraph& g, const std::vector<int64_t>& ids, const std::vector<int64_t>& positions,
                    const std::array<std::vector<int64_t>, model::kAttnKinds>& slots,
                    const std::array<std::vector<int64_t>, model::kAttnKinds>& tables,
                    const std::array<int64_t, model::kAttnKinds>& width, const std::vector<int64_t>& kv_len,
                    const std::vector<int64_t>& src);
  // The addresses of the model's weights and buffers: a graph reads the tensors it was captured
  // with, so one that was replaced (a weight update that assigns new tensors) means a new capture.
  uint64_t weights_key() const;
  uint64_t step_weights = 0;  // weights_key() at the start of the running step(): it cannot change within one
#endif

  Impl(const model::Gemma4& m, EngineOptions o);

  // --- pages
  void release_page(size_t kind, int64_t page) {
    const uint64_t key = pools[kind].key(page);
    if (pools[kind].release(page) && kind == kFull && key != 0) prefix.erase(key);
  }
  void release_pages(Seq& s) {
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      for (int64_t p : s.pages[kind])
        if (p >= 0) release_page(kind, p);
      s.pages[kind].clear();
    }
    s.computed = s.sliding_released = s.registered = 0;
    s.last_key = 0;
  }
  // Pages to take before tokens up to `end` can be written: new ones, and a copy of a shared page
  // that will be written.
  int64_t pages_needed(const Seq& s, size_t kind, int64_t end) const {
    const auto& table = s.pages[kind];
    int64_t n = std::max<int64_t>(0, ceil_div(end, ps) - static_cast<int64_t>(table.size()));
    const int64_t first = s.computed / ps;
    if (first < static_cast<int64_t>(table.size()) && pools[kind].refs(table[static_cast<size_t>(first)]) > 1) ++n;
    return n;
  }
  bool fits(const Seq& s, int64_t end) const {
    for (size_t kind = 0; kind < pools.size(); ++kind)
      if (pages_needed(s, kind, end) > pools[kind].free()) return false;
    return true;
  }
  void allocate(Seq& s, int64_t end) {
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      auto& table = s.pages[kind];
      const size_t first = static_cast<size_t>(s.computed / ps);
      if (first < table.size() && pools[kind].refs(table[first]) > 1) {  // copy on write
        const int64_t copy = pools[kind].take();
        kv.copy_page(static_cast<model::AttnKind>(kind), table[first], copy, cfg);
        release_page(kind, table[first]);
        table[first] = copy;
      }
      while (static_cast<int64_t>(table.size()) < ceil_div(end, ps)) table.push_back(pools[kind].take());
    }
  }
  // Sliding pages no later query of the sequence can see (all keys before computed - window + 1).
  void release_out_of_window(Seq& s) {
    if (!sliding) return;
    auto& table = s.pages[kSliding];
    for (; (s.sliding_released + 1) * ps <= s.computed - window + 1; ++s.sliding_released) {
      int64_t& p = table[static_cast<size_t>(s.sliding_released)];
      if (p >= 0) release_page(kSliding, p);
      p = -1;
    }
  }

  // --- prefix sharing
  void register_prompt_pages(Seq& s) {
    const int64_t whole = std::min<int64_t>(s.computed, static_cast<int64_t>(s.req->prompt.size())) / ps;
    for (; s.registered < whole; ++s.registered) {
      const size_t j = static_cast<size_t>(s.registered);
      const int64_t* tokens = s.tokens.data() + s.registered * ps;
      const uint64_t media = s.req->media_of_page(s.registered);
      s.last_key = PrefixCache::chain(s.last_key, tokens, ps, media);
      prefix.add(s.last_key, s.pages[kFull][j], sliding ? s.pages[kSliding][j] : -1,
                 j > 0 ? s.pages[kFull][j - 1] : -1, tokens, ps, media, pools[kFull],
                 sliding ? &pools[kSliding] : nullptr);
    }
  }
  // Takes the longest run of whole pages of s's tokens that live sequences hold (leaving at least
  // its last token to compute, whose logits it samples from). The sliding layers also need the
  // keys of the window before the first token computed, and those cannot be recomputed alone
  // (each layer's keys depend on the window of the layer below, back to the first token): the run
  // is shortened until the holder still has every sliding page that window touches.
  void match_prefix(Seq& s) {
    std::vector<PrefixCache::Hit> hits;
    std::vector<uint64_t> keys;
    uint64_t key = 0;
    for (int64_t j = 0; (j + 1) * ps <= s.len() - 1; ++j) {
      const int64_t* tokens = s.tokens.data() + j * ps;
      const uint64_t media = s.req->media_of_page(j);
      key = PrefixCache::chain(key, tokens, ps, media);
      PrefixCache::Hit hit;
      if (!prefix.find(key, hits.empty() ? -1 : hits.back().full_page, tokens, ps, media, pools[kFull],
                       sliding ? &pools[kSliding] : nullptr, hit))
        break;
      hits.push_back(hit);
      keys.push_back(key);
    }
    const auto first_visible = [&](int64_t k) { return std::max<int64_t>(0, k * ps - window + 1) / ps; };
    int64_t k = static_cast<int64_t>(hits.size());
    for (; sliding && k > 0; --k) {
      bool live = true;
      for (int64_t j = first_visible(k); j < k; ++j) live &= hits[static_cast<size_t>(j)].sliding_page >= 0;
      if (live) break;
    }
    if (k == 0) return;
    for (int64_t j = 0; j < k; ++j) {
      const PrefixCache::Hit& h = hits[static_cast<size_t>(j)];
      pools[kFull].retain(h.full_page);
      s.pages[kFull].push_back(h.full_page);
      if (!sliding) continue;
      const bool visible = j >= first_visible(k);
      if (visible) pools[kSliding].retain(h.sliding_page);
      s.pages[kSliding].push_back(visible ? h.sliding_page : -1);
    }
    s.computed = k * ps;
    s.registered = k;
    s.sliding_released = sliding ? first_visible(k) : 0;
    s.last_key = keys[static_cast<size_t>(k - 1)];
  }

  // --- scheduling
  void preempt(Seq* victim) {
    auto it = std::find_if(running.begin(), running.end(), [&](const auto& p) { return p.get() == victim; });
    std::unique_ptr<Seq> s = std::move(*it);
    running.erase(it);
    release_pages(*s);
    s->running = false;
    waiting.push_front(std::move(s));
    ++preempted_total;
  }
  int64_t running_samples() const {
    int64_t n = 0;
    for (const auto& s : running) n += s->samples();
    return n;
  }
  struct Chunk {
    Seq* seq;
    int64_t len;
  };

  // The keys of a prefill step that the dense attention op takes (model::PagedStep::dense): prompts
  // that all start with nothing cached, or one sequence's chunk of at least kDenseRows tokens after
  // keys it holds. Nothing for other steps (decode rows, several sequences with cached keys).
  static constexpr int64_t kDenseRows = 64;
  std::optional<model::PagedStep::DenseKeys> dense_keys(const std::vector<Chunk>& plan, const model::PagedStep& st,
                                                        const std::vector<int64_t>& cu_q, Device dev) const {
    model::PagedStep::DenseKeys d;
    if (std::all_of(plan.begin(), plan.end(), [](const Chunk& c) { return c.seq->computed == 0; })) {
      d.rows = st.slots;
      std::vector<int64_t> docs(static_cast<size_t>(cu_q.back()));
      for (size_t i = 0; i + 1 < cu_q.size(); ++i)
        std::fill(docs.begin() + cu_q[i], docs.begin() + cu_q[i + 1], static_cast<int64_t>(i));
      d.docs = index_tensor(docs, DType::I32, dev);
      return d;
    }
    if (plan.size() != 1 || plan[0].len < kDenseRows) return std::nullopt;
    const Seq& s = *plan[0].seq;
    const int64_t end = s.computed + plan[0].len;
    d.q_start = s.computed;
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      // A sliding window still shows its queries the keys from the first one's window on; the
      // pages before those may have been given back.
      const int64_t lo = kind == kSliding && sliding ? std::max<int64_t>(0, s.computed - window + 1) : 0;
      std::vector<int64_t> rows;
      rows.reserve(static_cast<size_t>(end - lo));
      for (int64_t pos = lo; pos < end; ++pos) {
        const int64_t page = s.pages[kind][static_cast<size_t>(pos / ps)];
        G4_CHECK(page >= 0, "engine: key ", pos, " of a prefill chunk is on a page already given back");
        rows.push_back(page * ps + pos % ps);
      }
      d.rows[kind] = index_tensor(rows, DType::I64, dev);
      d.k_start[kind] = lo;
    }
    return d;
  }

  // The tokens of s one step may take within `budget`: never ending inside an image block (its
  // queries need the block's later keys in the pages), so 0 when the block does not fit.
  int64_t chunk_of(const Seq& s, int64_t budget) const {
    int64_t len = std::min({s.len() - s.computed, budget, max_chunk});
    const std::vector<int64_t>& last = s.req->block_last;
    const int64_t end = s.computed + len;
    if (len > 0 && end - 1 < static_cast<int64_t>(last.size()) && last[static_cast<size_t>(end - 1)] >= end)
      len = std::max<int64_t>(0, s.req->block_first[static_cast<size_t>(end - 1)] - s.computed);
    return len;
  }
  void prepare_media(Req& r, const RequestMedia& media);
  std::vector<Chunk> schedule();
  // A step's layout: the pool row that takes s's key at `pos` in `kind`, and s's page table
  // appended to `table`, padded with -1 to `width` pages.
  int64_t slot_of(const Seq& s, size_t kind, int64_t pos) const {
    return s.pages[kind][static_cast<size_t>(pos / ps)] * ps + pos % ps;
  }
  static void append_table(std::vector<int64_t>& table, const Seq& s, size_t kind, int64_t width) {
    table.insert(table.end(), s.pages[kind].begin(), s.pages[kind].end());
    table.resize(table.size() + static_cast<size_t>(width) - s.pages[kind].size(), -1);
  }
  // Whether a sample that has drawn `drawn` tokens, its sequence `len` long before the last of
  // them, ends there by length: max_tokens, or the model's context.
  bool ends_by_length(const Req& r, int64_t drawn, int64_t len) const {
    return drawn >= r.o.max_tokens || len + 1 >= context;
  }
  // The sampling of r's sample k for its token `ahead` steps after those it has drawn (its seed is
  // the request's + k; `draw` indexes the noise).
  static RowSampling row_sampling(const Req& r, int64_t k, int64_t ahead) {
    RowSampling row;
    row.params = r.o.sampling;
    row.params.seed = r.o.sampling.seed + static_cast<uint64_t>(k);
    row.draw = r.samples[static_cast<size_t>(k)].tokens.size() + static_cast<uint64_t>(ahead);
    row.top_logprobs = std::max<int64_t>(r.o.logprobs, 0);
    row.logprob_mode = r.o.logprob_mode;
    return row;
  }
  // What a step's forward and sampling give back: each logits row's (sequence, sample) (null: a
  // look-ahead row dropped) and its draw, or on the GPU the draws still on their way.
  struct StepOutput {
    std::vector<std::pair<Seq*, int64_t>> sampled;
    std::vector<SampledToken> drawn;
#ifdef G4_WITH_CUDA
    cuda::PendingSamples pending;
#endif
    Clock::time_point prepared, forwarded;
  };
  // Builds the step of `plan` (its layout on the host, uploaded once), queues its forward and
  // samples the rows that end a sequence's tokens.
  void queue_step(const std::vector<Chunk>& plan, StepOutput& out);
#ifdef G4_WITH_CUDA
  // Queues the step after `plan` (decode rows only; row i of `samples` drawn for sampled[i]) as a
  // look-ahead when the engine is in a steady decode: nothing waits to be admitted or cancelled,
  // no group forks, the graph of its bucket is captured and wide enough, and its pages fit.
  void look_ahead(const std::vector<Chunk>& plan, const std::vector<std::pair<Seq*, int64_t>>& sampled,
                  const cuda::PendingSamples& samples);
  // The look-ahead's rows whose sequences run as it expected, as the step's plan and `sampled`
  // (null where a row is dropped); false when it is dropped whole.
  bool take_ahead(std::vector<Chunk>& plan, std::vector<std::pair<Seq*, int64_t>>& sampled,
                  cuda::PendingSamples& samples);
#endif
  Completion complete(Req& r, int64_t k, FinishReason finish, Event* event);
  void finish_request_if_done(uint64_t id);
  std::vector<Event> step();
  uint64_t submit(Request request);
  void cancel(uint64_t id);
};

Engine::Impl::Impl(const model::Gemma4& m, EngineOptions o) : model(m), cfg(m.config()), opt(std::move(o)) {
  G4_CHECK(opt.page_size > 0, "EngineOptions: page_size must be > 0, got ", opt.page_size);
  G4_CHECK(opt.num_pages >= 0, "EngineOptions: num_pages must be >= 0 (0 = sized automatically), got ", opt.num_pages);
  G4_CHECK(opt.max_running > 0, "EngineOptions: max_running must be > 0, got ", opt.max_running);
  G4_CHECK(opt.max_step_tokens > 0, "EngineOptions: max_step_tokens must be > 0, got ", opt.max_step_tokens);
  G4_CHECK(opt.max_pages >= 0, "EngineOptions: max_pages must be >= 0 (0 = no cap), got ", opt.max_pages);
  G4_CHECK(opt.memory_fraction > 0 && opt.memory_fraction <= 1, "EngineOptions: memory_fraction must be in (0, 1], got ",
           opt.memory_fraction);
  G4_CHECK(cfg.bidirectional != "all", "Engine: a model with bidirectional attention over all tokens cannot generate");
  if (opt.eos_ids.empty()) opt.eos_ids = cfg.eos_token_ids;
  for (int64_t id : opt.eos_ids)
    G4_CHECK(id >= 0 && id < cfg.vocab_size, "EngineOptions: eos id ", id, " is outside the vocabulary [0, ",
             cfg.vocab_size, ")");
  ps = opt.page_size;
  context = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : (int64_t{1} << 40);
  softcap = cfg.final_logit_softcapping.value_or(0.0);
  placeholders = model.placeholder_ids();
  for (int64_t l = 0; l < cfg.num_layers; ++l) sliding |= model::layer_kind(cfg, l) == model::AttnKind::kSliding;
  window = sliding ? cfg.sliding_window : 0;

  // A sequence holds at most the pages of one window plus one chunk in the sliding pool, a whole
  // context in the full one.
  const int64_t seq_pages = ceil_div(std::min<int64_t>(context, int64_t{1} << 20), ps);
  const int64_t window_pages = gen::window_pages(window, ps);
  std::array<int64_t, model::kAttnKinds> n{};
  const int64_t full_bytes = std::max<int64_t>(model::page_bytes(cfg, m.dtype(), model::AttnKind::kFull, ps), 1);
  const int64_t sliding_bytes = model::page_bytes(cfg, m.dtype(), model::AttnKind::kSliding, ps);
  if (opt.num_pages > 0) {
    n = {opt.num_pages, sliding ? opt.num_pages : 0};
  } else {
    n[kSliding] = sliding ? opt.max_running * (window_pages + 1) + ceil_div(opt.max_step_tokens, ps) : 0;
    if (m.device() == Device::CPU) {
      // Host memory is not measured: max_running whole contexts (windows), each pool within
      // 4 GiB unless one sequence needs more.
      const int64_t cap = int64_t{4} << 30;
      n[kFull] = std::min(opt.max_running * seq_pages, std::max(seq_pages, cap / full_bytes));
      if (sliding)
        n[kSliding] = std::min(n[kSliding], std::max(window_pages + ceil_div(opt.max_step_tokens, ps),
                                                      cap / std::max<int64_t>(sliding_bytes, 1)));
    } else {
      const auto budget = static_cast<int64_t>(static_cast<double>(device_free_bytes()) * opt.memory_fraction);
      const PoolPages pages =
          pool_pages_for_budget(budget, ps, window, full_bytes, sliding ? sliding_bytes : 0, n[kSliding],
                                sliding ? window_pages + ceil_div(opt.max_step_tokens, ps) : 0);
      n = {pages.full, pages.sliding};
    }
    if (opt.max_pages > 0) {
      const int64_t least = (sliding ? window_pages : 0) + ceil_div(opt.max_step_tokens, ps);
      for (int64_t& pages : n) pages = std::min(pages, std::max(opt.max_pages, least));
    }
    n[kSliding] = std::min(n[kSliding], n[kFull]);
  }
  if (sliding) {
    max_chunk = (n[kSliding] - window_pages) * ps;
    G4_CHECK(max_chunk > 0, "EngineOptions: num_pages ", n[kSliding], " of ", ps,
             " tokens cannot hold a sliding window of ", window, " tokens and one more page");
  } else {
    max_chunk = opt.max_step_tokens;
  }
  max_chunk = std::min(max_chunk, opt.max_step_tokens);
  kv = model::allocate_paged_kv(cfg, m.dtype(), m.device(), n, ps);
  pools.emplace_back(n[kFull]);
  if (sliding) pools.emplace_back(n[kSliding]);
}

uint64_t Engine::Impl::submit(Request request) {
  const RequestOptions& o = request.options;
  const int64_t len = static_cast<int64_t>(request.prompt.size());
  G4_CHECK(len > 0, "Request: the prompt is empty");
  for (size_t i = 0; i < request.prompt.size(); ++i)
    G4_CHECK(request.prompt[i] >= 0 && request.prompt[i] < cfg.vocab_size, "Request: prompt token ", i, " is id ",
             request.prompt[i], ", outside the vocabulary [0, ", cfg.vocab_size, ")");
  validate(o.sampling);
  G4_CHECK(o.max_tokens > 0, "Request: max_tokens must be > 0, got ", o.max_tokens);
  G4_CHECK(o.n > 0, "Request: n must be > 0, got ", o.n);
  G4_CHECK(o.n <= opt.max_running, "Request: n ", o.n, " exceeds the engine's max_running ", opt.max_running);
  G4_CHECK(o.logprobs >= -1, "Request: logprobs must be -1 (none), 0 or the number of alternatives, got ", o.logprobs);
  G4_CHECK(o.logprobs <= kMaxTopLogprobs, "Request: logprobs must be at most ", kMaxTopLogprobs, " alternatives, got ",
           o.logprobs);
  for (int64_t id : o.stop_ids)
    G4_CHECK(id >= 0 && id < cfg.vocab_size, "Request: stop id ", id, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  G4_CHECK(o.stop_strings.empty() || opt.tokenizer, "Request: stop_strings need a tokenizer (EngineOptions::tokenizer)");
  for (const std::string& s : o.stop_strings) G4_CHECK(!s.empty(), "Request: a stop string is empty");
  G4_CHECK(len < context, "Request: the prompt of ", len, " tokens leaves no room in the model's context "
           "(max_position_embeddings ", context, ")");
  // Alone with the whole pool, every sequence must fit (the last token sampled is never fed).
  const int64_t longest = len + std::min(o.max_tokens, context - len) - 1;  // no overflow near INT64_MAX
  G4_CHECK(ceil_div(longest, ps) <= pools[kFull].size(), "Request: a prompt of ", len, " tokens with max_tokens ",
           o.max_tokens, " needs ", ceil_div(longest, ps), " pages of ", ps, " tokens; the pool has ",
           pools[kFull].size());

  auto r = std::make_unique<Req>();
  r->prompt = std::move(request.prompt);
  prepare_media(*r, request.media);
  r->id = next_id++;
  r->o = std::move(request.options);
  r->submitted = Clock::now();
  r->unfinished = r->o.n;
  for (int64_t k = 0; k < r->o.n; ++k) r->samples.push_back(Sample{{}, TextStream(opt.tokenizer, &r->o.stop_strings)});
  auto s = std::make_unique<Seq>();
  s->serial = next_serial++;
  s->req = r.get();
  s->tokens = r->prompt;
  waiting.push_back(std::move(s));
  const uint64_t id = r->id;
  requests[id] = std::move(r);
  return id;
}

void Engine::Impl::prepare_media(Req& r, const RequestMedia& media) {
  const int64_t image_id = cfg.vision ? cfg.vision->image_token_id : -1;
  const int64_t video_id = cfg.vision ? cfg.vision->video_token_id : -1;
  const int64_t audio_id = cfg.conditional && cfg.has_audio ? cfg.audio_token_id : -1;
  const int64_t len = static_cast<int64_t>(r.prompt.size());
  // The three media in transformers' merge order; each placeholder id takes its medium's soft
  // tokens in order.
  enum { kImage, kVideo, kAudio, kMedia };
  const std::array<int64_t, kMedia> ids{image_id, video_id, audio_id};
  const std::array<const char*, kMedia> names{"image", "video", "audio"};
  const auto kind_of = [&](int64_t id) {
    for (int k = 0; k < kMedia; ++k)
      if (id == ids[k] && id >= 0) return k;
    return -1;
  };
  std::array<int64_t, kMedia> placeholders{};
  for (int64_t id : r.prompt)
    if (const int k = kind_of(id); k >= 0) ++placeholders[k];
  const bool none = placeholders[kImage] + placeholders[kVideo] + placeholders[kAudio] == 0;
  if (media.empty() && none) return;
  const Tensor& pixels = media.pixel_values;
  const Tensor& videos = media.pixel_values_videos;
  const Tensor& features = media.input_features;
  G4_CHECK(!pixels.defined() || cfg.vision, "Request: images given, but the model has no vision tower");
  G4_CHECK(!videos.defined() || cfg.vision, "Request: videos given, but the model has no vision tower");
  G4_CHECK(!features.defined() || audio_id >= 0, "Request: audio given, but the model has no audio tower");
  G4_CHECK(pixels.defined() == media.image_position_ids.defined(),
           "Request: give the images' pixel_values and image_position_ids together");
  G4_CHECK(videos.defined() == media.video_position_ids.defined(),
           "Request: give the videos' pixel_values_videos and video_position_ids together");
  G4_CHECK(features.defined() == media.input_features_mask.defined(),
           "Request: give the clips' input_features and input_features_mask together");
  // Soft tokens per item (an image, a video frame: valid patches / k², the pooler's count; a clip:
  // valid frames after the tower's two stride-2 convolutions), to check the placeholders before the
  // towers run. Items in order: images, every frame of every video, clips.
  std::vector<int64_t> per_item;
  std::array<int64_t, kMedia> tokens{}, items{};
  // at: [n, P, 2] positions of n images or frames (padding patches at -1).
  const auto count_patches = [&](int kind, const Tensor& at, int64_t n) {
    const int64_t k = cfg.vision->pooling_kernel_size, P = at.size(-2);
    for (int64_t i = 0; i < n; ++i) {
      int64_t valid = 0;
      for (int64_t p = 0; p < P; ++p) valid += element_as_int(at, (i * P + p) * 2) >= 0;
      per_item.push_back(valid / (k * k));
      tokens[kind] += per_item.back();
    }
    items[kind] = n;
  };
  if (pixels.defined()) {
    const Tensor& at = media.image_position_ids;
    G4_CHECK(pixels.dim() == 3 && at.dim() == 3 && at.size(0) == pixels.size(0) && at.size(1) == pixels.size(1) &&
                 at.size(2) == 2,
             "Request: pixel_values ", pixels.describe(), " and image_position_ids ", at.describe(),
             " must be [images, patches, 3·patch²] and [images, patches, 2]");
    count_patches(kImage, at, at.size(0));
  }
  if (videos.defined()) {
    const Tensor& at = media.video_position_ids;
    G4_CHECK(videos.dim() == 4 && at.dim() == 4 && at.size(0) == videos.size(0) && at.size(1) == videos.size(1) &&
                 at.size(2) == videos.size(2) && at.size(3) == 2,
             "Request: pixel_values_videos ", videos.describe(), " and video_position_ids ", at.describe(),
             " must be [videos, frames, patches, 3·patch²] and [videos, frames, patches, 2]");
    count_patches(kVideo, at, at.size(0) * at.size(1));
  }
  if (features.defined()) {
    const Tensor& mask = media.input_features_mask;
    G4_CHECK(features.dim() == 3 && mask.dim() == 2 && mask.size(0) == features.size(0) &&
                 mask.size(1) == features.size(1),
             "Request: input_features ", features.describe(), " and input_features_mask ", mask.describe(),
             " must be [clips, frames, mel bins] and [clips, frames]");
    for (int64_t c = 0; c < mask.size(0); ++c) {
      int64_t valid = 0;
      for (int64_t f = 0; f < mask.size(1); ++f) valid += element_as_int(mask, c * mask.size(1) + f) != 0;
      per_item.push_back((valid + 3) / 4);
      tokens[kAudio] += per_item.back();
    }
    items[kAudio] = mask.size(0);
  }
  for (int k = 0; k < kMedia; ++k)
    G4_CHECK(placeholders[k] == tokens[k], "Request: the prompt holds ", placeholders[k], " ", names[k],
             " placeholders (id ", ids[k], ") but its ", k == kAudio ? "clip" : names[k], "s give ", tokens[k],
             " soft tokens");

  model::ForwardInputs in;
  in.pixel_values = pixels;
  in.image_position_ids = media.image_position_ids;
  in.pixel_values_videos = videos;
  in.video_position_ids = media.video_position_ids;
  in.input_features = features;
  in.input_features_mask = media.input_features_mask;
  Tensor towers;  // [images' soft tokens ; videos' ; clips']
  {
    ag::NoGrad no_grad;
    const model::SoftTokens soft = model.soft_tokens(in);
    std::vector<Tensor> parts;
    for (const ag::Var* v : {&soft.image, &soft.video, &soft.audio})
      if (v->defined()) parts.push_back(v->value());
    towers = parts.size() == 1 ? parts[0] : ops::concat(parts, 0);
  }
  G4_CHECK(towers.size(0) == tokens[kImage] + tokens[kVideo] + tokens[kAudio], "Request: the towers gave ",
           towers.describe(), " for ", tokens[kImage], " image, ", tokens[kVideo], " video and ", tokens[kAudio],
           " audio soft tokens");

  // Each item's hash (shapes and bytes of its own slices): images, video frames, then clips.
  std::vector<uint64_t> item_hash;
  const auto hash_rows = [&](std::initializer_list<Tensor> ts, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
      Fnv1a f;
      for (const Tensor& t : ts) {
        const Tensor row = t.select0(i);
        for (int64_t d : row.shape()) f.mix(&d, sizeof d);
        f.mix(row.raw(), row.nbytes());
      }
      item_hash.push_back(f.h == 0 ? 1 : f.h);
    }
  };
  if (pixels.defined()) hash_rows({pixels, media.image_position_ids}, items[kImage]);
  if (videos.defined()) {
    const Tensor& at = media.video_position_ids;
    hash_rows({videos.reshape({items[kVideo], videos.size(2), videos.size(3)}),
               at.reshape({items[kVideo], at.size(2), at.size(3)})},
              items[kVideo]);
  }
  if (features.defined()) hash_rows({features, media.input_features_mask}, items[kAudio]);

  // Soft tokens in prompt order, and the item each placeholder belongs to.
  std::vector<int64_t> rows, item_of(static_cast<size_t>(len), -1);
  r.soft_before.assign(static_cast<size_t>(len) + 1, 0);
  std::array<int64_t, kMedia> next_row{0, tokens[kImage], tokens[kImage] + tokens[kVideo]};
  const std::array<int64_t, kMedia> first_item{0, items[kImage], items[kImage] + items[kVideo]};
  std::array<int64_t, kMedia> item{}, left{};
  for (int64_t pos = 0; pos < len; ++pos) {
    if (const int k = kind_of(r.prompt[static_cast<size_t>(pos)]); k >= 0) {
      // Advance to the item with soft tokens left (an item of 0 tokens takes no placeholder).
      while (left[k] == 0) left[k] = per_item[static_cast<size_t>(first_item[k] + item[k]++)];
      --left[k];
      item_of[static_cast<size_t>(pos)] = first_item[k] + item[k] - 1;
      rows.push_back(next_row[k]++);
    }
    r.soft_before[static_cast<size_t>(pos) + 1] = static_cast<int64_t>(rows.size());
  }
  r.soft = ops::embedding(towers, index_tensor(rows, DType::I64, model.device()));

  for (int64_t j = 0; j * ps < len; ++j) {
    Fnv1a f;
    bool any = false;
    int64_t last = -1;
    for (int64_t pos = j * ps; pos < std::min(len, (j + 1) * ps); ++pos) {
      const int64_t item = item_of[static_cast<size_t>(pos)];
      if (item < 0 || item == last) continue;
      f.mix(&item_hash[static_cast<size_t>(item)], sizeof(uint64_t));
      any = true;
      last = item;
    }
    r.page_media.push_back(any ? (f.h == 0 ? 1 : f.h) : 0);
  }

  if (cfg.bidirectional != "vision") return;
  // Image blocks: runs of image or video placeholders (mm types 1 and 2, as transformers'
  // vision_block_ids join them); a video's frames are apart (each after its timestamp), so each
  // frame is its own block.
  const auto vision = [&](int64_t pos) {
    const int k = kind_of(r.prompt[static_cast<size_t>(pos)]);
    return k == kImage || k == kVideo;
  };
  r.block_first.assign(static_cast<size_t>(len), -1);
  r.block_last.assign(static_cast<size_t>(len), -1);
  for (int64_t pos = 0; pos < len;) {
    if (!vision(pos)) {
      ++pos;
      continue;
    }
    int64_t end = pos;
    while (end < len && vision(end)) ++end;
    G4_CHECK(end - pos <= max_chunk, "Request: the image block at prompt positions [", pos, ", ", end, ") has ",
             end - pos, " tokens, more than one step takes (", max_chunk,
             ": max_step_tokens, or the sliding pool's room); its queries must see all of its keys at once");
    for (int64_t q = pos; q < end; ++q) {
      r.block_first[static_cast<size_t>(q)] = pos;
      r.block_last[static_cast<size_t>(q)] = end - 1;
    }
    pos = end;
  }
}

void Engine::Impl::cancel(uint64_t id) {
  auto it = requests.find(id);
  if (it == requests.end() || it->second->cancelled) return;
  it->second->cancelled = true;
  const auto mine = [&](const std::unique_ptr<Seq>& s) {
    if (s->req->id != id) return false;
    release_pages(*s);
    return true;
  };
  running.erase(std::remove_if(running.begin(), running.end(), mine), running.end());
  waiting.erase(std::remove_if(waiting.begin(), waiting.end(), mine), waiting.end());
  cancelled.push_back(id);
}

std::vector<Engine::Impl::Chunk> Engine::Impl::schedule() {
  std::vector<Chunk> plan;
  int64_t budget = opt.max_step_tokens;
  const auto add = [&](Seq& s, int64_t chunk) {
    allocate(s, s.computed + chunk);
    plan.push_back({&s, chunk});
    budget -= chunk;
  };
  // Decode rows first (one token each), then the chunks of prompts being prefilled; oldest first.
  std::vector<Seq*> order;
  for (const auto& s : running)
    if (s->len() - s->computed == 1) order.push_back(s.get());
  for (const auto& s : running)
    if (s->len() - s->computed > 1) order.push_back(s.get());
  for (Seq* s : order) {
    if (!s->running || budget == 0) continue;
    const int64_t chunk = chunk_of(*s, budget);
    if (chunk == 0) continue;  // an image block that waits for a step with room for all of it
    // Out of pages: the most recently admitted sequence gives its pages back and waits.
    while (!fits(*s, s->computed + chunk)) {
      Seq* victim = running.back().get();
      auto in_plan = std::find_if(plan.begin(), plan.end(), [&](const Chunk& c) { return c.seq == victim; });
      if (in_plan != plan.end()) {
        budget += in_plan->len;
        plan.erase(in_plan);
      }
      preempt(victim);
      if (victim == s) break;
    }
    if (s->running) add(*s, chunk);
  }
  // Admission, in queue order, while pages, tokens and rows remain (never preempting for it).
  while (!waiting.empty() && budget > 0) {
    Seq& s = *waiting.front();
    if (!running.empty() && running_samples() + s.samples() > opt.max_running) break;
    if (s.computed == 0) match_prefix(s);
    const int64_t chunk = chunk_of(s, budget);
    if (chunk == 0 || !fits(s, s.computed + chunk)) {
      release_pages(s);
      break;
    }
    Req& r = *s.req;
    if (r.queued_s < 0) r.queued_s = seconds(r.submitted, Clock::now());
    s.running = true;
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
    add(s, chunk);
  }
  return plan;
}

#ifdef G4_WITH_CUDA
uint64_t Engine::Impl::weights_key() const {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the addresses
  const auto mix = [&](const void* p) { h = (h ^ reinterpret_cast<uintptr_t>(p)) * 1099511628211ULL; };
  for (const auto& [name, var] : model.params().params) mix(var.value().raw());
  for (const auto& [name, buffer] : model.params().buffers) mix(buffer.value.raw());
  return h;
}

Tensor Engine::Impl::decode_graph_step(const std::vector<int64_t>& ids, const std::vector<int64_t>& positions,
                                       const std::array<std::vector<int64_t>, model::kAttnKinds>& slots,
                                       const std::array<std::vector<int64_t>, model::kAttnKinds>& tables,
                                       const std::array<int64_t, model::kAttnKinds>& width,
                                       const std::vector<int64_t>& kv_len) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t B = *std::lower_bound(kGraphBuckets.begin(), kGraphBuckets.end(), n);
  const size_t kinds = pools.size();
  DecodeGraph& g = graphs[B];
  const uint64_t key = step_weights;
  bool fresh = !g.graph || g.weights != key;
  for (size_t kind = 0; kind < kinds; ++kind) fresh |= width[kind] > g.width[kind];
  if (fresh) {
    g.graph.reset();
    g.weights = key;
    // Tables widen in powers of two from 16 pages: a growing context recaptures rarely.
    int64_t n32 = 2 * B + 1;
    for (size_t kind = 0; kind < kinds; ++kind) {
      int64_t w = std::max<int64_t>(16, g.width[kind]);
      while (w < width[kind]) w *= 2;
      g.width[kind] = w;
      n32 += B * w;
    }
    const int64_t n64 = B * (4 + static_cast<int64_t>(kinds));
    g.i64 = Tensor::empty({n64}, DType::I64, Device::CUDA);
    g.i32 = Tensor::empty({n32}, DType::I32, Device::CUDA);
    for (int h = 0; h < 2; ++h) {
      g.host64[h] = cuda::PinnedBuffer(static_cast<size_t>(n64) * sizeof(int64_t));
      g.host32[h] = cuda::PinnedBuffer(static_cast<size_t>(n32) * sizeof(int32_t));
    }
    g.step = model::PagedStep{};
    g.step.head_product_only = true;  // the sampler caps the logits
    g.step.ids = g.i64.slice0(0, B);
    g.step.positions = g.i64.slice0(B, B);
    g.step.logit_rows = g.i64.slice0(2 * B, B);
    const Tensor cu_q = g.i32.slice0(0, B + 1), kv_len_t = g.i32.slice0(B + 1, B);
    int64_t at = 2 * B + 1;
    for (size_t kind = 0; kind < kinds; ++kind) {
      g.step.slots[kind] = g.i64.slice0((3 + static_cast<int64_t>(kind)) * B, B);
      g.step.layout[kind].cu_q = cu_q;
      g.step.layout[kind].kv_len = kv_len_t;
      g.step.layout[kind].page_table = g.i32.slice0(at, B * g.width[kind]).reshape({B, g.width[kind]});
      at += B * g.width[kind];
    }
    g.src = g.i64.slice0((3 + static_cast<int64_t>(kinds)) * B, B);
  }
  stage_inputs(g, ids, positions, slots, tables, width, kv_len, {});
  if (g.graph) return g.graph->replay().slice0(0, n);
  // A new capture: this step runs eagerly first (its logits are the step's; lazy initialisations
  // happen outside the capture), then the same forward is captured for the next steps.
  Tensor logits;
  {
    DevicePoolScope scope(graph_pool);
    logits = model.forward_paged(g.step, kv);
  }
  g.graph = std::make_unique<cuda::StepGraph>([&] { return model.forward_paged(g.step, kv); }, graph_pool);
  return logits.slice0(0, n);
}

void Engine::Impl::stage_inputs(DecodeGraph& g, const std::vector<int64_t>& ids, const std::vector<int64_t>& positions,
                                const std::array<std::vector<int64_t>, model::kAttnKinds>& slots,
                                const std::array<std::vector<int64_t>, model::kAttnKinds>& tables,
                                const std::array<int64_t, model::kAttnKinds>& width,
                                const std::vector<int64_t>& kv_len, const std::vector<int64_t>& src) {
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t B = g.src.numel();
  const size_t kinds = pools.size();
  const int h = g.next_host;
  g.next_host ^= 1;
  // Same order as the views of decode_graph_step.
  auto* h64 = static_cast<int64_t*>(g.host64[h].data());
  auto* h32 = static_cast<int32_t*>(g.host32[h].data());
  for (int64_t i = 0; i < B; ++i) {
    const bool live = i < n;
    const size_t li = static_cast<size_t>(i);
    h64[i] = live && !ids.empty() ? ids[li] : 0;
    h64[B + i] = live ? positions[li] : 0;
    h64[2 * B + i] = i;
    for (size_t kind = 0; kind < kinds; ++kind) h64[(3 + static_cast<int64_t>(kind)) * B + i] = live ? slots[kind][li] : -1;
    h64[(3 + static_cast<int64_t>(kinds)) * B + i] = live && !src.empty() ? src[li] : -1;
    h32[B + 1 + i] = live ? static_cast<int32_t>(kv_len[li]) : 0;
  }
  for (int64_t i = 0; i <= B; ++i) h32[i] = static_cast<int32_t>(i);
  int32_t* table = h32 + 2 * B + 1;
  for (size_t kind = 0; kind < kinds; ++kind) {
    const int64_t w = g.width[kind];
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < w; ++j)
        table[i * w + j] = i < n && j < width[kind] ? static_cast<int32_t>(tables[kind][static_cast<size_t>(i * width[kind] + j)]) : -1;
    table += B * w;
  }
  g.host64[h].upload(g.i64);
  g.host32[h].upload(g.i32);
}

void Engine::Impl::look_ahead(const std::vector<Chunk>& plan, const std::vector<std::pair<Seq*, int64_t>>& sampled,
                              const cuda::PendingSamples& samples) {
  if (!opt.lookahead || !opt.cuda_graphs || model.parameter_hooks() || !waiting.empty() || !cancelled.empty() ||
      plan.empty())
    return;
  for (const Chunk& c : plan)  // prefill, or a group to fork
    if (c.len != 1 || c.seq->len() - c.seq->computed != 1 || c.seq->sample < 0) return;
  if (static_cast<size_t>(std::count_if(sampled.begin(), sampled.end(), [](const auto& x) { return x.first; })) !=
      plan.size())
    return;
  // Rows whose sequences go on after this step unless they draw a stop (those finishing by length
  // are left out), each with its row in `samples`.
  std::vector<Seq*> seqs;
  std::vector<int64_t> src;
  for (size_t i = 0; i < sampled.size(); ++i) {
    if (!sampled[i].first) continue;
    Seq& s = *sampled[i].first;
    const Req& r = *s.req;
    if (ends_by_length(r, static_cast<int64_t>(r.samples[static_cast<size_t>(s.sample)].tokens.size()) + 1, s.len()))
      continue;
    seqs.push_back(&s);
    src.push_back(static_cast<int64_t>(i));
  }
  const int64_t n = static_cast<int64_t>(seqs.size());
  if (n == 0) return;
  const int64_t B = *std::lower_bound(kGraphBuckets.begin(), kGraphBuckets.end(), n);
  auto git = graphs.find(B);
  if (git == graphs.end() || !git->second.graph || git->second.weights != step_weights) return;
  DecodeGraph& g = git->second;
  // Each row writes the key of its next token (position computed + 1). Pages taken before a
  // sequence that does not fit stay with their sequences, which need them next step anyway.
  std::array<int64_t, model::kAttnKinds> width{};
  for (Seq* s : seqs) {
    if (!fits(*s, s->computed + 2)) return;
    allocate(*s, s->computed + 2);
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      width[kind] = std::max<int64_t>(width[kind], static_cast<int64_t>(s->pages[kind].size()));
      if (width[kind] > g.width[kind]) return;  // the next step recaptures the graph wider
    }
  }
  std::vector<int64_t> positions, kv_len;
  std::array<std::vector<int64_t>, model::kAttnKinds> slots, tables;
  std::vector<RowSampling> sampling;
  Ahead a;
  a.weights = g.weights;
  for (Seq* s : seqs) {
    const int64_t pos = s->computed + 1;
    positions.push_back(pos);
    kv_len.push_back(pos + 1);
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      slots[kind].push_back(slot_of(*s, kind, pos));
      append_table(tables[kind], *s, kind, width[kind]);
    }
    sampling.push_back(row_sampling(*s->req, s->sample, 1));
    a.rows.push_back({s, s->serial, pos});
  }
  stage_inputs(g, {}, positions, slots, tables, width, kv_len, src);
  cuda::write_sampled_ids(samples, g.src, g.step.ids, placeholders, cfg.pad_token_id);
  const Tensor logits = g.graph->replay().slice0(0, n);
  a.samples = cuda::sample_batch_async(logits, sampling, softcap);
  ahead = std::move(a);
}

bool Engine::Impl::take_ahead(std::vector<Chunk>& plan, std::vector<std::pair<Seq*, int64_t>>& sampled,
                              cuda::PendingSamples& samples) {
  Ahead a = std::move(*ahead);
  ahead.reset();
  if (a.weights != step_weights) return false;
  bool any = false;
  for (const Ahead::Row& row : a.rows) {
    // Compared by address only until the sequence is known to be alive.
    const bool alive = std::any_of(running.begin(), running.end(), [&](const auto& p) { return p.get() == row.seq; });
    Seq* s = alive && row.seq->serial == row.serial && row.seq->running && row.seq->computed == row.computed &&
                     row.seq->len() == row.computed + 1
                 ? row.seq
                 : nullptr;
    sampled.emplace_back(s, s ? s->sample : 0);
    if (s) plan.push_back({s, 1});
    any |= s != nullptr;
  }
  if (!any) {
    sampled.clear();
    return false;
  }
  samples = std::move(a.samples);
  return true;
}
#endif

Completion Engine::Impl::complete(Req& r, int64_t k, FinishReason finish, Event* event) {
  Sample& smp = r.samples[static_cast<size_t>(k)];
  smp.finish = finish;
  const std::string rest = smp.text.take(true);
  if (event) {
    event->text_delta += rest;
    event->finish = finish;
  }
  --r.unfinished;
  Completion c;
  c.request = r.id;
  c.sample = k;
  c.tokens = smp.tokens;
  c.text = smp.text.text();
  c.finish = finish;
  c.prompt_tokens = static_cast<int64_t>(r.prompt.size());
  c.timings.queued_s = std::max(r.queued_s, 0.0);
  c.timings.first_token_s = smp.first_token_s;
  c.timings.total_s = seconds(r.submitted, Clock::now());
  return c;
}

void Engine::Impl::finish_request_if_done(uint64_t id) {
  auto it = requests.find(id);
  if (it != requests.end() && it->second->unfinished == 0) requests.erase(it);
}

void Engine::Impl::queue_step(const std::vector<Chunk>& plan, StepOutput& out) {
  // The step's layout, built on the host and uploaded once.
  const Device dev = model.device();
  std::vector<int64_t> ids, positions, rows, cu_q{0}, kv_len;
  std::array<std::vector<int64_t>, model::kAttnKinds> slots, tables;
  std::array<int64_t, model::kAttnKinds> width{};
  for (const Chunk& c : plan)
    for (size_t kind = 0; kind < pools.size(); ++kind)
      width[kind] = std::max<int64_t>(width[kind], static_cast<int64_t>(c.seq->pages[kind].size()));
  std::vector<RowSampling> sampling;
  // Media of the step's prompt chunks: their soft tokens, each token's soft-token index (-1: none)
  // and the last key each token sees on sliding layers (past its position in an image block).
  std::vector<Tensor> soft;
  std::vector<int64_t> soft_index, q_last;
  int64_t soft_count = 0;
  bool blocks = false;
  for (const Chunk& c : plan) {
    Seq& s = *c.seq;
    const Req& req = *s.req;
    for (int64_t pos = s.computed; pos < s.computed + c.len; ++pos) {
      ids.push_back(s.tokens[static_cast<size_t>(pos)]);
      positions.push_back(pos);
      for (size_t kind = 0; kind < pools.size(); ++kind)
        slots[kind].push_back(slot_of(s, kind, pos));
      const bool in_prompt = pos < static_cast<int64_t>(req.prompt.size());
      const bool soft_here = in_prompt && req.soft.defined() &&
                             req.soft_before[static_cast<size_t>(pos) + 1] > req.soft_before[static_cast<size_t>(pos)];
      soft_index.push_back(soft_here ? soft_count++ : -1);
      const int64_t last =
          in_prompt && !req.block_last.empty() ? req.block_last[static_cast<size_t>(pos)] : int64_t{-1};
      blocks |= last >= 0;
      q_last.push_back(std::max(last, pos));
    }
    if (req.soft.defined()) {
      const int64_t end = std::min<int64_t>(s.computed + c.len, static_cast<int64_t>(req.prompt.size()));
      if (end > s.computed) {
        const int64_t a = req.soft_before[static_cast<size_t>(s.computed)], b = req.soft_before[static_cast<size_t>(end)];
        if (b > a) soft.push_back(req.soft.slice0(a, b - a));
      }
    }
    cu_q.push_back(static_cast<int64_t>(ids.size()));
    kv_len.push_back(s.computed + c.len);
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      append_table(tables[kind], s, kind, width[kind]);
    }
    if (s.computed + c.len < s.len()) continue;
    const Req& r = *s.req;
    for (int64_t k = s.sample < 0 ? 0 : s.sample; k < (s.sample < 0 ? r.o.n : s.sample + 1); ++k) {
      sampling.push_back(row_sampling(r, k, 0));
      rows.push_back(static_cast<int64_t>(ids.size()) - 1);
      out.sampled.emplace_back(&s, k);
    }
  }
  const int64_t n_seq = static_cast<int64_t>(plan.size());
  for (int64_t& id : ids) id = model.text_id(id);  // forward_paged embeds text ids
  out.prepared = Clock::now();
  Tensor logits;
#ifdef G4_WITH_CUDA
  // A decode step (one token of each sequence, each sampled once) replays its bucket's graph.
  if (opt.cuda_graphs && dev == Device::CUDA && !model.parameter_hooks() && soft.empty() && !blocks &&
      static_cast<int64_t>(ids.size()) == n_seq && static_cast<int64_t>(rows.size()) == n_seq &&
      n_seq <= kGraphBuckets.back())
    logits = decode_graph_step(ids, positions, slots, tables, width, kv_len);
#endif
  if (!logits.defined()) {
    model::PagedStep st;
    st.ids = index_tensor(ids, DType::I64, dev);
    st.positions = index_tensor(positions, DType::I64, dev);
    st.logit_rows = index_tensor(rows, DType::I64, dev);
    // The query rows and key counts are the same for both kinds: uploaded once.
    const Tensor cu_q_t = index_tensor(cu_q, DType::I32, dev), kv_len_t = index_tensor(kv_len, DType::I32, dev);
    for (size_t kind = 0; kind < pools.size(); ++kind) {
      st.slots[kind] = index_tensor(slots[kind], DType::I64, dev);
      st.layout[kind].cu_q = cu_q_t;
      st.layout[kind].kv_len = kv_len_t;
      st.layout[kind].page_table = index_tensor(tables[kind], DType::I32, dev).reshape({n_seq, width[kind]});
    }
    if (!soft.empty()) {
      st.soft_tokens = soft.size() == 1 ? soft[0] : ops::concat(soft, 0);
      const auto T = static_cast<int64_t>(ids.size());
      for (int64_t t = 0; t < T; ++t) {
        int64_t& m = soft_index[static_cast<size_t>(t)];
        m = m < 0 ? t : T + m;
      }
      st.merge_rows = index_tensor(soft_index, DType::I64, dev);
    }
    if (blocks) st.q_last = index_tensor(q_last, DType::I32, dev);
    if (opt.dense_prefill && !blocks) st.dense = dense_keys(plan, st, cu_q, dev);
    st.head_product_only = dev == Device::CUDA;  // the GPU sampler caps the logits
    logits = model.forward_paged(st, kv);
  }
  out.forwarded = Clock::now();
  if (!out.sampled.empty()) {
#ifdef G4_WITH_CUDA
    if (logits.device() == Device::CUDA)
      out.pending = cuda::sample_batch_async(logits, sampling, softcap);
    else
#endif
      out.drawn = sample_batch(logits, sampling);
  }
}

std::vector<Event> Engine::Impl::step() {
  const auto started = Clock::now();
  std::vector<Event> events;
  for (uint64_t id : cancelled) {
    Req& r = *requests.at(id);
    for (int64_t k = 0; k < r.o.n; ++k) {
      if (r.samples[static_cast<size_t>(k)].finish != FinishReason::kNone) continue;
      Event e;
      e.request = id;
      e.sample = k;
      completions.push_back(complete(r, k, FinishReason::kCancelled, &e));
      events.push_back(std::move(e));
    }
    finish_request_if_done(id);
  }
  cancelled.clear();
#ifdef G4_WITH_CUDA
  if (opt.cuda_graphs && model.device() == Device::CUDA) step_weights = weights_key();
#endif

  std::vector<Chunk> plan;
  StepOutput out;  // the rows' sequences and draws
#ifdef G4_WITH_CUDA
  const bool took_ahead = ahead && take_ahead(plan, out.sampled, out.pending);
#else
  const bool took_ahead = false;
#endif
  if (took_ahead) {
    out.prepared = out.forwarded = Clock::now();  // queued by the step before
  } else {
    plan = schedule();
    if (plan.empty()) return events;
    queue_step(plan, out);
  }
#ifdef G4_WITH_CUDA
  if (!out.pending.empty()) {
    look_ahead(plan, out.sampled, out.pending);  // queued before this step's tokens come back
    out.drawn = out.pending.wait();
  }
#endif
  const auto drawn_at = Clock::now();

  for (const Chunk& c : plan) {
    c.seq->computed += c.len;
    register_prompt_pages(*c.seq);
    release_out_of_window(*c.seq);
  }

  // What each sample drew; groups fork into one sequence per unfinished sample.
  const auto now = Clock::now();
  std::vector<Seq*> ended;
  std::vector<std::unique_ptr<Seq>> forks;
  for (size_t i = 0; i < out.drawn.size(); ++i) {
    if (!out.sampled[i].first) continue;  // a look-ahead row whose sequence ended before it
    Seq& s = *out.sampled[i].first;
    Req& r = *s.req;
    const int64_t k = out.sampled[i].second;
    Sample& smp = r.samples[static_cast<size_t>(k)];
    const SampledToken& d = out.drawn[i];
    GeneratedToken g;
    g.id = d.token;
    if (r.o.logprobs >= 0) {
      g.logprob = d.logprob;
      g.top_ids = d.top_ids;
      g.top_logprobs = d.top_logprobs;
    }
    if (smp.tokens.empty()) smp.first_token_s = seconds(r.submitted, now);
    smp.tokens.push_back(g);
    Event e;
    e.request = r.id;
    e.sample = k;
    e.tokens.push_back(g);
    const bool eos = !r.o.ignore_eos && std::find(opt.eos_ids.begin(), opt.eos_ids.end(), d.token) != opt.eos_ids.end();
    const bool stop_id = std::find(r.o.stop_ids.begin(), r.o.stop_ids.end(), d.token) != r.o.stop_ids.end();
    FinishReason finish = FinishReason::kNone;
    if (eos || stop_id || smp.text.push(d.token))
      finish = FinishReason::kStop;
    else if (ends_by_length(r, static_cast<int64_t>(smp.tokens.size()), s.len()))
      finish = FinishReason::kLength;
    if (finish != FinishReason::kNone) {
      completions.push_back(complete(r, k, finish, &e));
    } else {
      e.text_delta = smp.text.take(false);
      if (s.sample < 0) {
        auto f = std::make_unique<Seq>(s);
        f->serial = next_serial++;
        f->sample = k;
        for (size_t kind = 0; kind < pools.size(); ++kind)
          for (int64_t p : f->pages[kind])
            if (p >= 0) pools[kind].retain(p);
        f->tokens.push_back(d.token);
        forks.push_back(std::move(f));
      } else {
        s.tokens.push_back(d.token);
      }
    }
    if (finish != FinishReason::kNone || s.sample < 0) ended.push_back(&s);
    events.push_back(std::move(e));
  }
  // Finished samples and forked groups give their pages back; forks take their group's place.
  // Requests are dropped only after the loop: two samples of one request may both end in this step,
  // and the second still points at the request.
  std::vector<uint64_t> touched;
  for (Seq* s : ended) {
    auto it = std::find_if(running.begin(), running.end(), [&](const auto& p) { return p.get() == s; });
    if (it == running.end()) continue;  // a group already handled
    release_pages(*s);
    touched.push_back(s->req->id);
    std::vector<std::unique_ptr<Seq>> mine;
    for (auto& f : forks)
      if (f && f->req == s->req) mine.push_back(std::move(f));
    const auto pos = running.erase(it);
    running.insert(pos, std::make_move_iterator(mine.begin()), std::make_move_iterator(mine.end()));
  }
  for (uint64_t id : touched) finish_request_if_done(id);
  ++host_times.steps;
  host_times.prepare_s += seconds(started, out.prepared);
  host_times.forward_s += seconds(out.prepared, out.forwarded);
  host_times.sample_s += seconds(out.forwarded, drawn_at);
  host_times.bookkeeping_s += seconds(drawn_at, Clock::now());
  return events;
}

Engine::Engine(const model::Gemma4& model, EngineOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(options))) {}
Engine::~Engine() = default;

uint64_t Engine::submit(Request request) { return impl_->submit(std::move(request)); }
void Engine::cancel(uint64_t request) { impl_->cancel(request); }
std::vector<Event> Engine::step() { return impl_->step(); }
bool Engine::idle() const { return impl_->waiting.empty() && impl_->running.empty() && impl_->cancelled.empty(); }

std::vector<Completion> Engine::take_completions() {
  std::vector<Completion> out;
  out.swap(impl_->completions);
  return out;
}

std::vector<Completion> Engine::generate(std::vector<Request> requests) {
  std::vector<uint64_t> ids;
  std::vector<int64_t> first{0};
  for (Request& r : requests) {
    first.push_back(first.back() + r.options.n);
    ids.push_back(submit(std::move(r)));
  }
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;
  std::vector<Completion> out(static_cast<size_t>(first.back()));
  std::vector<Completion> others;  // of requests submitted before this call
  while (!idle()) step();
  for (Completion& c : take_completions()) {
    auto it = index.find(c.request);
    if (it == index.end()) {
      others.push_back(std::move(c));
      continue;
    }
    const size_t at = static_cast<size_t>(first[it->second] + c.sample);
    out[at] = std::move(c);
  }
  impl_->completions = std::move(others);
  return out;
}

PoolStats Engine::stats() const {
  const Impl& m = *impl_;
  PoolStats s;
  s.full_pages = m.pools[kFull].size();
  s.full_free = m.pools[kFull].free();
  if (m.sliding) {
    s.sliding_pages = m.pools[kSliding].size();
    s.sliding_free = m.pools[kSliding].free();
  }
  s.running = static_cast<int64_t>(m.running.size());
  for (const auto& w : m.waiting) s.waiting += w->samples();
  s.preempted_total = m.preempted_total;
  return s;
}

StepHostTimes Engine::host_times() const { return impl_->host_times; }

const EngineOptions& Engine::options() const { return impl_->opt; }

}  // namespace g4::gen

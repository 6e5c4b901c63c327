// g4 bench generate: decode speed of the generation engine on the GPU at the real widths of a
// Gemma 4 model (full depth by default, random weights), for several batch sizes, and with --hf
// the same generation in Hugging Face transformers (tools/bench_hf_generate.py) in the same run.
// With --model diffusiongemma-26b-a4b: block-diffusion sampling at those widths instead, beside our
// autoregressive engine on the same widths and transformers' DiffusionGemma generate
// (tools/bench_hf_diffusion.py); see bench_diffusion below.
//
// Reported per batch size: decode tokens/s (all sequences, after every sequence has its first
// token), time to first token, time per output token, peak memory; at batch 1 also the bandwidth
// roofline: the bytes one decode step must read (the weights a token uses, the whole tied LM head,
// and the KV cache at the mean context) divided by the measured device-to-device copy bandwidth.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/clock.h"
#include "core/device_memory.h"
#include "core/pdl.h"
#include "core/philox.h"
#include "diffusion/sampler.h"
#include "generate/engine.h"
#include "io/json_input.h"
#include "model/named_configs.h"

namespace g4::cli {

namespace {

struct GenBenchOptions {
  std::string model = "gemma-4-26b-a4b";
  int64_t layers = 0;  // 0 = the model's full depth
  std::vector<int64_t> batches;             // parsed from batch_text by the action
  std::string batch_text = "1,16,64,256";  // --batch as given
  int64_t prompt_len = 512, new_tokens = 128;
  int64_t page_size = 16;
  bool hf = false;
  bool no_cuda_graphs = false;
  bool no_lookahead = false;     // EngineOptions::lookahead off
  bool paged_prefill = false;    // every prefill step through the paged kernel (EngineOptions::dense_prefill off)
  int64_t max_step_tokens = 0;   // 0: max(8192, prompt_len), one step a prompt
  bool profile = false;  // a kernel table (CUPTI) of kProfileSteps decode steps per batch size
  std::string hf_script = "tools/bench_hf_generate.py";
  std::string json;
  uint64_t seed = 1234;
  int64_t denoising_steps = 48;  // diffusion: steps per block (adaptive stopping off: the same work every run)
  double temperature = 0;        // 0: greedy; 1: what GRPO's rollouts sample with
};

const std::vector<std::string> kGenBenchModels = {"gemma-4-26b-a4b", "gemma-4-e4b", "gemma-4-31b",
                                                  "diffusiongemma-26b-a4b"};

bool is_diffusion(const std::string& model) { return model.rfind("diffusiongemma", 0) == 0; }

constexpr int kProfileSteps = 8;

struct RunResult {
  int64_t batch = 0;
  double decode_tokens_per_s = 0, ttft_ms = 0, tpot_ms = 0, total_s = 0;
  int64_t peak_bytes = 0;
  KernelProfile profile;  // with --profile
  gen::StepHostTimes host;  // the engine's host time over the decode steps (after every sequence started)
  // The KV pools' sizes and preemptions, and the most sequences one step ran: whether the batch
  // ran together or the pools held fewer.
  gen::PoolStats pool;
  int64_t most_running = 0;
};


double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Device-to-device copy bandwidth (bytes read + bytes written per second) over a 1 GiB buffer:
// what a memory-bound kernel can hope for on this GPU.
double copy_bandwidth() {
  const int64_t n = int64_t{1} << 29;  // bf16 elements = 1 GiB
  Tensor a = Tensor::zeros({n}, DType::BF16, Device::CUDA), b = Tensor::zeros({n}, DType::BF16, Device::CUDA);
  b.copy_from(a);
  device_synchronize();
  const int reps = 20;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) b.copy_from(a);
  device_synchronize();
  return 2.0 * static_cast<double>(n) * 2 * reps / seconds_since(t0);
}

// Bytes one decode step of one sequence reads at `context` tokens: every weight a token uses
// (routed experts: top_k of num_experts; per-layer embeddings: one row), the whole LM head, and
// the keys and values of every attention layer (KV-shared layers read their source's again).
double decode_bytes(const model::Gemma4& m, int64_t context) {
  const io::ModelConfig& c = m.config();
  double bytes = 0;
  for (const std::string& name : m.params().order) {
    const Tensor& t = m.params().at(name).value();
    double b = static_cast<double>(t.numel()) * static_cast<double>(dtype_size(t.dtype()));
    if (name.find("moe.experts.") != std::string::npos) b *= static_cast<double>(c.top_k_experts) / c.num_experts;
    if (name == "model.embed_tokens_per_layer.weight") b /= static_cast<double>(t.size(0));
    bytes += b;
  }
  for (const io::LayerSpec& ls : c.layers) {
    const int64_t seen = ls.sliding && c.sliding_window > 0 ? std::min(context, c.sliding_window) : context;
    bytes += 2.0 * static_cast<double>(seen * ls.num_kv_heads * ls.head_dim) * 2;  // k and v, bf16
  }
  return bytes;
}

std::vector<int64_t> random_prompt(const GenBenchOptions& o, int64_t vocab, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(o.prompt_len));
  for (size_t i = 0; i < p.size(); ++i)
    p[i] = 3 + static_cast<int64_t>(philox_uniform(o.seed, 100 + stream, i) * static_cast<double>(vocab - 4));
  return p;
}

RunResult run_batch(const GenBenchOptions& o, const model::Gemma4& m, int64_t batch) {
  gen::EngineOptions eo;
  eo.page_size = o.page_size;
  eo.max_running = batch;
  eo.max_step_tokens = o.max_step_tokens > 0 ? o.max_step_tokens : std::max<int64_t>(8192, o.prompt_len);
  eo.dense_prefill = !o.paged_prefill;
  eo.eos_ids = {};  // random weights: run every sequence to new_tokens
  eo.cuda_graphs = !o.no_cuda_graphs;
  eo.lookahead = !o.no_lookahead;
  gen::Engine engine(m, eo);
  std::vector<gen::Request> reqs;
  for (int64_t b = 0; b < batch; ++b) {
    gen::Request r;
    r.prompt = random_prompt(o, m.config().vocab_size, static_cast<uint64_t>(b));
    r.options.max_tokens = o.new_tokens;
    r.options.sampling.temperature = o.temperature;
    r.options.sampling.seed = o.seed + static_cast<uint64_t>(b);
    r.options.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  device_synchronize();
  reset_device_memory_peak();
  const auto t0 = Clock::now();
  for (gen::Request& r : reqs) engine.submit(std::move(r));
  // Decode throughput is timed from the step at which every sequence has its first token.
  std::set<uint64_t> started;
  int64_t tokens_after = 0;
  double t_all_started = -1;
  RunResult res;
  int64_t decode_steps = 0;  // after every sequence started
  while (!engine.idle()) {
    // Profiled: kProfileSteps decode steps from the fourth on (each CUDA graph bucket captured).
    const bool profiled = o.profile && t_all_started >= 0 && decode_steps >= 4 && decode_steps < 4 + kProfileSteps;
    if (profiled && decode_steps == 4) profile_start();
    const std::vector<gen::Event> events = engine.step();
    res.most_running = std::max(res.most_running, engine.stats().running);
    if (profiled && decode_steps == 3 + kProfileSteps) res.profile = profile_stop();
    if (t_all_started >= 0) ++decode_steps;
    for (const gen::Event& e : events) {
      if (e.tokens.empty()) continue;
      if (t_all_started >= 0) tokens_after += static_cast<int64_t>(e.tokens.size());
      started.insert(e.request);
    }
    if (t_all_started < 0 && static_cast<int64_t>(started.size()) == batch) {
      t_all_started = seconds_since(t0);
      res.host = engine.host_times();  // subtracted below: the decode steps' share only
    }
  }
  device_synchronize();
  res.host = engine.host_times() - res.host;
  res.batch = batch;
  res.total_s = seconds_since(t0);
  const double decode_s = res.total_s - t_all_started;
  res.decode_tokens_per_s = decode_s > 0 ? static_cast<double>(tokens_after) / decode_s : 0;
  std::vector<double> ttft, tpot;
  for (const gen::Completion& c : engine.take_completions()) {
    ttft.push_back(1e3 * c.timings.first_token_s);
    if (c.tokens.size() > 1)
      tpot.push_back(1e3 * (c.timings.total_s - c.timings.first_token_s) / static_cast<double>(c.tokens.size() - 1));
  }
  res.ttft_ms = median(ttft);
  res.tpot_ms = median(tpot);
  res.peak_bytes = device_memory_stats().peak;
  res.pool = engine.stats();
  return res;
}

nlohmann::json run_hf(const GenBenchOptions& o, int64_t layers) {
  std::string batches;
  for (int64_t b : o.batches) batches += (batches.empty() ? "" : ",") + std::to_string(b);
  return run_python_benchmark(o.hf_script + " --model " + o.model + " --layers " + std::to_string(layers) + " --batch " +
                                  batches + " --prompt-len " + std::to_string(o.prompt_len) + " --new-tokens " +
                                  std::to_string(o.new_tokens) + " --seed " + std::to_string(o.seed),
                              "/tmp/g4_bench_hf_generate.json");
}

struct DiffusionResult {
  int64_t batch = 0;
  double tokens_per_s = 0, seconds = 0, ms_per_block = 0, passes_per_token = 0;
  int64_t peak_bytes = 0;
};

// One batch of `batch` random prompts sampled block by block (g4's draws, the step on the GPU),
// every block running all its denoising steps: no EOS, no adaptive stopping.
DiffusionResult run_diffusion_batch(const GenBenchOptions& o, const model::Gemma4& m, int64_t batch) {
  const int64_t C = m.config().canvas_length;
  const nlohmann::json settings = {{"max_new_tokens", o.new_tokens}, {"max_denoising_steps", o.denoising_steps},
                                   {"stability_threshold", nullptr}, {"eos_token_id", nullptr}};
  const diffusion::GenerationConfig cfg = diffusion::resolve_generation_config(
      nlohmann::json(), "the model (none)", settings, "g4 bench generate", o.prompt_len);
  std::vector<int64_t> ids;
  std::vector<uint64_t> seeds;
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t> p = random_prompt(o, m.config().vocab_size, static_cast<uint64_t>(b));
    ids.insert(ids.end(), p.begin(), p.end());
    seeds.push_back(o.seed + static_cast<uint64_t>(b));
  }
  diffusion::PhiloxDraws draws(seeds);
  device_synchronize();
  reset_device_memory_peak();
  const auto t0 = Clock::now();
  const diffusion::GenerateOutput out =
      diffusion::generate(m, Tensor::from_vector(ids, {batch, o.prompt_len}), {}, cfg, draws);
  device_synchronize();
  DiffusionResult r;
  r.batch = batch;
  r.seconds = seconds_since(t0);
  const int64_t blocks = static_cast<int64_t>(out.steps_per_block.size());
  int64_t steps = 0;
  for (int64_t s : out.steps_per_block) steps += s;
  r.tokens_per_s = static_cast<double>(batch * blocks * C) / r.seconds;
  r.ms_per_block = 1e3 * r.seconds / static_cast<double>(blocks);
  r.passes_per_token = static_cast<double>(steps) / static_cast<double>(blocks * C);
  r.peak_bytes = device_memory_stats().peak;
  return r;
}

// Block diffusion at the DiffusionGemma 26B-A4B widths: tokens/s, decoder passes per token and time
// per block per batch size; our autoregressive engine on the same text widths and prompts (decode
// tokens/s, new tokens = the blocks' tokens); with --hf transformers' DiffusionGemma generate with
// the same settings.
// The model a run builds: the built-in shape at --layers (an autoregressive one with a context long
// enough for the prompt and the new tokens).
io::ModelConfig gen_bench_config(const GenBenchOptions& o) {
  check_bench_model("g4 bench generate", o.model, kGenBenchModels, o.layers);
  nlohmann::json overrides = nlohmann::json::object();
  if (o.layers > 0) overrides["num_hidden_layers"] = o.layers;
  if (!is_diffusion(o.model))
    overrides["max_position_embeddings"] = std::max<int64_t>(131072, o.prompt_len + o.new_tokens);
  return io::parse_model_config(model::named_config(o.model, overrides), "built-in " + o.model);
}

void bench_diffusion(const GenBenchOptions& o, const io::ModelConfig& cfg) {
  const int64_t C = cfg.canvas_length, blocks = (o.new_tokens + C - 1) / C;
  std::printf("g4 bench generate: %s widths, %lld layers, prompts of %lld tokens, %lld blocks of %lld tokens, %lld "
              "denoising steps per block (no early stop), bf16, random weights, programmatic dependent launch %s "
              "(G4_PDL)\n",
              o.model.c_str(), static_cast<long long>(cfg.num_layers), static_cast<long long>(o.prompt_len),
              static_cast<long long>(blocks), static_cast<long long>(C), static_cast<long long>(o.denoising_steps),
              pdl_enabled() ? "on" : "off");
  std::vector<DiffusionResult> ours;
  {
    model::Gemma4 m(cfg, {}, DType::BF16, Device::CUDA);
    m.init_weights(o.seed);
    GenBenchOptions warm = o;
    warm.prompt_len = 16;
    warm.new_tokens = C;
    warm.denoising_steps = 2;
    run_diffusion_batch(warm, m, 1);
    for (int64_t b : o.batches) {
      ours.push_back(run_diffusion_batch(o, m, b));
      const DiffusionResult& r = ours.back();
      std::printf("  g4 diffusion batch %4lld: %9.0f tokens/s, %8.1f ms per block, %.3f decoder passes per token, "
                  "peak %.1f GiB\n",
                  static_cast<long long>(b), r.tokens_per_s, r.ms_per_block, r.passes_per_token,
                  static_cast<double>(r.peak_bytes) / (1 << 30));
      std::fflush(stdout);
    }
  }
  release_cached_device_memory();
  // The autoregressive engine on the same text stack (the 26B-A4B it was adapted from).
  std::vector<RunResult> ar;
  {
    GenBenchOptions a = o;
    a.model = "gemma-4-26b-a4b";
    a.new_tokens = blocks * C;
    const io::ModelConfig ar_cfg = gen_bench_config(a);
    model::Gemma4 m(ar_cfg, {}, DType::BF16, Device::CUDA);
    m.init_weights(o.seed);
    GenBenchOptions warm = a;
    warm.prompt_len = 16;
    warm.new_tokens = 4;
    run_batch(warm, m, 1);
    for (int64_t b : o.batches) {
      ar.push_back(run_batch(a, m, b));
      std::printf("  g4 autoregressive batch %4lld: decode %9.0f tokens/s\n", static_cast<long long>(b),
                  ar.back().decode_tokens_per_s);
      std::fflush(stdout);
    }
  }
  release_cached_device_memory();
  nlohmann::json hf;
  if (o.hf) {
    std::string batches;
    for (int64_t b : o.batches) batches += (batches.empty() ? "" : ",") + std::to_string(b);
    hf = run_python_benchmark("tools/bench_hf_diffusion.py --layers " + std::to_string(cfg.num_layers) + " --batch " +
                                  batches + " --prompt-len " + std::to_string(o.prompt_len) + " --canvas " +
                                  std::to_string(C) + " --blocks " + std::to_string(blocks) + " --steps " +
                                  std::to_string(o.denoising_steps) + " --seed " + std::to_string(o.seed),
                              "/tmp/g4_bench_hf_diffusion.json");
    if (hf.contains("error")) std::printf("  HF: %s\n", hf["error"].get<std::string>().c_str());
  }
  std::printf("\n  %6s %16s %12s %14s %8s %16s %8s\n", "batch", "g4 diff tok/s", "ms/block", "HF diff tok/s", "g4/HF",
              "g4 AR tok/s", "diff/AR");
  nlohmann::json report = {{"model", o.model},          {"layers", cfg.num_layers}, {"prompt_len", o.prompt_len},
                           {"canvas", C},                {"blocks", blocks},
                           {"denoising_steps", o.denoising_steps}};
  for (size_t i = 0; i < ours.size(); ++i) {
    const DiffusionResult& r = ours[i];
    double hf_tps = 0;
    if (hf.contains("runs"))
      for (const auto& h : hf["runs"])
        if (h.value("batch", int64_t{-1}) == r.batch) hf_tps = h.value("tokens_per_s", 0.0);
    const double ar_tps = ar[i].decode_tokens_per_s;
    std::printf("  %6lld %16.0f %12.1f %14s %8s %16.0f %7.2fx\n", static_cast<long long>(r.batch), r.tokens_per_s,
                r.ms_per_block, hf_tps > 0 ? std::to_string(static_cast<int64_t>(hf_tps)).c_str() : "-",
                hf_tps > 0 ? (std::to_string(r.tokens_per_s / hf_tps).substr(0, 5) + "x").c_str() : "-", ar_tps,
                r.tokens_per_s / ar_tps);
    report["g4"].push_back({{"batch", r.batch},
                            {"tokens_per_s", r.tokens_per_s},
                            {"ms_per_block", r.ms_per_block},
                            {"passes_per_token", r.passes_per_token},
                            {"peak_bytes", r.peak_bytes},
                            {"autoregressive_decode_tokens_per_s", ar_tps}});
  }
  if (o.hf) report["hf"] = hf;
  if (!o.json.empty()) io::write_file_atomic(o.json, report.dump(2) + "\n");
}

void bench_generate(const GenBenchOptions& o) {
  // Every flag is checked before the GPU is looked at: on a machine without one, a mistake in them
  // is reported as such, not hidden behind "needs a CUDA GPU".
  const io::ModelConfig cfg = gen_bench_config(o);
  if (!o.json.empty()) check_output_file_creatable(o.json, "g4 bench generate: --json");
  if (o.hf) check_python_benchmark("g4 bench generate", o.hf_script);
  G4_CHECK(cuda_available(), "g4 bench generate needs a CUDA GPU (this build or machine has none)");
  if (is_diffusion(o.model)) return bench_diffusion(o, cfg);
  G4_CHECK(!(o.hf && o.temperature > 0), "g4 bench generate: --hf compares greedy decoding; drop --temperature ",
           o.temperature, " or --hf");
  const std::string sampling = o.temperature > 0 ? "temperature " + std::to_string(o.temperature) : "greedy";
  std::printf("g4 bench generate: %s widths, %lld layers, prompts of %lld tokens, %lld new tokens, %s, bf16, "
              "random weights, CUDA graphs %s, look-ahead %s, programmatic dependent launch %s (G4_PDL), prefill "
              "attention %s\n",
              o.model.c_str(), static_cast<long long>(cfg.num_layers), static_cast<long long>(o.prompt_len),
              static_cast<long long>(o.new_tokens), sampling.c_str(), o.no_cuda_graphs ? "off" : "on",
              o.no_lookahead || o.no_cuda_graphs ? "off" : "on", pdl_enabled() ? "on" : "off",
              o.paged_prefill ? "paged" : "dense");
  const double bw = copy_bandwidth();
  std::vector<RunResult> ours;
  double step_bytes = 0;
  {
    model::Gemma4 m(cfg, {}, DType::BF16, Device::CUDA);
    m.init_weights(o.seed);
    step_bytes = decode_bytes(m, o.prompt_len + o.new_tokens / 2);
    {  // warm-up: kernels loaded, cuBLAS handles made, the allocator primed
      GenBenchOptions w = o;
      w.prompt_len = std::min<int64_t>(o.prompt_len, 64);
      w.new_tokens = 4;
      run_batch(w, m, 1);
    }
    for (int64_t b : o.batches) {
      ours.push_back(run_batch(o, m, b));
      const RunResult& r = ours.back();
      std::printf("  g4 batch %4lld: decode %9.0f tokens/s, TTFT %8.1f ms, TPOT %7.2f ms, peak %.1f GiB\n",
                  static_cast<long long>(b), r.decode_tokens_per_s, r.ttft_ms, r.tpot_ms,
                  static_cast<double>(r.peak_bytes) / (1 << 30));
      if (r.host.steps > 0) {
        // Between two steps the GPU waits for about prepare + forward + bookkeeping (the forward is queued
        // asynchronously; sampling waits for it).
        const double per = 1e6 / static_cast<double>(r.host.steps);
        std::printf("    host per decode step (%lld steps): prepare %.0f us, queue the forward %.0f us, sample "
                    "(waits for the GPU) %.0f us, bookkeeping %.0f us\n",
                    static_cast<long long>(r.host.steps), r.host.prepare_s * per, r.host.forward_s * per,
                    r.host.sample_s * per, r.host.bookkeeping_s * per);
      }
      std::printf("    KV pools: %lld full pages, %lld sliding; at most %lld sequences in a step, %lld preempted\n",
                  static_cast<long long>(r.pool.full_pages), static_cast<long long>(r.pool.sliding_pages),
                  static_cast<long long>(r.most_running), static_cast<long long>(r.pool.preempted_total));
      if (o.profile) print_profile(r.profile, kProfileSteps);
      std::fflush(stdout);
    }
  }
  release_cached_device_memory();  // hand the memory back before the competitor runs
  const double roofline = bw / step_bytes;
  std::printf("\n  copy bandwidth %.0f GB/s; one batch-1 decode step reads %.2f GB -> roofline %.0f tokens/s\n",
              bw / 1e9, step_bytes / 1e9, roofline);
  nlohmann::json report = {{"model", o.model},
                           {"cuda_graphs", !o.no_cuda_graphs},
                           {"dense_prefill", !o.paged_prefill},
                           {"pdl", pdl_enabled()},
                           {"layers", cfg.num_layers},
                           {"prompt_len", o.prompt_len},
                           {"new_tokens", o.new_tokens},
                           {"copy_bandwidth_bytes_per_s", bw},
                           {"batch1_step_bytes", step_bytes},
                           {"batch1_roofline_tokens_per_s", roofline}};
  nlohmann::json hf;
  if (o.hf) hf = run_hf(o, cfg.num_layers);
  std::printf("\n  %6s %14s %10s %10s %10s %14s %8s\n", "batch", "g4 tokens/s", "TTFT ms", "TPOT ms", "peak GiB",
              "HF tokens/s", "g4/HF");
  for (const RunResult& r : ours) {
    nlohmann::json row = {{"batch", r.batch},       {"decode_tokens_per_s", r.decode_tokens_per_s},
                          {"ttft_ms", r.ttft_ms},   {"tpot_ms", r.tpot_ms},
                          {"peak_bytes", r.peak_bytes}, {"total_s", r.total_s},
                          {"kv_pool", {{"full_pages", r.pool.full_pages},
                                       {"sliding_pages", r.pool.sliding_pages},
                                       {"most_running", r.most_running},
                                       {"preempted", r.pool.preempted_total}}}};
    if (r.host.steps > 0)
      row["host_per_decode_step_s"] = {{"prepare", r.host.prepare_s / static_cast<double>(r.host.steps)},
                                       {"forward", r.host.forward_s / static_cast<double>(r.host.steps)},
                                       {"sample", r.host.sample_s / static_cast<double>(r.host.steps)},
                                       {"bookkeeping", r.host.bookkeeping_s / static_cast<double>(r.host.steps)}};
    if (r.batch == 1) row["roofline_share"] = r.decode_tokens_per_s / roofline;
    double hf_tps = 0;
    if (hf.contains("runs"))
      for (const auto& h : hf["runs"])
        if (h.value("batch", int64_t{-1}) == r.batch) hf_tps = h.value("decode_tokens_per_s", 0.0);
    std::printf("  %6lld %14.0f %10.1f %10.2f %10.1f %14s %8s", static_cast<long long>(r.batch), r.decode_tokens_per_s,
                r.ttft_ms, r.tpot_ms, static_cast<double>(r.peak_bytes) / (1 << 30),
                hf_tps > 0 ? std::to_string(static_cast<int64_t>(hf_tps)).c_str() : "-",
                hf_tps > 0 ? (std::to_string(r.decode_tokens_per_s / hf_tps).substr(0, 5) + "x").c_str() : "-");
    if (r.batch == 1) std::printf("   (%.0f%% of the roofline)", 100 * r.decode_tokens_per_s / roofline);
    std::printf("\n");
    report["g4"].push_back(row);
  }
  if (o.hf) {
    report["hf"] = hf;
    if (hf.contains("error")) std::printf("  HF: %s\n", hf["error"].get<std::string>().c_str());
  }
  if (!o.json.empty()) io::write_file_atomic(o.json, report.dump(2) + "\n");
}

}  // namespace

void add_bench_generate(CLI::App& bench, Action& action) {
  auto* cmd = bench.add_subcommand("generate", "Generation speed at a real Gemma 4 shape, optionally against "
                                               "Hugging Face transformers' generate");
  auto o = std::make_shared<GenBenchOptions>();
  cmd->add_option("--model", o->model,
                  "gemma-4-26b-a4b | gemma-4-e4b | gemma-4-31b | diffusiongemma-26b-a4b (real widths)")
      ->check(CLI::IsMember(kGenBenchModels));
  cmd->add_option("--layers", o->layers, "decoder layers (default: the full depth)")->check(positive_integer());
  cmd->add_option("--batch", o->batch_text, "concurrent sequences, e.g. 1,16,64,256 (the default)");
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence")->check(positive_integer());
  cmd->add_option("--new-tokens", o->new_tokens, "tokens generated per sequence (diffusion: rounded up to whole blocks)")
      ->check(positive_integer());
  cmd->add_option("--denoising-steps", o->denoising_steps, "diffusion: denoising steps per block (all of them run)")
      ->check(positive_integer());
  cmd->add_option("--page-size", o->page_size, "KV page size in tokens")->check(positive_integer());
  cmd->add_flag("--no-cuda-graphs", o->no_cuda_graphs, "run every decode step eagerly (EngineOptions::cuda_graphs off)");
  cmd->add_flag("--no-lookahead", o->no_lookahead,
                "wait for each decode step's tokens before queuing the next (EngineOptions::lookahead off)");
  cmd->add_flag("--paged-prefill", o->paged_prefill,
                "prefill through the paged attention kernel too (EngineOptions::dense_prefill off)");
  cmd->add_option("--max-step-tokens", o->max_step_tokens,
                  "tokens one engine step takes (default: max(8192, --prompt-len), a prompt in one step)")
      ->check(positive_integer());
  cmd->add_option("--temperature", o->temperature,
                  "sampling temperature of the autoregressive requests (default 0: greedy; 1 samples as GRPO's rollouts do)")
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_flag("--profile", o->profile, "print the GPU time of every kernel over 8 decode steps per batch size (CUPTI)");
  cmd->add_flag("--hf", o->hf, "also run tools/bench_hf_generate.py (transformers' generate) on the same shapes");
  cmd->add_option("--hf-script", o->hf_script, "path of the Hugging Face benchmark script");
  cmd->add_option("--json", o->json, "write the results as JSON");
  cmd->add_option("--seed", o->seed, "seed of the weights and the prompts")->check(unsigned_integer());
  cmd->callback([&action, o] {
    action = [o] {
      o->batches = parse_integer_list(o->batch_text, "--batch", "a batch size", 1, std::numeric_limits<int64_t>::max());
      bench_generate(*o);
    };
  });
}

}  // namespace g4::cli

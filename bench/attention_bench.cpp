// Times the CUDA flash attention, forward and forward + backward, on Gemma 4 shapes and prints
// TFLOP/s. FLOP convention (FlashAttention's benchmarks, also used by tools/bench_torch_attention.py):
// forward = 4 · pairs · d · nH per batch row, where pairs = S²/2 for causal and the exact number of
// visible (query, key) pairs for a sliding window; backward = 2.5 × forward, so forward + backward
// = 3.5 × forward. Ratios between implementations do not depend on the convention.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "core/kernel_profile.h"
#include "core/random.h"
#include "core/tensor.h"
#include "ops/attention.h"
#include "ops/cuda/attention.h"

namespace {

using g4::Device;
using g4::DType;
using g4::Tensor;

Tensor random_gpu(const g4::Shape& shape, uint64_t seed, double std) {
  return g4::randn(shape, seed, DType::F32, std).to(DType::BF16).to(Device::CUDA);
}

// Mean milliseconds of fn over iters runs after warm-up, timed with events on g4's stream.
double time_ms(const std::function<void()>& fn, int iters) {
  for (int i = 0; i < 2; ++i) fn();
  cudaEvent_t start, stop;
  G4_CUDA_CHECK(cudaEventCreate(&start));
  G4_CUDA_CHECK(cudaEventCreate(&stop));
  G4_CUDA_CHECK(cudaEventRecord(start, g4::cuda::stream()));
  for (int i = 0; i < iters; ++i) fn();
  G4_CUDA_CHECK(cudaEventRecord(stop, g4::cuda::stream()));
  G4_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  G4_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  G4_CUDA_CHECK(cudaEventDestroy(start));
  G4_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / iters;
}

bool g_profile = false;  // --profile: the kernels of one backward, from CUPTI
int64_t g_only_d = 0;    // --d N: only the cases with head dim N

void print_profile(const std::function<void()>& fn) {
  g4::profile_start();
  fn();
  const g4::KernelProfile prof = g4::profile_stop();
  std::printf("      profile of one backward: %.3f ms, GPU busy %.3f ms\n", prof.window_ms, prof.busy_ms);
  for (size_t i = 0; i < prof.kernels.size() && i < 6; ++i)
    std::printf("        %8.3f ms %5lld x  %.90s\n", prof.kernels[i].total_ms,
                static_cast<long long>(prof.kernels[i].count), prof.kernels[i].name.c_str());
}

// `docs` (lengths adding up to S): a packed row, causal within each document and none across; the
// window, if any, applies within each document.
void bench(int64_t S, int64_t nH, int64_t nKV, int64_t d, int64_t window, int iters,
           const std::vector<int64_t>& docs = {}) {
  if (g_only_d != 0 && d != g_only_d) return;
  const int64_t B = 1;
  g4::ops::AttentionMask mask;
  mask.causal = true;
  mask.window = window;
  // The visible (query, key) pairs: query t of its document sees min(t + 1, window) keys.
  const std::vector<int64_t> lengths = docs.empty() ? std::vector<int64_t>{S} : docs;
  double pairs = 0;
  for (const int64_t len : lengths)
    for (int64_t t = 0; t < len; ++t) pairs += static_cast<double>(window > 0 && t + 1 > window ? window : t + 1);
  if (!docs.empty()) {
    std::vector<int32_t> ids;
    for (size_t n = 0; n < docs.size(); ++n)
      ids.insert(ids.end(), static_cast<size_t>(docs[n]), static_cast<int32_t>(n));
    mask.q_doc = Tensor::from_vector<int32_t>(ids, {1, S}).to(g4::Device::CUDA);
    mask.k_doc = mask.q_doc;
  }
  const double fwd_flops = 4.0 * pairs * static_cast<double>(d) * static_cast<double>(nH * B);
  // Gemma 4: scale 1 on RMS-normed q and k; std d^-1/4 keeps the scores O(1).
  const double std_qk = 1.0 / std::sqrt(std::sqrt(static_cast<double>(d)));
  const Tensor q = random_gpu({B, S, nH, d}, 1, std_qk), k = random_gpu({B, S, nKV, d}, 2, std_qk),
               v = random_gpu({B, S, nKV, d}, 3, 1.0), dout = random_gpu({B, S, nH, d}, 4, 1.0);
  Tensor lse, out, dq, dk, dv;
  const double fwd_ms = time_ms([&] { out = g4::ops::attention(q, k, v, mask, 1.0, &lse); }, iters);
  std::string what = window > 0 ? "window " + std::to_string(window) : std::string(docs.empty() ? "causal" : "");
  if (!docs.empty()) what += (what.empty() ? "" : ", ") + std::to_string(docs.size()) + " documents";
  // Every forward at head dims 256 and 512, in the same run: FlashAttention-2, and the wgmma kernel
  // with each schedule (the serial one also with each cluster size, query heads sharing each K/V
  // load, that the GQA group allows; at d = 512 first the softmax group). The op's choice,
  // timed above, is one of them.
  if (d == 256 || d == 512) {
    using g4::ops::cuda::ForwardKernel;
    const auto line = [&](const std::string& name, const std::function<void()>& fn) {
      const double ms = time_ms(fn, iters);
      std::printf("      forward %-42s %8.3f ms %6.1f TFLOP/s (%.2fx the op's)\n", name.c_str(), ms,
                  fwd_flops / ms * 1e-9, fwd_ms / ms);
    };
    line("flash2", [&] { out = g4::ops::cuda::attention(q, k, v, mask, 1.0, &lse, ForwardKernel::flash2); });
    line("wgmma pipelined",
         [&] { out = g4::ops::cuda::attention(q, k, v, mask, 1.0, &lse, ForwardKernel::wgmma_pipelined); });
    // `name` with one CTA a cluster, then in each cluster size the GQA group allows (G4_ATTENTION_CLUSTER).
    const auto cluster_lines = [&](const std::string& name, const std::function<void()>& fn) {
      for (const int cluster : {1, 2, 4}) {
        if ((nH / nKV) % cluster != 0) continue;
        setenv("G4_ATTENTION_CLUSTER", std::to_string(cluster).c_str(), 1);
        line(cluster == 1 ? name : name + ", clusters of " + std::to_string(cluster), fn);
      }
      unsetenv("G4_ATTENTION_CLUSTER");
    };
    if (d == 512)
      cluster_lines("wgmma softmax group",
                    [&] { out = g4::ops::cuda::attention(q, k, v, mask, 1.0, &lse, ForwardKernel::wgmma); });
    setenv("G4_ATTENTION_SOFTMAX_GROUP", "0", 1);
    for (const int cluster : {1, 2, 4}) {
      if ((nH / nKV) % cluster != 0 || (d == 256 && cluster > 1)) continue;
      setenv("G4_ATTENTION_CLUSTER", std::to_string(cluster).c_str(), 1);
      line("wgmma serial, clusters of " + std::to_string(cluster),
           [&] { out = g4::ops::cuda::attention(q, k, v, mask, 1.0, &lse, ForwardKernel::wgmma); });
    }
    unsetenv("G4_ATTENTION_CLUSTER");
    unsetenv("G4_ATTENTION_SOFTMAX_GROUP");
    if (d == 512) {
      // The serial schedule's loads and barriers with no arithmetic (its output is left unwritten and
      // dropped): the floor its K and V loads set; in clusters too, each K and V box read from L2 once
      // for 2 or 4 CTAs that each still take in every byte (that floor falls: the reads set it).
      cluster_lines("wgmma serial, loads alone", [&] {
        g4::ops::cuda::attention(q, k, v, mask, 1.0, nullptr, ForwardKernel::wgmma_loads_only);
      });
    }
    out = g4::ops::attention(q, k, v, mask, 1.0, &lse);
  }
  // Both backward kernels; the op's automatic choice is marked with '*'.
  using g4::ops::cuda::BackwardKernel;
  const BackwardKernel chosen = g4::ops::cuda::automatic_backward_kernel(d, d, window, S);
  for (const BackwardKernel kernel : {BackwardKernel::flash, BackwardKernel::key_chunked}) {
    const double bwd_ms = time_ms(
        [&] { g4::ops::cuda::attention_backward(dout, q, k, v, out, lse, mask, 1.0, dq, dk, dv, kernel); }, iters);
    if (g_profile)
      print_profile([&] { g4::ops::cuda::attention_backward(dout, q, k, v, out, lse, mask, 1.0, dq, dk, dv, kernel); });
    std::printf(
        "g4    S=%-5lld nH=%-2lld nKV=%-2lld d=%-3lld %-24s fwd %8.3f ms %6.1f TFLOP/s | bwd %-7s%s %8.3f ms "
        "%6.1f | fwd+bwd %8.3f ms %6.1f TFLOP/s\n",
        static_cast<long long>(S), static_cast<long long>(nH), static_cast<long long>(nKV), static_cast<long long>(d),
        what.c_str(), fwd_ms, fwd_flops / fwd_ms * 1e-9, kernel == BackwardKernel::flash ? "flash" : "chunked",
        kernel == chosen ? "*" : " ", bwd_ms, 2.5 * fwd_flops / bwd_ms * 1e-9, fwd_ms + bwd_ms,
        3.5 * fwd_flops / (fwd_ms + bwd_ms) * 1e-9);
  }
  // Under a sliding window each chunk's products cover its keys against every query that may see
  // one of them (the chunk plus the window): smaller chunks waste less of that rectangle, but each
  // chunk reads and writes the dQ accumulator rows it reaches. Smaller chunks beside the default
  // under a window, larger ones without (fewer passes over dQ, more workspace), for choosing it.
  const std::vector<int> chunks = window > 0 ? std::vector<int>{256, 512} : std::vector<int>{2048, 4096};
  if (window > 0 || d > 256) {
    for (const int chunk : chunks) {
      if (chunk > S) continue;
      const double ms = time_ms(
          [&] {
            g4::ops::cuda::attention_backward(dout, q, k, v, out, lse, mask, 1.0, dq, dk, dv,
                                              BackwardKernel::key_chunked, chunk);
          },
          iters);
      std::printf("      backward chunked, %4d-key chunks     %8.3f ms %6.1f TFLOP/s\n", chunk, ms,
                  2.5 * fwd_flops / ms * 1e-9);
    }
  }
}

// One forward and one backward of the op (its automatic kernels) on each shape of length S, nothing
// timed: the launches a kernel profiler (Nsight Compute) captures one by one, without counting past
// warm-ups (scripts/gpu_checks.sh attention-profile).
void run_once(int64_t S) {
  struct Shape {
    int64_t nKV, d, window;
  };
  for (const Shape sh : {Shape{8, 256, 0}, Shape{8, 256, 1024}, Shape{2, 512, 0}}) {
    if (g_only_d != 0 && sh.d != g_only_d) continue;
    g4::ops::AttentionMask mask;
    mask.causal = true;
    mask.window = sh.window;
    const double std_qk = 1.0 / std::sqrt(std::sqrt(static_cast<double>(sh.d)));
    const int64_t nH = 16;
    const Tensor q = random_gpu({1, S, nH, sh.d}, 1, std_qk), k = random_gpu({1, S, sh.nKV, sh.d}, 2, std_qk),
                 v = random_gpu({1, S, sh.nKV, sh.d}, 3, 1.0), dout = random_gpu({1, S, nH, sh.d}, 4, 1.0);
    Tensor lse, dq, dk, dv;
    const Tensor out = g4::ops::attention(q, k, v, mask, 1.0, &lse);
    g4::ops::attention_backward(dout, q, k, v, out, lse, mask, 1.0, dq, dk, dv);
    G4_CUDA_CHECK(cudaStreamSynchronize(g4::cuda::stream()));
    std::printf("once: S=%lld nH=%lld nKV=%lld d=%lld window %lld\n", static_cast<long long>(S),
                static_cast<long long>(nH), static_cast<long long>(sh.nKV), static_cast<long long>(sh.d),
                static_cast<long long>(sh.window));
  }
}

// --trace S: the head-dim-512 softmax group on one causal row of S tokens, 16 query heads, 2 KV
// heads, with its warpgroups' cycle counters (ops::cuda::attention_trace): for the CTA that sees the
// most key tiles, the mean cycles of each step of a tile over the tiles after the first four (the
// pipeline's fill), so that the step the others wait for shows. It runs in pairs, as the op does at
// this GQA group, unless G4_ATTENTION_CLUSTER says otherwise (the first CTA of the cluster is traced).
void run_trace(int64_t S) {
  g4::ops::AttentionMask mask;
  mask.causal = true;
  const double std_qk = 1.0 / std::sqrt(std::sqrt(512.0));
  const Tensor q = random_gpu({1, S, 16, 512}, 1, std_qk), k = random_gpu({1, S, 2, 512}, 2, std_qk),
               v = random_gpu({1, S, 2, 512}, 3, 1.0);
  const int64_t tiles = std::min<int64_t>(S / 64, 256);
  g4::ops::cuda::attention_trace(q, k, v, mask, 1.0);  // warm-up
  const Tensor trace = g4::ops::cuda::attention_trace(q, k, v, mask, 1.0).to(Device::CPU);
  const int64_t* t = static_cast<const int64_t*>(trace.raw());
  const int64_t events = trace.size(2), per_group = trace.size(1) * events;
  // The mean over tiles j of (event eb of warpgroup gb in tile j + next) - (event ea of warpgroup ga in
  // tile j): one clock, all warpgroups run on the traced CTA's multiprocessor.
  const auto between = [&](int ga, int ea, int gb, int eb, int next) {
    double sum = 0;
    int count = 0;
    for (int64_t it = 4; it + 1 < tiles; ++it) {
      sum += static_cast<double>(t[gb * per_group + (it + next) * events + eb] - t[ga * per_group + it * events + ea]);
      ++count;
    }
    return count > 0 ? sum / count : 0.0;
  };
  // The same within one warpgroup (eb < 0: event ea of the next tile).
  const auto mean = [&](int group, int ea, int eb) {
    return eb < 0 ? between(group, ea, group, ea, 1) : between(group, ea, group, eb, 0);
  };
  const char* cluster = std::getenv("G4_ATTENTION_CLUSTER");
  std::printf("trace S=%lld, softmax group in clusters of %s, cycles a key tile (mean over %lld tiles):\n",
              static_cast<long long>(S), cluster != nullptr && *cluster != 0 ? cluster : "2 (the default at GQA 8)",
              static_cast<long long>(tiles - 5));
  std::printf("  softmax warpgroup: K part 0 wait %.0f | part 1 wait + issue %.0f | S products %.0f | softmax %.0f"
              " | wait for a free P buffer %.0f | write P %.0f | tile %.0f\n",
              mean(2, 0, 1), mean(2, 1, 2), mean(2, 2, 3), mean(2, 3, 4), mean(2, 4, 5), mean(2, 5, 6),
              mean(2, 0, -1));
  for (int g = 0; g < 2; ++g)
    std::printf("  P·V warpgroup %d: wait for P %.0f | wait for V %.0f | P·V products %.0f | release, refill %.0f"
                " | tile %.0f\n",
                g, mean(g, 0, 1), mean(g, 1, 2), mean(g, 2, 3), mean(g, 3, 4), mean(g, 0, -1));
  // In clusters the P·V warpgroups refill K (event 5): when, after the softmax warpgroup's S of the same
  // tile was done (its event 3), and how long before the next tile's S found K there (its event 2).
  if (t[5] != 0) {
    for (int g = 0; g < 2; ++g)
      std::printf("  K part %d refilled %.0f cycles after S was done, %.0f before the next S found it\n", g,
                  between(2, 3, g, 5, 0), between(g, 5, 2, 2, 1));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!g4::cuda_available()) {
    std::printf("bench_attention: no CUDA device\n");
    return 1;
  }
  int iters = 10;
  int64_t once = 0;   // --once S: see run_once
  int64_t trace = 0;  // --trace S: see run_trace
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--profile")
      g_profile = true;
    else if (std::string(argv[i]) == "--d" && i + 1 < argc)
      g_only_d = std::atoll(argv[++i]);
    else if (std::string(argv[i]) == "--once" && i + 1 < argc)
      once = std::atoll(argv[++i]);
    else if (std::string(argv[i]) == "--trace" && i + 1 < argc)
      trace = std::atoll(argv[++i]);
    else
      iters = std::atoi(argv[i]);
  }
  if (once > 0) {
    run_once(once);
    return 0;
  }
  if (trace > 0) {
    run_trace(trace);
    return 0;
  }
  for (int64_t S : {1024, 4096, 8192}) {
    bench(S, 16, 8, 256, 0, iters);
    bench(S, 16, 8, 256, 1024, iters);
    bench(S, 16, 2, 512, 0, iters);
  }
  const std::vector<int64_t> docs_4096 = {1024, 512, 1536, 768, 256};  // tools/bench_torch_attention.py's DOCS_4096
  bench(4096, 16, 2, 512, 0, iters, docs_4096);
  // The attention of a training step on one packed row of 4096 tokens (CONFIGS.md): each model's
  // sliding layers (head dim 256) and full layers (512), with both backwards, the op's marked.
  std::printf("\ntraining shapes: one packed row of 4096 tokens in 5 documents\n");
  struct Layer {
    const char* name;
    int64_t heads, kv_heads, d, window;
  };
  for (const Layer l : {Layer{"E4B sliding", 8, 2, 256, 512}, Layer{"E4B full", 8, 2, 512, 0},
                        Layer{"26B-A4B sliding", 16, 8, 256, 1024}, Layer{"26B-A4B full", 16, 2, 512, 0},
                        Layer{"31B sliding", 32, 16, 256, 1024}, Layer{"31B full", 32, 4, 512, 0}}) {
    std::printf("%s\n", l.name);
    bench(4096, l.heads, l.kv_heads, l.d, l.window, iters, docs_4096);
  }
  return 0;
}

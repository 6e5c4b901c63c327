// Times the CUDA paged decode attention (one query row per sequence) on Gemma 4 shapes and prints
// the KV bytes it must read, the achieved GB/s and that rate as a fraction of a device-to-device
// copy measured in the same run (bytes read + bytes written over time). The target: head
// dim 512 within 1.5x of head dim 256 per byte of KV read.
//
// KV bytes = sum over sequences of kv_len x nKV x (d + dv) x 2 (each key and value read once; a
// K=V pool counts its one tensor once). Pages are shuffled over a pool several times the L2, and
// several batches of pools are rotated so that repeated runs do not time the cache.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "core/random.h"
#include "core/tensor.h"
#include "ops/attention.h"
#include "ops/paged_attention.h"
#include "bench_gpu.h"

namespace {

using g4::DType;
using g4::Device;
using g4::Tensor;
using g4::bench::copy_gbps;
using g4::bench::median_ms;
using g4::bench::random_gpu;

Tensor to_gpu_i32(const std::vector<int32_t>& v, const g4::Shape& shape) {
  return Tensor::from_vector<int32_t>(v, shape).to(Device::CUDA);
}

struct Shape {
  const char* name;
  int64_t d, kv_heads, heads;
  bool same_kv;
};

// A step of `batch` sequences of `context` keys, each with `q_len` query rows (the last ones):
// pools with shuffled pages (several copies, rotated, when one is small next to the L2).
struct Step {
  std::vector<Tensor> k_pools, v_pools;
  g4::ops::PagedLayout layout;
  Tensor q;
  double kv_bytes = 0;
};

Step make_step(const Shape& s, int64_t batch, int64_t context, int64_t q_len) {
  Step st;
  const int64_t page = 16, pages_per_seq = (context + page - 1) / page;
  st.kv_bytes = static_cast<double>(batch) * static_cast<double>(context) * static_cast<double>(s.kv_heads) *
                static_cast<double>(s.same_kv ? s.d : 2 * s.d) * 2.0;
  // Enough pool copies that one rotation reads at least 1.5 GB (the H200's L2 is 50 MB).
  const int copies = static_cast<int>(std::clamp(std::ceil(1.5e9 / st.kv_bytes), 1.0, 8.0));
  const int64_t pool_pages = batch * pages_per_seq;
  for (int c = 0; c < copies; ++c) {
    st.k_pools.push_back(random_gpu({pool_pages, page, s.kv_heads, s.d}, 10 + c));
    st.v_pools.push_back(s.same_kv ? st.k_pools.back() : random_gpu({pool_pages, page, s.kv_heads, s.d}, 20 + c));
  }
  std::vector<int32_t> order(static_cast<size_t>(pool_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  std::vector<int32_t> cu_q(static_cast<size_t>(batch + 1)), kv_len(static_cast<size_t>(batch),
                                                                      static_cast<int32_t>(context));
  for (size_t i = 0; i < cu_q.size(); ++i) cu_q[i] = static_cast<int32_t>(static_cast<int64_t>(i) * q_len);
  st.layout = g4::ops::PagedLayout{to_gpu_i32(cu_q, {batch + 1}), to_gpu_i32(kv_len, {batch}),
                                   to_gpu_i32(order, {batch, pages_per_seq}), Tensor(), 0, Tensor()};
  st.q = random_gpu({batch * q_len, s.heads, s.d}, 3);
  return st;
}

double time_step(const Step& st, const Shape& s, int iters) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  Tensor out;
  return median_ms(
      [&](int i) {
        const size_t c = static_cast<size_t>(i) % st.k_pools.size();
        out = g4::ops::paged_attention(st.q, st.k_pools[c], st.v_pools[c], st.layout, scale);
      },
      iters);
}

// One decode step of `batch` sequences of `context` keys each; returns GB/s of KV read.
double bench_decode(const Shape& s, int64_t batch, int64_t context, double copy, int iters) {
  const Step st = make_step(s, batch, context, 1);
  const double ms = time_step(st, s, iters);
  const double gbps = st.kv_bytes / (ms * 1e-3) * 1e-9;
  std::printf("%-22s batch %4lld ctx %5lld  %9.1f us  KV %8.1f MB  %7.1f GB/s  %5.1f%% of copy\n", s.name,
              static_cast<long long>(batch), static_cast<long long>(context), ms * 1e3, st.kv_bytes * 1e-6, gbps,
              100.0 * gbps / copy);
  return gbps;
}

// A whole causal prompt of `len` tokens through the paged kernel, and through the flash attention
// on the same keys laid out densely; TFLOP/s as in bench_attention (4 · pairs · d · nH).
void bench_prefill(const Shape& s, int64_t len, int iters) {
  const Step st = make_step(s, 1, len, len);
  const double ms = time_step(st, s, iters);
  const double flops = 4.0 * 0.5 * static_cast<double>(len) * static_cast<double>(len + 1) *
                       static_cast<double>(s.d) * static_cast<double>(s.heads);
  const Tensor k = random_gpu({1, len, s.kv_heads, s.d}, 4), v = random_gpu({1, len, s.kv_heads, s.d}, 5);
  const Tensor q = st.q.reshape({1, len, s.heads, s.d});
  g4::ops::AttentionMask mask;
  mask.causal = true;
  Tensor out;
  const double flash_ms = median_ms(
      [&](int) { out = g4::ops::attention(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(s.d))); }, iters);
  std::printf("prefill %-22s len %5lld  paged %8.1f us %6.1f TFLOP/s | flash attention %8.1f us %6.1f TFLOP/s\n",
              s.name, static_cast<long long>(len), ms * 1e3, flops / ms * 1e-9, flash_ms * 1e3,
              flops / flash_ms * 1e-9);
}

}  // namespace

// bench_paged_attention [iters] [--only d256|d512|d512kv BATCH CONTEXT] (one decode case, e.g. for
// a profiler).
int main(int argc, char** argv) {
  if (!g4::cuda_available()) {
    std::printf("bench_paged_attention: no CUDA device\n");
    return 1;
  }
  int iters = 20;
  std::string only;
  int64_t only_batch = 0, only_context = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--only" && i + 3 < argc) {
      only = argv[i + 1];
      only_batch = std::atoll(argv[i + 2]);
      only_context = std::atoll(argv[i + 3]);
      i += 3;
    } else {
      iters = std::atoi(argv[i]);
    }
  }
  const Shape d256{"d256 nKV8 nH16", 256, 8, 16, false};
  const Shape d512{"d512 nKV2 nH16", 512, 2, 16, false};
  const Shape d512_kv{"d512 nKV2 nH16 K=V", 512, 2, 16, true};
  const double copy = copy_gbps();
  std::printf("device-to-device copy: %.1f GB/s (read + write)\n", copy);
  if (!only.empty()) {
    bench_decode(only == "d256" ? d256 : only == "d512" ? d512 : d512_kv, only_batch, only_context, copy, iters);
    return 0;
  }
  std::vector<double> ratio;
  for (const int64_t batch : {1, 16, 64, 256}) {
    for (const int64_t context : {1024, 4096, 8192}) {
      const double a = bench_decode(d256, batch, context, copy, iters);
      const double b = bench_decode(d512, batch, context, copy, iters);
      bench_decode(d512_kv, batch, context, copy, iters);
      ratio.push_back(a / b);
      std::printf("  d512 time per KV byte / d256: %.2fx\n", a / b);
    }
  }
  std::printf("worst d512/d256 time per KV byte: %.2fx (target <= 1.5x)\n", *std::max_element(ratio.begin(), ratio.end()));
  for (const int64_t len : {1024, 4096}) {
    bench_prefill(d256, len, iters);
    bench_prefill(d512, len, iters);
  }
  return 0;
}

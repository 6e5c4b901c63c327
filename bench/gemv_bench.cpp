// The decode-step GEMV (ops/cuda/gemv.h) against cuBLASLt on the dense projections and LM head of
// Gemma 4 26B-A4B and E4B at 1, 2, 4 and 8 rows: microseconds, GB/s of weights read and that rate as
// a fraction of a device-to-device copy measured in the same run, and the ratio; and cuBLASLt alone
// at 16, 32 and 64 rows (batched decode steps). Weights rotate
// over copies larger than the L2, so no run reads them from the cache. Then the decode-size routed
// experts (ops::moe_experts) of a 26B-A4B layer at 1-128 tokens.
//
//   bench_gemv [iters] [experts]     (experts: that section alone, both kernels of
//                                     ops::cuda::DecodeExpertsKernel side by side)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_gpu.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/moe.h"
#include "ops/moe.h"

namespace {

using g4::DType;
using g4::Device;
using g4::Tensor;

struct Projection {
  const char* model;
  const char* name;
  int64_t n, k;  // W [n, k]
};

// Text-decoder widths of the released configs (google/gemma-4-26B-A4B and gemma-4-E4B config.json).
const std::vector<Projection> kProjections = {
    {"26b-a4b", "q (sliding)", 16 * 256, 2816},    {"26b-a4b", "k, v (sliding)", 8 * 256, 2816},
    {"26b-a4b", "o (sliding)", 2816, 16 * 256},    {"26b-a4b", "q (full)", 16 * 512, 2816},
    {"26b-a4b", "k (full, K=V)", 2 * 512, 2816},   {"26b-a4b", "o (full)", 2816, 16 * 512},
    {"26b-a4b", "mlp gate, up", 2112, 2816},       {"26b-a4b", "mlp down", 2816, 2112},
    {"26b-a4b", "router", 128, 2816},              {"26b-a4b", "lm head", 262144, 2816},
    {"e4b", "q (sliding)", 8 * 256, 2560},         {"e4b", "k, v (sliding)", 2 * 256, 2560},
    {"e4b", "o (sliding)", 2560, 8 * 256},         {"e4b", "mlp gate, up", 10240, 2560},
    {"e4b", "mlp down", 2560, 10240},              {"e4b", "lm head", 262144, 2560},
};

// ops::moe_experts on one 26B-A4B layer (128 experts of H 2816, I 704) at decode sizes: T tokens, top K. Routings
// rotate over random draws, so the picked experts change between runs as in a decode (and rarely sit in the L2); the
// bytes are the distinct picked experts' weights. Returns {us, GB/s}.
std::pair<double, double> time_experts(const Tensor& gate_up, const Tensor& down, int64_t T, int64_t K, int iters) {
  const int64_t E = gate_up.size(0), H = gate_up.size(1), I = down.size(1);
  const double expert_bytes = static_cast<double>(3 * H * I) * 2;
  constexpr int kRoutings = 16;
  std::vector<Tensor> indices;
  double distinct = 0;
  for (int r = 0; r < kRoutings; ++r) {
    std::vector<int32_t> idx(static_cast<size_t>(T * K));
    std::vector<bool> picked(static_cast<size_t>(E), false);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> perm(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) perm[static_cast<size_t>(e)] = static_cast<int32_t>(e);
      std::mt19937_64 rng(1000 + static_cast<uint64_t>(r * 64 + t));
      for (int64_t k = 0; k < K; ++k) {  // a partial Fisher-Yates shuffle: K distinct experts
        const int64_t j = k + static_cast<int64_t>(rng() % static_cast<uint64_t>(E - k));
        std::swap(perm[static_cast<size_t>(k)], perm[static_cast<size_t>(j)]);
        idx[static_cast<size_t>(t * K + k)] = perm[static_cast<size_t>(k)];
        picked[static_cast<size_t>(perm[static_cast<size_t>(k)])] = true;
      }
    }
    distinct += static_cast<double>(std::count(picked.begin(), picked.end(), true)) / kRoutings;
    indices.push_back(Tensor::from_vector(idx, {T, K}).to(Device::CUDA));
  }
  const Tensor x = g4::bench::random_gpu({T, H}, 23), weights = g4::bench::random_gpu({T, K}, 24);
  const double ms = g4::bench::median_ms(
      [&](int i) { g4::ops::moe_experts(x, weights, indices[static_cast<size_t>(i) % kRoutings], gate_up, down); },
      iters);
  return {ms * 1e3, distinct * expert_bytes / (ms * 1e-3) * 1e-9};
}

void experts_section(double copy, int iters) {
  using g4::ops::cuda::DecodeExpertsKernel;
  constexpr int64_t E = 128, K = 8, H = 2816, I = 704;
  const Tensor gate_up = g4::bench::random_gpu({E, H, 2 * I}, 21), down = g4::bench::random_gpu({E, I, H}, 22);
  const DecodeExpertsKernel chosen = g4::ops::cuda::decode_experts_kernel();
  // Both kernels of ops::cuda::DecodeExpertsKernel, one after the other at each size.
  const auto both = [&](int64_t label, int64_t T, int64_t k) {
    std::pair<double, double> r[2];
    for (const DecodeExpertsKernel kernel : {DecodeExpertsKernel::Registers, DecodeExpertsKernel::Streamed}) {
      g4::ops::cuda::set_decode_experts_kernel(kernel);
      r[static_cast<int>(kernel)] = time_experts(gate_up, down, T, k, iters);
    }
    g4::ops::cuda::set_decode_experts_kernel(chosen);
    std::printf("%6lld  %10.1f %8.0f %5.0f%%  %10.1f %8.0f %5.0f%%  %6.2fx\n", static_cast<long long>(label),
                r[0].first, r[0].second, 100 * r[0].second / copy, r[1].first, r[1].second, 100 * r[1].second / copy,
                r[0].first / r[1].first);
  };
  const auto header = [](const char* first) {
    std::printf("%6s  %10s %8s %6s  %10s %8s %6s  %7s\n", first, "registers", "GB/s", "copy", "streamed", "GB/s",
                "copy", "speedup");
  };
  std::printf("\nrouted experts (moe_experts), 26B-A4B layer: top-%lld of %lld, H %lld, I %lld; us with the kernels\n"
              "that load the weights into registers, then with those that stream them into shared memory\n",
              static_cast<long long>(K), static_cast<long long>(E), static_cast<long long>(H),
              static_cast<long long>(I));
  header("tokens");
  for (const int64_t T : {1, 2, 4, 8, 16, 32, 64, 128}) both(T, T, K);
  // One token, other top-k: the gate_up kernel's grid is 22 column tiles x K picked experts (the down kernel's
  // likewise), 176 CTAs at top 8 on 132 multiprocessors. Whether the bandwidth follows the number of CTAs per
  // multiprocessor (1 at top 6, 2 at top 12) says whether the uneven share at top 8 is what holds it back.
  std::printf("\none token, top-k swept (CTAs of each kernel: 22 x k)\n");
  header("top-k");
  for (const int64_t k : {4, 6, 8, 12, 16}) both(k, 1, k);
}

}  // namespace

int main(int argc, char** argv) {
  // The cuBLAS column must be cuBLASLt's: no product of gemm_rowmajor routed to the GEMV.
  setenv("G4_DECODE_GEMV", "0", 1);
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  const double copy = g4::bench::copy_gbps();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy);
  // `bench_gemv ITERS experts`: the routed experts alone (what a profiler run of their kernels needs).
  if (argc > 2 && std::string(argv[2]) == "experts") {
    experts_section(copy, iters);
    return 0;
  }
  std::printf("%-8s %-16s %7s %6s %4s  %10s %8s %6s  %10s %8s %6s  %7s\n", "model", "projection", "n", "k", "rows",
              "cuBLAS us", "GB/s", "copy", "gemv us", "GB/s", "copy", "speedup");
  for (const Projection& p : kProjections) {
    const double w_bytes = static_cast<double>(p.n) * static_cast<double>(p.k) * 2;
    const int copies = static_cast<int>(std::max(1.0, std::ceil(4e8 / w_bytes)));
    std::vector<Tensor> weights;
    for (int c = 0; c < copies; ++c) weights.push_back(g4::bench::random_gpu({p.n, p.k}, 11 + c));
    // Median ms of y = x wᵀ for m rows by the GEMV, or by gemm_rowmajor: cuBLASLt's, since main
    // sets G4_DECODE_GEMV=0.
    const auto run = [&](int64_t m, bool gemv) {
      const Tensor x = g4::bench::random_gpu({m, p.k}, 3);
      Tensor y = Tensor::empty({m, p.n}, DType::BF16, Device::CUDA);
      return g4::bench::median_ms(
          [&](int i) {
            const Tensor& w = weights[static_cast<size_t>(i) % weights.size()];
            if (gemv)
              g4::ops::cuda::gemv_rowmajor(m, p.n, p.k, 1.0f, x.raw(), p.k, w.raw(), p.k, 0.0f, y.raw(), p.n,
                                           DType::BF16);
            else
              g4::ops::cuda::gemm_rowmajor(false, true, m, p.n, p.k, 1.0f, x.raw(), p.k, w.raw(), p.k, DType::BF16,
                                           0.0f, y.raw(), p.n, DType::BF16);
          },
          iters);
    };
    for (const int64_t m : {1, 2, 4, 8}) {
      const double blas_ms = run(m, false), gemv_ms = run(m, true);
      const double bytes = w_bytes + static_cast<double>(m) * static_cast<double>(p.k + p.n) * 2;
      const double blas_gbps = bytes / (blas_ms * 1e-3) * 1e-9, gemv_gbps = bytes / (gemv_ms * 1e-3) * 1e-9;
      // A copy moves each byte twice (read and write); a GEMV reads its bytes once.
      std::printf("%-8s %-16s %7lld %6lld %4lld  %10.1f %8.0f %5.0f%%  %10.1f %8.0f %5.0f%%  %6.2fx\n", p.model,
                  p.name, static_cast<long long>(p.n), static_cast<long long>(p.k), static_cast<long long>(m),
                  blas_ms * 1e3, blas_gbps, 100 * blas_gbps / copy, gemv_ms * 1e3, gemv_gbps,
                  100 * gemv_gbps / copy, blas_ms / gemv_ms);
    }
    // Batched decode sizes, which take cuBLASLt (the GEMV stops at 8 rows): its rate there.
    for (const int64_t m : {16, 32, 64}) {
      const double blas_ms = run(m, false);
      const double bytes = w_bytes + static_cast<double>(m) * static_cast<double>(p.k + p.n) * 2;
      const double blas_gbps = bytes / (blas_ms * 1e-3) * 1e-9;
      std::printf("%-8s %-16s %7lld %6lld %4lld  %10.1f %8.0f %5.0f%%\n", p.model, p.name, static_cast<long long>(p.n),
                  static_cast<long long>(p.k), static_cast<long long>(m), blas_ms * 1e3, blas_gbps,
                  100 * blas_gbps / copy);
    }
  }
  experts_section(copy, iters);
  return 0;
}

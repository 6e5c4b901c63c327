// The decode-step GEMV (ops/cuda/gemv.h) against cuBLASLt on the dense projections and LM head of
// Gemma 4 26B-A4B and E4B at 1, 2, 4 and 8 rows: microseconds, GB/s of weights read and that rate as
// a fraction of a device-to-device copy measured in the same run, and the ratio. Weights rotate
// over copies larger than the L2, so no run reads them from the cache.
//
//   bench_gemv [iters]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_gpu.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"

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

}  // namespace

int main(int argc, char** argv) {
  // The cuBLAS column must be cuBLASLt's: no product of gemm_rowmajor routed to the GEMV.
  setenv("G4_DECODE_GEMV", "0", 1);
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  const double copy = g4::bench::copy_gbps();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy);
  std::printf("%-8s %-16s %7s %6s %4s  %10s %8s %6s  %10s %8s %6s  %7s\n", "model", "projection", "n", "k", "rows",
              "cuBLAS us", "GB/s", "copy", "gemv us", "GB/s", "copy", "speedup");
  for (const Projection& p : kProjections) {
    const double w_bytes = static_cast<double>(p.n) * static_cast<double>(p.k) * 2;
    const int copies = static_cast<int>(std::max(1.0, std::ceil(4e8 / w_bytes)));
    std::vector<Tensor> weights;
    for (int c = 0; c < copies; ++c) weights.push_back(g4::bench::random_gpu({p.n, p.k}, 11 + c));
    for (const int64_t m : {1, 2, 4, 8}) {
      const Tensor x = g4::bench::random_gpu({m, p.k}, 3);
      Tensor y = Tensor::empty({m, p.n}, DType::BF16, Device::CUDA);
      const auto run = [&](bool gemv) {
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
      // Run with G4_DECODE_GEMV=0 (set below): gemm_rowmajor is then cuBLASLt's.
      const double blas_ms = run(false), gemv_ms = run(true);
      const double bytes = w_bytes + static_cast<double>(m) * static_cast<double>(p.k + p.n) * 2;
      const double blas_gbps = bytes / (blas_ms * 1e-3) * 1e-9, gemv_gbps = bytes / (gemv_ms * 1e-3) * 1e-9;
      // A copy moves each byte twice (read and write); a GEMV reads its bytes once.
      std::printf("%-8s %-16s %7lld %6lld %4lld  %10.1f %8.0f %5.0f%%  %10.1f %8.0f %5.0f%%  %6.2fx\n", p.model,
                  p.name, static_cast<long long>(p.n), static_cast<long long>(p.k), static_cast<long long>(m),
                  blas_ms * 1e3, blas_gbps, 100 * blas_gbps / copy, gemv_ms * 1e3, gemv_gbps,
                  100 * gemv_gbps / copy, blas_ms / gemv_ms);
    }
  }
  return 0;
}

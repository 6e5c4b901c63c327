// GPU timings of the MoE path and the dense GEMMs at Gemma 4 26B-A4B sizes: the grouped expert
// GEMMs forward and backward through both back ends (cuBLAS grouped GEMM, one cuBLASLt call per
// expert), the routing/permute kernels, and dense cuBLASLt products. Prints TFLOP/s, and each of the
// device-offset kernels against the time its DRAM bytes take at the measured copy bandwidth; compare
// with tools/bench_torch_moe.py on the same machine.
//   bench_moe [tokens=4096]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_gpu.h"
#include "core/device_memory.h"
#include "core/random.h"
#include "core/tensor.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/moe.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/moe.h"

using namespace g4;

namespace {

// Median milliseconds per call of fn over `reps` timed calls (after warm-up), synchronising around
// each call so that host-side work (the plan's offsets copy) is counted too.
double time_ms(const std::function<void()>& fn, int reps = 20) {
  for (int i = 0; i < 3; ++i) fn();
  device_synchronize();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    device_synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void report(const std::string& what, double ms, double flops) {
  if (flops > 0) {
    std::printf("  %-58s %9.3f ms  %7.1f TFLOP/s\n", what.c_str(), ms, flops / (ms * 1e-3) / 1e12);
  } else {
    std::printf("  %-58s %9.3f ms\n", what.c_str(), ms);
  }
}

Tensor gpu_randn(const Shape& shape, uint64_t seed, double std) {
  return randn(shape, seed, DType::F32, std).to(Device::CUDA).to(DType::BF16);
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_moe: no CUDA device\n");
    return 0;
  }
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t K = 8, E = 128, H = 2816, I = 704;
  std::printf("Gemma 4 26B-A4B MoE layer: T=%lld tokens, top-%lld of %lld experts, H=%lld, I=%lld (bf16)\n",
              static_cast<long long>(T), static_cast<long long>(K), static_cast<long long>(E),
              static_cast<long long>(H), static_cast<long long>(I));

  // Routing from random logits (softmax on the CPU, the rest on the GPU).
  const Tensor probs = ops::softmax_lastdim(randn({T, E}, 1)).to(Device::CUDA);
  Tensor weights, indices;
  ops::router_topk(probs, K, weights, indices);
  const ops::MoePlan plan = ops::moe_plan(indices, E);
  int64_t lo = plan.rows(), hi = 0;
  for (int64_t e = 0; e < E; ++e) {
    lo = std::min(lo, plan.offsets[e + 1] - plan.offsets[e]);
    hi = std::max(hi, plan.offsets[e + 1] - plan.offsets[e]);
  }
  std::printf("rows per expert: min %lld, max %lld, mean %lld\n", static_cast<long long>(lo),
              static_cast<long long>(hi), static_cast<long long>(plan.rows() / E));

  const Tensor x = gpu_randn({T, H}, 2, 1.0);
  const Tensor gate_up = gpu_randn({E, H, 2 * I}, 3, 0.02);
  const Tensor down = gpu_randn({E, I, H}, 4, 0.02);
  const Tensor xs = ops::moe_permute(x, plan);
  const Tensor act = gpu_randn({plan.rows(), I}, 5, 1.0);
  const Tensor dy_up = gpu_randn({plan.rows(), 2 * I}, 6, 1.0);
  const Tensor dy_down = gpu_randn({plan.rows(), H}, 7, 1.0);
  const double N = static_cast<double>(plan.rows());
  const double f_up = 2.0 * N * H * 2 * I, f_down = 2.0 * N * I * H;

  using ops::cuda::GroupedGemmBackend;
  double device_fwd_bwd_ms = 0;  // the device kernels' expert GEMMs, forward + backward (dw beta 1)
  double device_fresh_ms = 0;     // the same with the weight gradients written fresh (beta 0)
  // Each device-offset product: its time and the DRAM bytes it must move at least (every operand
  // read once, the output written once; at beta 1 the f32 gradient is read too).
  struct Product {
    std::string what;
    double ms, bytes;
    bool adds = false;  // beta 1: not part of the beta-0 total
  };
  std::vector<Product> products;
  const double w_up_bytes = 2.0 * E * H * 2 * I, w_down_bytes = 2.0 * E * I * H;
  const double rows_h = 2.0 * N * H, rows_up = 2.0 * N * 2 * I, rows_i = 2.0 * N * I;  // bf16 row tensors
  // The device kernels last: they are new, and a fault there must not hide the cuBLAS numbers.
  for (const GroupedGemmBackend b :
       {GroupedGemmBackend::Grouped, GroupedGemmBackend::Loop, GroupedGemmBackend::Device}) {
    ops::cuda::set_grouped_gemm_backend(b);
    const std::string tag = b == GroupedGemmBackend::Device    ? "[wgmma, device offsets] "
                            : b == GroupedGemmBackend::Grouped ? "[cuBLAS grouped] "
                                                               : "[per-expert Lt] ";
    std::printf("grouped GEMMs %s\n", tag.c_str());
    const double t_up = time_ms([&] { ops::grouped_matmul(xs, gate_up, plan.offsets, plan.device_offsets); });
    report("gate_up fwd  [N,2816] x [E,2816,1408]", t_up, f_up);
    const double t_down = time_ms([&] { ops::grouped_matmul(act, down, plan.offsets, plan.device_offsets); });
    report("down fwd     [N,704] x [E,704,2816]", t_down, f_down);
    // dw as a bf16 model trains: added into its f32 gradient by the GEMMs (beta 1; those always
    // take the per-expert calls, cuBLAS has no grouped bf16 -> f32 form).
    Tensor dxs, dw_up = Tensor::zeros(gate_up.shape(), DType::F32, Device::CUDA),
                dw_down = Tensor::zeros(down.shape(), DType::F32, Device::CUDA);
    const double t_up_b = time_ms(
        [&] { ops::grouped_matmul_backward(dy_up, xs, gate_up, plan.offsets, dxs, dw_up, plan.device_offsets, 1.0); });
    report("gate_up bwd  (dxs + f32 dw)", t_up_b, 2 * f_up);
    const double t_down_b = time_ms([&] {
      ops::grouped_matmul_backward(dy_down, act, down, plan.offsets, dxs, dw_down, plan.device_offsets, 1.0);
    });
    report("down bwd     (dxs + f32 dw)", t_down_b, 2 * f_down);
    report("expert GEMMs fwd + bwd", t_up + t_down + t_up_b + t_down_b, 3 * (f_up + f_down));
    if (b == GroupedGemmBackend::Device) {
      device_fwd_bwd_ms = t_up + t_down + t_up_b + t_down_b;
      products.push_back({"gate_up fwd", t_up, w_up_bytes + rows_h + rows_up});
      products.push_back({"down fwd", t_down, w_down_bytes + rows_i + rows_h});
      // The two halves of each backward apart: the input gradient is a forward-like product, the
      // f32 weight gradient a short reduction (an expert's rows) with a read-modify-write epilogue.
      Tensor dx_up = Tensor::empty({plan.rows(), H}, DType::BF16, Device::CUDA);
      Tensor dx_down = Tensor::empty({plan.rows(), I}, DType::BF16, Device::CUDA);
      const Tensor& dev = plan.device_offsets;
      const double dx_up_ms = time_ms([&] { ops::cuda::device_grouped_input_grad(dy_up, gate_up, dev, dx_up); });
      report("  gate_up dxs", dx_up_ms, f_up);
      const double dw1_up_ms = time_ms([&] { ops::cuda::device_grouped_weight_grad(xs, dy_up, dev, dw_up, 1.f); });
      report("  gate_up f32 dw (beta 1)", dw1_up_ms, f_up);
      const double dw0_up_ms = time_ms([&] { ops::cuda::device_grouped_weight_grad(xs, dy_up, dev, dw_up, 0.f); });
      report("  gate_up f32 dw (beta 0)", dw0_up_ms, f_up);
      const double dx_down_ms =
          time_ms([&] { ops::cuda::device_grouped_input_grad(dy_down, down, dev, dx_down); });
      report("  down dxs", dx_down_ms, f_down);
      const double dw1_down_ms =
          time_ms([&] { ops::cuda::device_grouped_weight_grad(act, dy_down, dev, dw_down, 1.f); });
      report("  down f32 dw (beta 1)", dw1_down_ms, f_down);
      const double dw0_down_ms =
          time_ms([&] { ops::cuda::device_grouped_weight_grad(act, dy_down, dev, dw_down, 0.f); });
      report("  down f32 dw (beta 0)", dw0_down_ms, f_down);
      device_fresh_ms = t_up + t_down + dx_up_ms + dx_down_ms + dw0_up_ms + dw0_down_ms;
      const double dw_up_bytes = 2.0 * w_up_bytes, dw_down_bytes = 2.0 * w_down_bytes;  // f32
      products.push_back({"gate_up dxs", dx_up_ms, w_up_bytes + rows_up + rows_h});
      products.push_back({"down dxs", dx_down_ms, w_down_bytes + rows_h + rows_i});
      products.push_back({"gate_up f32 dw (beta 0)", dw0_up_ms, rows_h + rows_up + dw_up_bytes});
      products.push_back({"down f32 dw (beta 0)", dw0_down_ms, rows_i + rows_h + dw_down_bytes});
      products.push_back({"gate_up f32 dw (beta 1)", dw1_up_ms, rows_h + rows_up + 2 * dw_up_bytes, true});
      products.push_back({"down f32 dw (beta 1)", dw1_down_ms, rows_i + rows_h + 2 * dw_down_bytes, true});
    }
  }
  ops::cuda::set_grouped_gemm_backend(GroupedGemmBackend::Auto);

  std::printf("routing and data movement\n");
  report("router_topk [T,128] -> top-8", time_ms([&] {
           Tensor w, i;
           ops::router_topk(probs, K, w, i);
         }),
         0);
  report("moe_plan (sort + offsets to the host)", time_ms([&] { ops::moe_plan(indices, E); }), 0);
  report("moe_permute [T,2816] -> [T*K,2816]", time_ms([&] { ops::moe_permute(x, plan); }), 0);
  report("moe_permute_backward", time_ms([&] { ops::moe_permute_backward(dy_down, plan); }), 0);
  report("moe_unpermute [T*K,2816] -> [T,2816]", time_ms([&] { ops::moe_unpermute(dy_down, weights, plan); }), 0);
  const Tensor dout = gpu_randn({T, H}, 8, 1.0);
  report("moe_unpermute_backward", time_ms([&] {
           Tensor dys, dwt;
           ops::moe_unpermute_backward(dout, dy_down, weights, plan, dys, dwt);
         }),
         0);

  std::printf("dense GEMMs (bf16, fp32 accumulate)\n");
  struct Dense {
    int64_t m, k, n;
  };
  for (const Dense d : {Dense{T, 2816, 2112}, Dense{T, 2816, 4096}, Dense{T, 4096, 2816}, Dense{T, 2816, 2816}}) {
    const Tensor a = gpu_randn({d.m, d.k}, 9, 1.0);
    const Tensor w = gpu_randn({d.n, d.k}, 10, 0.02);  // Linear layout [out, in]
    const Tensor g = gpu_randn({d.m, d.n}, 11, 1.0);
    const double f = 2.0 * d.m * d.k * d.n;
    const std::string shape = "[" + std::to_string(d.m) + "," + std::to_string(d.k) + "] x [" + std::to_string(d.k) +
                              "," + std::to_string(d.n) + "]";
    report("linear " + shape, time_ms([&] { ops::linear(a, w); }), f);
    report("  backward input", time_ms([&] { ops::linear_backward_input(g, w); }), f);
    Tensor acc = Tensor::zeros({d.n, d.k}, DType::F32, Device::CUDA);
    report("  backward weight, f32 accumulate", time_ms([&] { ops::matmul_acc(g, a, true, false, acc, 1.0); }), f);
  }

  // The yardstick: the expert GEMMs against dense GEMMs of the same FLOPs (all T*K rows
  // through one weight), forward, input gradient and f32 weight gradient of both projections.
  double dense_ms = 0;
  for (const Dense d : {Dense{plan.rows(), H, 2 * I}, Dense{plan.rows(), I, H}}) {
    const Tensor a = gpu_randn({d.m, d.k}, 12, 1.0);
    const Tensor w = gpu_randn({d.n, d.k}, 13, 0.02);
    const Tensor g = gpu_randn({d.m, d.n}, 14, 1.0);
    Tensor acc = Tensor::zeros({d.n, d.k}, DType::F32, Device::CUDA);
    dense_ms += time_ms([&] { ops::linear(a, w); }) + time_ms([&] { ops::linear_backward_input(g, w); }) +
                time_ms([&] { ops::matmul_acc(g, a, true, false, acc, 1.0); });
  }
  std::printf("expert GEMMs vs dense GEMMs of the same FLOPs (fwd + bwd)\n");
  report("dense [T*K rows] x [2816,1408] and [704,2816]", dense_ms, 3 * (f_up + f_down));
  report("wgmma grouped, device offsets, dw beta 1", device_fwd_bwd_ms, 3 * (f_up + f_down));
  std::printf("  grouped / dense rate: %.1f%%\n", 100.0 * dense_ms / device_fwd_bwd_ms);
  // A step of one micro-batch writes the expert weight gradients fresh (autograd's beta 0); later
  // micro-batches add into them (beta 1). Either way the f32 gradients of all E experts are E times
  // a dense layer's, and writing them bounds the weight-gradient half from below.
  report("wgmma grouped, device offsets, dw beta 0", device_fresh_ms, 3 * (f_up + f_down));
  std::printf("  grouped / dense rate: %.1f%%\n", 100.0 * dense_ms / device_fresh_ms);
  const double dw_bytes = 4.0 * static_cast<double>(E) * (H * 2 * I + I * H);
  std::printf("  the f32 expert weight gradients: %.2f GB, written once at beta 0, read and written at beta 1\n",
              dw_bytes * 1e-9);

  // The expert GEMMs read 128 experts' weights where a dense layer reads one, and write 128 f32
  // weight gradients: their DRAM bytes bound them from below, whatever the tensor cores do.
  const double gbps = bench::copy_gbps();
  std::printf("device-offset kernels against their DRAM bytes (copy bandwidth %.0f GB/s)\n", gbps);
  double floor0_ms = 0;
  for (const Product& p : products) {
    const double floor_ms = p.bytes / (gbps * 1e9) * 1e3;
    if (!p.adds) floor0_ms += floor_ms;
    std::printf("  %-26s %8.3f ms  bytes %6.2f GB -> %8.3f ms  (%5.1f%% of the copy rate)\n", p.what.c_str(), p.ms,
                p.bytes * 1e-9, floor_ms, 100.0 * floor_ms / p.ms);
  }
  std::printf("  fwd + bwd at beta 0: %.3f ms, bytes alone %.3f ms; 70%% of the dense rate allows %.3f ms\n",
              device_fresh_ms, floor0_ms, dense_ms / 0.7);
  return 0;
}

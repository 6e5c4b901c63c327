// MoE ops on the GPU against the CPU reference: routing (ties included), the plan (the same order
// as the CPU's stable sort), permute/unpermute and their gradients, and the grouped matmul with
// empty experts through both GEMM back ends.
#include "ops/cuda/moe.h"

#include <string>
#include <tuple>
#include <vector>

#include "gpu_test.h"
#include "ops/elementwise.h"
#include "ops/fused.h"
#include "ops/moe.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::gpu_f32;
using test::host_f32;
using test::randn_bf16_exact;

using test::kF32Rtol;
constexpr double kBf16Rtol = 8e-3;

std::vector<int64_t> ints(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  std::vector<int64_t> v(static_cast<size_t>(h.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = element_as_int(h, static_cast<int64_t>(i));
  return v;
}

// Router probabilities with many exact ties: softmax outputs rounded to multiples of 1/256.
Tensor tied_probs(int64_t tokens, int64_t experts, uint64_t seed) {
  Tensor p = ops::softmax_lastdim(randn({tokens, experts}, seed, DType::F32, 0.5));
  float* v = p.data<float>();
  for (int64_t i = 0; i < p.numel(); ++i) v[i] = std::round(v[i] * 256.0f) / 256.0f + 1.0f / 512.0f;
  return p;
}

// Expert ids [T, K] drawn per token without repeats from [0, E) minus `skip` (an empty expert).
Tensor random_indices(int64_t tokens, int64_t k, int64_t experts, int64_t skip, uint64_t seed) {
  Tensor probs = ops::softmax_lastdim(randn({tokens, experts}, seed));
  float* p = probs.data<float>();
  for (int64_t t = 0; t < tokens; ++t) p[t * experts + skip] = -1.0f;
  Tensor w, idx;
  ops::router_topk(probs, k, w, idx);
  return idx;
}

TEST(GpuRouterTopk, MatchesTheCpuWithTies) {
  G4_REQUIRE_GPU();
  const int64_t T = 1001, E = 128, K = 8;
  const Tensor probs = tied_probs(T, E, 1);
  Tensor w_ref, idx_ref;
  ops::router_topk(probs, K, w_ref, idx_ref);
  Tensor w, idx;
  ops::router_topk(gpu_f32(probs), K, w, idx);
  EXPECT_EQ(idx.dtype(), DType::I32);
  EXPECT_EQ(ints(idx), ints(idx_ref)) << "expert choices (ties: lower id first)";
  expect_close_scaled(w, w_ref, 0, 1e-6, "router_topk f32 weights");
  // bf16 probabilities: same choices as the CPU on the same (rounded) values.
  const Tensor p16 = probs.to(DType::BF16).to(DType::F32);
  ops::router_topk(p16, K, w_ref, idx_ref);
  ops::router_topk(gpu_bf16(p16), K, w, idx);
  EXPECT_EQ(ints(idx), ints(idx_ref)) << "bf16 expert choices";
  expect_close_scaled(w, w_ref, 0, kBf16Rtol, "router_topk bf16 weights");
  // E not a multiple of the warp, K = E.
  const Tensor small = tied_probs(37, 13, 2);
  ops::router_topk(small, 13, w_ref, idx_ref);
  ops::router_topk(gpu_f32(small), 13, w, idx);
  EXPECT_EQ(ints(idx), ints(idx_ref)) << "E = 13, K = 13";
  expect_close_scaled(w, w_ref, 0, 1e-6, "router_topk E=13 weights");
  // More experts than a lane keeps in registers (8 per lane): the probabilities read in every round.
  const Tensor many = tied_probs(29, 300, 3);
  ops::router_topk(many, K, w_ref, idx_ref);
  ops::router_topk(gpu_f32(many), K, w, idx);
  EXPECT_EQ(ints(idx), ints(idx_ref)) << "E = 300";
  expect_close_scaled(w, w_ref, 0, 1e-6, "router_topk E=300 weights");
}

TEST(GpuRouterTopk, Backward) {
  G4_REQUIRE_GPU();
  const int64_t T = 300, E = 40, K = 6;
  const Tensor probs = ops::softmax_lastdim(randn({T, E}, 3));
  Tensor w, idx;
  ops::router_topk(probs, K, w, idx);
  const Tensor dw = randn_bf16_exact({T, K}, 4);
  const Tensor want = ops::router_topk_backward(dw, probs, idx);
  const Tensor got = ops::router_topk_backward(gpu_f32(dw), gpu_f32(probs), idx.to(Device::CUDA));
  expect_close_scaled(got, want, 0, 1e-5, "router_topk_backward f32");
}

TEST(GpuMoePlan, SameOrderAsTheCpu) {
  G4_REQUIRE_GPU();
  struct Case {
    int64_t tokens, k, experts, skip;
  };
  // E not a multiple of anything, T not a multiple of a block, an empty expert; and the 26B-A4B shape.
  for (const Case c : {Case{1001, 3, 13, 5}, Case{4096, 8, 128, 127}, Case{7, 2, 300, 0}}) {
    const Tensor idx = random_indices(c.tokens, c.k, c.experts, c.skip, 5);
    const ops::MoePlan want = ops::moe_plan(idx, c.experts);
    for (const DType dt : {DType::I32, DType::I64}) {
      const ops::MoePlan got = ops::moe_plan(idx.to(dt).to(Device::CUDA), c.experts);
      const std::string what = "T=" + std::to_string(c.tokens) + " E=" + std::to_string(c.experts);
      EXPECT_EQ(got.tokens, want.tokens);
      EXPECT_EQ(got.top_k, want.top_k);
      EXPECT_EQ(got.experts, want.experts);
      EXPECT_EQ(got.offsets, want.offsets) << what;
      EXPECT_EQ(ints(got.device_offsets), want.offsets) << what;
      EXPECT_EQ(ints(got.order), ints(want.order)) << what;
      EXPECT_EQ(ints(got.row_of), ints(want.row_of)) << what;
      EXPECT_EQ(got.order.device(), Device::CUDA);
    }
    EXPECT_EQ(want.offsets[static_cast<size_t>(c.skip)], want.offsets[static_cast<size_t>(c.skip) + 1]);
  }
}

TEST(GpuMoePlan, RejectsOutOfRangeExperts) {
  G4_REQUIRE_GPU();
  const Tensor idx = Tensor::from_vector<int32_t>({0, 1, 5, 2}, {2, 2}).to(Device::CUDA);
  EXPECT_THROW(ops::moe_plan(idx, 4), Error);
  const ops::MoePlan ok = ops::moe_plan(idx, 6);  // the stream is still usable
  EXPECT_EQ(ok.offsets.back(), 4);
}

struct MoeCase {
  int64_t tokens, k, experts, hidden;
  Tensor idx;
  ops::MoePlan cpu, gpu;
};

MoeCase make_setup(int64_t tokens, int64_t k, int64_t experts, int64_t hidden, uint64_t seed) {
  MoeCase s{tokens, k, experts, hidden, random_indices(tokens, k, experts, experts / 2, seed), {}, {}};
  s.cpu = ops::moe_plan(s.idx, experts);
  s.gpu = ops::moe_plan(s.idx.to(Device::CUDA), experts);
  return s;
}

TEST(GpuMoePermute, GathersAndSumsBack) {
  G4_REQUIRE_GPU();
  for (const int64_t h : {int64_t{64}, int64_t{7}}) {  // 16-byte rows, and odd rows (2-byte copies)
    const MoeCase s = make_setup(301, 4, 11, h, 6);
    const Tensor x = randn_bf16_exact({s.tokens, h}, 7);
    const Tensor want = ops::moe_permute(x, s.cpu);
    expect_close_scaled(ops::moe_permute(gpu_f32(x), s.gpu), want, 0, 0, "moe_permute f32 H=" + std::to_string(h));
    expect_close_scaled(ops::moe_permute(gpu_bf16(x), s.gpu), want, 0, 0, "moe_permute bf16 H=" + std::to_string(h));
    const Tensor dxs = randn_bf16_exact({s.tokens * s.k, h}, 8);
    const Tensor dwant = ops::moe_permute_backward(dxs, s.cpu);
    expect_close_scaled(ops::moe_permute_backward(gpu_f32(dxs), s.gpu), dwant, 0, kF32Rtol,
                        "moe_permute_backward f32 H=" + std::to_string(h));
    expect_close_scaled(ops::moe_permute_backward(gpu_bf16(dxs), s.gpu), dwant, 0, kBf16Rtol,
                        "moe_permute_backward bf16 H=" + std::to_string(h));
  }
}

void check_unpermute(const MoeCase& s) {
  const std::string shape = " (T " + std::to_string(s.tokens) + ", k " + std::to_string(s.k) + ", H " +
                            std::to_string(s.hidden) + ")";
  const Tensor ys = randn_bf16_exact({s.tokens * s.k, s.hidden}, 10);
  const Tensor w = randn_bf16_exact({s.tokens, s.k}, 11, 0.3);
  const Tensor dout = randn_bf16_exact({s.tokens, s.hidden}, 12);
  const Tensor want = ops::moe_unpermute(ys, w, s.cpu);
  Tensor dys_ref, dw_ref;
  ops::moe_unpermute_backward(dout, ys, w, s.cpu, dys_ref, dw_ref);
  struct Variant {
    const char* name;
    bool ys_bf16, w_bf16;
    double rtol;
  };
  for (const Variant v :
       {Variant{"f32", false, false, kF32Rtol}, Variant{"bf16 rows, f32 weights", true, false, kBf16Rtol},
        Variant{"bf16", true, true, kBf16Rtol}}) {
    const Tensor gys = v.ys_bf16 ? gpu_bf16(ys) : gpu_f32(ys);
    const Tensor gw = v.w_bf16 ? gpu_bf16(w) : gpu_f32(w);
    const Tensor gdout = v.ys_bf16 ? gpu_bf16(dout) : gpu_f32(dout);
    expect_close_scaled(ops::moe_unpermute(gys, gw, s.gpu), want, 0, v.rtol,
                        std::string("moe_unpermute ") + v.name + shape);
    Tensor dys, dw;
    ops::moe_unpermute_backward(gdout, gys, gw, s.gpu, dys, dw);
    EXPECT_EQ(dw.dtype(), gw.dtype());
    expect_close_scaled(dys, dys_ref, 0, v.rtol, std::string("moe_unpermute_backward dys ") + v.name + shape);
    // dweights are dot products of length H: fp32 sums, rounded once when bf16.
    expect_close_scaled(dw, dw_ref, 0, v.w_bf16 ? kBf16Rtol : 1e-5,
                        std::string("moe_unpermute_backward dweights ") + v.name + shape);
  }
}

TEST(GpuMoeUnpermute, WeightedCombineAndGradients) {
  G4_REQUIRE_GPU();
  // 16-byte rows; odd rows (one element a thread); a top-k above the 16 rows the kernel gathers at once.
  for (const auto& [tokens, k, hidden] : {std::tuple<int64_t, int64_t, int64_t>{257, 8, 96}, {131, 3, 7}, {65, 20, 40}})
    check_unpermute(make_setup(tokens, k, 128, hidden, 9 + k));
}

// Offsets with empty experts at both ends and in the middle.
std::vector<int64_t> offsets_from_counts(const std::vector<int64_t>& counts) {
  std::vector<int64_t> o{0};
  for (const int64_t c : counts) o.push_back(o.back() + c);
  return o;
}

void check_grouped(const std::vector<int64_t>& counts, int64_t kd, int64_t nd, bool bf16, uint64_t seed,
                   const std::string& tag) {
  const std::vector<int64_t> offsets = offsets_from_counts(counts);
  const int64_t n = offsets.back(), experts = static_cast<int64_t>(counts.size());
  const Tensor xs = randn_bf16_exact({n, kd}, seed, 0.5);
  const Tensor w = randn_bf16_exact({experts, kd, nd}, seed + 1, 0.1);
  const Tensor dy = randn_bf16_exact({n, nd}, seed + 2);
  const Tensor want = ops::grouped_matmul(xs, w, offsets);
  Tensor dxs_ref, dw_ref;
  ops::grouped_matmul_backward(dy, xs, w, offsets, dxs_ref, dw_ref);
  const auto up = [&](const Tensor& t) { return bf16 ? gpu_bf16(t) : gpu_f32(t); };
  const double rtol = bf16 ? kBf16Rtol : kF32Rtol;
  const Tensor dev_offsets = Tensor::from_vector(offsets, {experts + 1}).to(Device::CUDA);
  for (const bool with_device_offsets : {true, false}) {
    const Tensor d = with_device_offsets ? dev_offsets : Tensor();
    const std::string what = tag + (with_device_offsets ? "" : " (offsets uploaded)");
    expect_close_scaled(ops::grouped_matmul(up(xs), up(w), offsets, d), want, 0, rtol, "grouped_matmul " + what);
    Tensor dxs, dw;
    // dw must come out zero for empty experts even where the buffer held garbage before.
    ops::grouped_matmul_backward(up(dy), up(xs), up(w), offsets, dxs, dw, d);
    expect_close_scaled(dxs, dxs_ref, 0, rtol, "grouped_matmul_backward dxs " + what);
    expect_close_scaled(dw, dw_ref, 0, rtol, "grouped_matmul_backward dw " + what);
    const Tensor dw_host = host_f32(dw);
    for (int64_t e = 0; e < experts; ++e) {
      if (counts[static_cast<size_t>(e)] != 0) continue;
      for (int64_t i = 0; i < kd * nd; ++i) {
        ASSERT_EQ(dw_host.data<float>()[e * kd * nd + i], 0.0f) << what << ": expert " << e << " has no rows";
      }
    }
    // A bf16 model's f32 weight gradient: written (beta 0, over NaNs) then accumulated (beta 1) by
    // the GEMM itself, to fp32 accuracy (one bf16 product rounding fewer than dw above).
    if (!bf16) continue;
    Tensor dw32 = Tensor::full(w.shape(), std::nan(""), DType::F32, Device::CUDA);
    ops::grouped_matmul_backward(up(dy), up(xs), up(w), offsets, dxs, dw32, d, 0.0);
    EXPECT_EQ(dw32.dtype(), DType::F32);
    expect_close_scaled(dw32, dw_ref, 0, kF32Rtol, "grouped_matmul_backward into f32 dw " + what);
    ops::grouped_matmul_backward(up(dy), up(xs), up(w), offsets, dxs, dw32, d, 1.0);
    expect_close_scaled(dw32, ops::scale(dw_ref, 2.0), 0, kF32Rtol,
                        "grouped_matmul_backward added into f32 dw " + what);
  }
}

TEST(GpuGroupedMatmul, BothBackendsMatchTheCpu) {
  G4_REQUIRE_GPU();
  using ops::cuda::GroupedGemmBackend;
  const GroupedGemmBackend saved = ops::cuda::grouped_gemm_backend();
  for (const GroupedGemmBackend b : {GroupedGemmBackend::Grouped, GroupedGemmBackend::Loop}) {
    ops::cuda::set_grouped_gemm_backend(b);
    const std::string name = b == GroupedGemmBackend::Grouped ? "[grouped]" : "[loop]";
    check_grouped({0, 5, 17, 0, 1, 33, 0}, 40, 24, false, 20, "f32 " + name);
    check_grouped({0, 64, 3, 0, 129, 250, 1, 0}, 256, 192, true, 30, "bf16 " + name);
  }
  ops::cuda::set_grouped_gemm_backend(saved);
}

// The wgmma kernels that read the offsets on the device: partial row, column and K tiles (Kd and Nd
// multiples of 8 but not of 64, Nd below one 64-wide box), experts whose rows end one past a 64-row
// reduction chunk, empty experts anywhere, and no rows at all.
TEST(GpuGroupedMatmul, DeviceKernelsMatchTheCpu) {
  G4_REQUIRE_GPU();
  using ops::cuda::GroupedGemmBackend;
  const GroupedGemmBackend saved = ops::cuda::grouped_gemm_backend();
  ops::cuda::set_grouped_gemm_backend(GroupedGemmBackend::Device);
  check_grouped({0, 64, 3, 0, 129, 250, 1, 0}, 256, 192, true, 70, "bf16 [device]");
  check_grouped({7, 0, 300, 65, 1}, 72, 40, true, 80, "Kd 72, Nd 40 [device]");
  std::vector<int64_t> counts;
  for (int e = 0; e < 40; ++e) counts.push_back(e % 7 == 3 ? 0 : (e * 37 + 11) % 200);
  check_grouped(counts, 136, 264, true, 90, "40 experts [device]");
  check_grouped({0, 0, 0}, 64, 64, true, 100, "no rows at all [device]");
  ops::cuda::set_grouped_gemm_backend(saved);
}

// A plan made without the host copy of the offsets (no synchronisation): permute, the grouped
// matmuls forward and backward and unpermute give the bits the plan with host offsets gives.
TEST(GpuGroupedMatmul, PlanWithoutHostOffsets) {
  G4_REQUIRE_GPU();
  using ops::cuda::GroupedGemmBackend;
  const GroupedGemmBackend saved = ops::cuda::grouped_gemm_backend();
  const int64_t T = 300, K = 4, E = 16, H = 128, N = 96;
  const Tensor idx = random_indices(T, K, E, E / 2, 110).to(Device::CUDA);
  const Tensor x = gpu_bf16(randn_bf16_exact({T, H}, 111));
  const Tensor w = gpu_bf16(randn_bf16_exact({E, H, N}, 112, 0.1));
  const Tensor dy = gpu_bf16(randn_bf16_exact({T * K, N}, 113));
  ops::cuda::set_grouped_gemm_backend(GroupedGemmBackend::Device);
  const ops::MoePlan with = ops::moe_plan(idx, E), without = ops::moe_plan(idx, E, /*host_offsets=*/false);
  EXPECT_TRUE(with.has_host_offsets());
  EXPECT_FALSE(without.has_host_offsets());
  EXPECT_TRUE(ops::grouped_matmul_takes_device_offsets(x, w));
  expect_close_scaled(without.device_offsets, with.device_offsets, 0, 0, "device offsets");
  const Tensor xs = ops::moe_permute(x, without);
  expect_close_scaled(xs, ops::moe_permute(x, with), 0, 0, "moe_permute");
  const Tensor y = ops::grouped_matmul(xs, w, {}, without.device_offsets);
  expect_close_scaled(y, ops::grouped_matmul(xs, w, with.offsets, with.device_offsets), 0, 0, "grouped_matmul");
  Tensor dxs, dw, dxs_ref, dw_ref;
  ops::grouped_matmul_backward(dy, xs, w, {}, dxs, dw, without.device_offsets);
  ops::grouped_matmul_backward(dy, xs, w, with.offsets, dxs_ref, dw_ref, with.device_offsets);
  expect_close_scaled(dxs, dxs_ref, 0, 0, "grouped_matmul_backward dxs");
  expect_close_scaled(dw, dw_ref, 0, 0, "grouped_matmul_backward dw");
  // The cuBLAS paths (chosen explicitly: Auto takes the device kernels wherever they fit) need the
  // host offsets: a clear error, not a wrong answer.
  ops::cuda::set_grouped_gemm_backend(GroupedGemmBackend::Grouped);
  EXPECT_FALSE(ops::grouped_matmul_takes_device_offsets(x, w));
  EXPECT_THROW(ops::grouped_matmul(xs, w, {}, without.device_offsets), Error);
  ops::cuda::set_grouped_gemm_backend(saved);
}

TEST(GpuGroupedMatmul, EveryExpertEmptyAndUnevenDims) {
  G4_REQUIRE_GPU();
  check_grouped({0, 0, 0}, 8, 8, false, 40, "no rows at all");
  check_grouped({3, 0, 2}, 1, 5, false, 50, "Kd = 1");
  check_grouped({3, 0, 2}, 5, 1, true, 60, "Nd = 1");
}

TEST(GpuGroupedMatmul, ComposedMoeMatchesTheCpu) {
  G4_REQUIRE_GPU();
  // permute -> grouped matmul -> unpermute with the plan made on the GPU, 26B-A4B-like ratios.
  const MoeCase s = make_setup(200, 8, 16, 64, 70);
  const Tensor x = randn_bf16_exact({s.tokens, s.hidden}, 71);
  const Tensor w = randn_bf16_exact({s.experts, s.hidden, 48}, 72, 0.1);
  const Tensor wts = randn_bf16_exact({s.tokens, s.k}, 73, 0.3);
  const Tensor ys_ref = ops::grouped_matmul(ops::moe_permute(x, s.cpu), w, s.cpu.offsets);
  const Tensor ref = ops::moe_unpermute(ys_ref, wts, s.cpu);
  const Tensor ys =
      ops::grouped_matmul(ops::moe_permute(gpu_f32(x), s.gpu), gpu_f32(w), s.gpu.offsets, s.gpu.device_offsets);
  expect_close_scaled(ops::moe_unpermute(ys, gpu_f32(wts), s.gpu), ref, 0, kF32Rtol, "composed MoE f32");
}

// The decode-size experts op against the CPU reference (the training path composed, in f32 from
// the same bf16-exact inputs) and against the GPU's own composed path, which rounds at the same
// points: the GPU results differ only by fp32 summation order. Token counts from one (batch-1
// decode) to the op's maximum, an expert nobody picks, H and I not multiples of the tiles; grids
// over assignments (fewer than experts, with experts picked by several tokens) and over experts;
// 16-byte and 4-byte weight loads; more tokens per expert than one pass takes, with rows and columns
// not multiples of the tiles (H 264 and 600, I 72 and 136). Run with each of the op's kernels
// (ops::cuda::DecodeExpertsKernel; the streamed ones take the shapes whose widths are multiples of 8).
void check_moe_experts_against_the_composed_path() {
  struct Shape5 {
    int64_t tokens, k, experts, hidden, inter;
  };
  for (const Shape5 c : {Shape5{1, 8, 128, 2816, 704}, Shape5{12, 2, 64, 96, 40}, Shape5{16, 2, 8, 96, 40},
                         Shape5{256, 4, 16, 130, 62}, Shape5{43, 2, 4, 96, 40}, Shape5{3, 4, 16, 264, 72},
                         Shape5{40, 2, 4, 600, 136}}) {
    SCOPED_TRACE("T " + std::to_string(c.tokens) + " K " + std::to_string(c.k) + " E " + std::to_string(c.experts) +
                 " H " + std::to_string(c.hidden));
    const Tensor idx = random_indices(c.tokens, c.k, c.experts, c.experts - 1, 90 + c.tokens);
    const Tensor x = randn_bf16_exact({c.tokens, c.hidden}, 91);
    const Tensor wts = randn_bf16_exact({c.tokens, c.k}, 92, 0.3);
    const Tensor gate_up = randn_bf16_exact({c.experts, c.hidden, 2 * c.inter}, 93, 0.05);
    const Tensor down = randn_bf16_exact({c.experts, c.inter, c.hidden}, 94, 0.05);
    const Tensor gidx = idx.to(DType::I32).to(Device::CUDA);
    const Tensor ref = ops::moe_experts(x, wts, idx.to(DType::I32), gate_up, down);
    const ops::MoePlan plan = ops::moe_plan(gidx, c.experts);
    const Tensor act = ops::gelu_gate_fused(
        ops::grouped_matmul(ops::moe_permute(gpu_bf16(x), plan), gpu_bf16(gate_up), plan.offsets, plan.device_offsets));
    const Tensor composed = host_f32(ops::moe_unpermute(
        ops::grouped_matmul(act, gpu_bf16(down), plan.offsets, plan.device_offsets), gpu_bf16(wts), plan));
    const Tensor got = ops::moe_experts(gpu_bf16(x), gpu_bf16(wts), gidx, gpu_bf16(gate_up), gpu_bf16(down));
    // bf16 rounding of gate/up, act and ys (three roundings of 2^-9 relative) as in the grouped path.
    expect_close_scaled(got, ref, 0, 3 * kBf16Rtol, "moe_experts against the CPU");
    expect_close_scaled(got, composed, 0, kBf16Rtol, "moe_experts against the GPU's composed path");
  }
}

// Runs check() with moe_experts' kernels set to `kernel`, then restores the choice.
template <class Check>
void with_experts_kernel(ops::cuda::DecodeExpertsKernel kernel, Check check) {
  const ops::cuda::DecodeExpertsKernel chosen = ops::cuda::decode_experts_kernel();
  ops::cuda::set_decode_experts_kernel(kernel);
  check();
  ops::cuda::set_decode_experts_kernel(chosen);
}

TEST(GpuMoeExperts, MatchesTheComposedPath) {
  G4_REQUIRE_GPU();
  with_experts_kernel(ops::cuda::DecodeExpertsKernel::Registers, check_moe_experts_against_the_composed_path);
}

TEST(GpuMoeExperts, StreamedMatchesTheComposedPath) {
  G4_REQUIRE_GPU();
  with_experts_kernel(ops::cuda::DecodeExpertsKernel::Streamed, check_moe_experts_against_the_composed_path);
}

// moe_experts_from_logits against softmax_topk then moe_experts: the same bits, both where the
// first experts kernel routes for itself (fewer assignments than experts: one token of 26B-A4B's
// shape, 3 tokens of 4 among 64) and where it does not (assignments >= experts, f32 logits), with
// each of the op's kernels.
TEST(GpuMoeExperts, RoutingFromLogitsInTheKernelGivesTheSameBits) {
  G4_REQUIRE_GPU();
  struct Case {
    int64_t tokens, k, experts, hidden, inter;
    DType logits;
  };
  for (const Case c : {Case{1, 8, 128, 2816, 704, DType::BF16}, Case{3, 4, 64, 264, 72, DType::BF16},
                       Case{15, 8, 128, 96, 40, DType::BF16}, Case{20, 4, 16, 96, 40, DType::BF16},
                       Case{2, 4, 64, 96, 40, DType::F32}}) {
    SCOPED_TRACE("T " + std::to_string(c.tokens) + " K " + std::to_string(c.k) + " E " + std::to_string(c.experts));
    const Tensor x = gpu_bf16(randn_bf16_exact({c.tokens, c.hidden}, 120));
    const Tensor logits = randn_bf16_exact({c.tokens, c.experts}, 121, 2.0).to(c.logits).to(Device::CUDA);
    const Tensor gate_up = gpu_bf16(randn_bf16_exact({c.experts, c.hidden, 2 * c.inter}, 122, 0.05));
    const Tensor down = gpu_bf16(randn_bf16_exact({c.experts, c.inter, c.hidden}, 123, 0.05));
    for (const auto kernel : {ops::cuda::DecodeExpertsKernel::Registers, ops::cuda::DecodeExpertsKernel::Streamed}) {
      SCOPED_TRACE(kernel == ops::cuda::DecodeExpertsKernel::Streamed ? "streamed" : "registers");
      with_experts_kernel(kernel, [&] {
        Tensor weights, indices;
        ops::softmax_topk(logits, c.k, weights, indices);
        const Tensor want = ops::moe_experts(x, weights, indices, gate_up, down);
        expect_close_scaled(ops::moe_experts_from_logits(x, logits, c.k, gate_up, down), want, 0, 0,
                            "moe_experts_from_logits");
      });
    }
  }
}

}  // namespace
}  // namespace g4

// The one entry point of every op in ops/moe.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/moe.h"

#include "ops/cpu/moe.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/moe.h"
#endif

namespace g4::ops {

namespace {
// A plan from moe_plan, on `device` (the device of the op's tensors).
void check_plan(const char* op, const MoePlan& plan, Device device) {
  G4_CHECK(plan.order.defined() && plan.row_of.defined() && plan.device_offsets.defined() &&
               plan.order.dtype() == DType::I32 && plan.row_of.dtype() == DType::I32 &&
               plan.order.numel() == plan.rows() && plan.row_of.numel() == plan.rows() &&
               plan.device_offsets.dtype() == DType::I64 && plan.device_offsets.numel() == plan.experts + 1 &&
               (static_cast<int64_t>(plan.offsets.size()) == plan.experts + 1 ||
                (plan.offsets.empty() && device == Device::CUDA)),
           op, ": malformed MoePlan (tokens ", plan.tokens, ", top_k ", plan.top_k, ", experts ", plan.experts,
           ", order ", plan.order.describe(), ", row_of ", plan.row_of.describe(), ", ", plan.offsets.size(),
           " host offsets)");
  G4_CHECK(plan.order.device() == device && plan.row_of.device() == device && plan.device_offsets.device() == device,
           op, ": the MoePlan lives on the ", device_name(plan.order.device()), " (order ", plan.order.describe(),
           ") but the op's tensors are on the ", device_name(device));
}

// ys [T*K, H] and weights [T, K] for the plan. The GPU also takes f32 weights with bf16 ys.
void check_unpermute(const char* op, const Tensor& ys, const Tensor& weights, const MoePlan& plan) {
  check_float(op, "ys", ys);
  check_float(op, "weights", weights, ys.device());
  G4_CHECK(weights.dtype() == ys.dtype() || (on_gpu(ys) && weights.dtype() == DType::F32), op, ": weights ",
           weights.describe(), " must have ys's dtype", on_gpu(ys) ? " or be f32" : "", " (ys ", ys.describe(), ")");
  check_plan(op, plan, ys.device());
  G4_CHECK(ys.dim() == 2 && ys.size(0) == plan.rows() && weights.shape() == Shape({plan.tokens, plan.top_k}), op,
           ": ys ", ys.describe(), " and weights ", weights.describe(), " do not match the plan's tokens ", plan.tokens,
           " and top_k ", plan.top_k);
}

// xs [N, Kd] rows sorted by expert, w [E, Kd, Nd], host offsets [E+1] from 0 to N, and the
// optional device copy of the offsets (GPU only).
void check_grouped(const char* op, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                   const Tensor& device_offsets) {
  check_rank(op, "xs", xs, 2, "[N, Kd]");
  check_rank(op, "w", w, 3, "[E, Kd, Nd]");
  check_same_dtype(op, "xs", xs, "w", w);
  G4_CHECK(xs.size(1) == w.size(1), op, ": xs ", xs.describe(), " does not match w ", w.describe(),
           " (xs dim 1 must equal w dim 1)");
  const int64_t experts = w.size(0), rows = xs.size(0);
  if (offsets.empty()) {
    G4_CHECK(grouped_matmul_takes_device_offsets(xs, w) && device_offsets.defined(), op,
             ": no host offsets; only the GPU kernels that read device_offsets run without them (xs ", xs.describe(),
             ", w ", w.describe(), ", device_offsets ", device_offsets.describe(), ")");
    G4_CHECK(device_offsets.device() == Device::CUDA && device_offsets.dtype() == DType::I64 &&
                 device_offsets.numel() == experts + 1,
             op, ": device_offsets ", device_offsets.describe(), " must be i64[", experts + 1, "] on the GPU");
    return;
  }
  G4_CHECK(static_cast<int64_t>(offsets.size()) == experts + 1, op, ": ", offsets.size(), " offsets for ", experts,
           " experts (need experts + 1)");
  G4_CHECK(offsets.front() == 0 && offsets.back() == rows, op, ": offsets must run from 0 to the ", rows,
           " rows of xs, got ", offsets.front(), " .. ", offsets.back());
  for (size_t e = 0; e + 1 < offsets.size(); ++e)
    G4_CHECK(offsets[e] <= offsets[e + 1], op, ": offsets decrease at expert ", e);
  if (on_gpu(xs) && device_offsets.defined()) {
    G4_CHECK(device_offsets.device() == Device::CUDA && device_offsets.dtype() == DType::I64 &&
                 device_offsets.numel() == experts + 1,
             op, ": device_offsets ", device_offsets.describe(), " must be i64[", experts + 1, "] on the GPU");
  }
}
}  // namespace

void router_topk(const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices) {
  check_float("router_topk", "probs", probs);
  check_rank("router_topk", "probs", probs, 2, "[T, E]");
  G4_CHECK(k >= 1 && k <= probs.size(1), "router_topk: k = ", k, " must be in [1, ", probs.size(1), "] for probs ",
           probs.describe());
  return G4_DISPATCH(probs, router_topk(probs, k, weights, indices));
}

Tensor router_topk_backward(const Tensor& dweights, const Tensor& probs, const Tensor& indices) {
  const char* op = "router_topk_backward";
  check_rank(op, "probs", probs, 2, "[T, E]");
  check_same_dtype(op, "dweights", dweights, "probs", probs);
  check_indices(op, "indices", indices, probs.device());
  G4_CHECK(dweights.dim() == 2 && dweights.size(0) == probs.size(0) && indices.shape() == dweights.shape(), op,
           ": dweights ", dweights.describe(), " and indices ", indices.describe(), " must both be [T, K] for probs ",
           probs.describe());
  return G4_DISPATCH(dweights, router_topk_backward(dweights, probs, indices));
}

MoePlan moe_plan(const Tensor& indices, int64_t num_experts, bool host_offsets) {
  check_rank("moe_plan", "indices", indices, 2, "[T, K]");
  check_indices("moe_plan", "indices", indices, indices.device());
  G4_CHECK(num_experts >= 1, "moe_plan: num_experts must be positive, got ", num_experts);
  return G4_DISPATCH(indices, moe_plan(indices, num_experts, host_offsets));
}

Tensor moe_permute(const Tensor& x, const MoePlan& plan) {
  check_rank("moe_permute", "x", x, 2, "[T, H]");
  check_plan("moe_permute", plan, x.device());
  G4_CHECK(x.size(0) == plan.tokens, "moe_permute: x ", x.describe(), " has not the plan's ", plan.tokens, " tokens");
  return G4_DISPATCH(x, moe_permute(x, plan));
}

Tensor moe_permute_backward(const Tensor& dxs, const MoePlan& plan) {
  check_float("moe_permute_backward", "dxs", dxs);
  check_plan("moe_permute_backward", plan, dxs.device());
  G4_CHECK(dxs.dim() == 2 && dxs.size(0) == plan.rows(), "moe_permute_backward: dxs ", dxs.describe(),
           " must be [tokens * top_k = ", plan.rows(), ", H]");
  return G4_DISPATCH(dxs, moe_permute_backward(dxs, plan));
}

Tensor moe_unpermute(const Tensor& ys, const Tensor& weights, const MoePlan& plan) {
  check_unpermute("moe_unpermute", ys, weights, plan);
  return G4_DISPATCH(ys, moe_unpermute(ys, weights, plan));
}

void moe_unpermute_backward(const Tensor& dout, const Tensor& ys, const Tensor& weights, const MoePlan& plan,
                            Tensor& dys, Tensor& dweights) {
  check_unpermute("moe_unpermute_backward", ys, weights, plan);
  check_same_dtype("moe_unpermute_backward", "ys", ys, "dout", dout);
  G4_CHECK(dout.shape() == Shape({plan.tokens, ys.size(1)}), "moe_unpermute_backward: dout ", dout.describe(),
           " must be [", plan.tokens, ", ", ys.size(1), "] (ys ", ys.describe(), ")");
  return G4_DISPATCH(dout, moe_unpermute_backward(dout, ys, weights, plan, dys, dweights));
}

bool grouped_matmul_takes_device_offsets(const Tensor& rows, const Tensor& w) {
#ifdef G4_WITH_CUDA
  if (rows.device() == Device::CUDA && w.device() == Device::CUDA)
    return cuda::grouped_matmul_takes_device_offsets(rows, w);
#endif
  return false;
}

Tensor grouped_matmul(const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                      const Tensor& device_offsets) {
  check_grouped("grouped_matmul", xs, w, offsets, device_offsets);
  return G4_DISPATCH(xs, grouped_matmul(xs, w, offsets, device_offsets));
}

void grouped_matmul_backward(const Tensor& dy, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                             Tensor& dxs, Tensor& dw, const Tensor& device_offsets, double dw_beta) {
  const char* op = "grouped_matmul_backward";
  check_grouped(op, xs, w, offsets, device_offsets);
  check_same_dtype(op, "xs", xs, "dy", dy);
  G4_CHECK(dy.shape() == Shape({xs.size(0), w.size(2)}), op, ": dy ", dy.describe(), ", xs ", xs.describe(), " and w ",
           w.describe(), " do not fit [N, Nd], [N, Kd], [E, Kd, Nd]");
  if (dw.defined()) {
    // The GPU writes a bf16 w's gradient into f32 with the GEMM itself, overwriting or adding.
    check_float(op, "dw", dw, w.device());
    G4_CHECK(dw.shape() == w.shape() && (dw.dtype() == w.dtype() || (on_gpu(w) && dw.dtype() == DType::F32)), op,
             ": dw ", dw.describe(), " must have w's shape and dtype", on_gpu(w) ? ", or be f32" : "", " (w ",
             w.describe(), ")");
    G4_CHECK(!on_gpu(w) || dw_beta == 0 || dw_beta == 1, op, ": dw_beta must be 0 or 1 on the GPU, got ", dw_beta);
  }
  return G4_DISPATCH(dy, grouped_matmul_backward(dy, xs, w, offsets, dxs, dw, device_offsets, dw_beta));
}

void check_moe_experts_operands(const char* op, const Tensor& x, const Tensor& gate_up, const Tensor& down) {
  check_rank(op, "x", x, 2, "[T, H]");
  check_rank(op, "gate_up", gate_up, 3, "[E, H, 2I]");
  check_rank(op, "down", down, 3, "[E, I, H]");
  check_same_dtype(op, "x", x, "gate_up", gate_up);
  check_same_dtype(op, "x", x, "down", down);
  const int64_t T = x.size(0), H = x.size(1), E = gate_up.size(0), I = down.size(1);
  G4_CHECK(T <= kMoeExpertsMaxTokens, op, ": ", T, " tokens; the decode-size path takes at most ",
           kMoeExpertsMaxTokens, " (larger batches go through moe_plan and grouped_matmul)");
  G4_CHECK(gate_up.size(1) == H && gate_up.size(2) == 2 * I && down.size(0) == E && down.size(2) == H, op,
           ": gate_up ", gate_up.describe(), " and down ", down.describe(), " do not fit [E, H, 2I] and [E, I, H] with H = ",
           H);
  if (on_gpu(x)) {
    G4_CHECK(x.dtype() == DType::BF16, op, ": the GPU op takes bf16 x and weights, got x ", x.describe());
    G4_CHECK(H % 2 == 0 && I % 2 == 0 && H <= 8192, op, ": the GPU op needs even H (at most 8192) and I, got H ", H,
             ", I ", I);
  }
}

Tensor moe_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const Tensor& gate_up,
                   const Tensor& down) {
  const char* op = "moe_experts";
  check_moe_experts_operands(op, x, gate_up, down);
  check_rank(op, "weights", weights, 2, "[T, K]");
  check_rank(op, "indices", indices, 2, "[T, K]");
  check_float(op, "weights", weights, x.device());
  check_on(op, "indices", indices, x.device());
  G4_CHECK(indices.dtype() == DType::I32, op, ": indices ", indices.describe(), " must be i32 (router_topk's)");
  G4_CHECK(weights.shape() == indices.shape() && weights.size(0) == x.size(0), op, ": weights ", weights.describe(),
           " and indices ", indices.describe(), " must both be [", x.size(0), ", K] for x ", x.describe());
  if (!on_gpu(x)) check_same_dtype(op, "x", x, "weights", weights);
  return G4_DISPATCH(x, moe_experts(x, weights, indices, gate_up, down));
}

}  // namespace g4::ops

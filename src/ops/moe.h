// Mixture-of-experts building blocks: top-k routing, sorting token copies by expert, a grouped
// matmul over the sorted rows (no compute for experts a token did not pick), and the weighted
// combine back to token order.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// probs [T, E] -> weights [T, K] (the K largest probabilities renormalised to sum 1) and
// indices [T, K] i32 (expert ids, in descending probability; ties: lower expert id first).
void router_topk(const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices);
// Gradient of the renormalised top-k weights with respect to probs ([T, E], zero off the top-k).
Tensor router_topk_backward(const Tensor& dweights, const Tensor& probs, const Tensor& indices);

// Assignment r = t*K + k (token t's k-th choice) sorted by expert, stable in r. The tensors live on
// the device of the indices the plan was made from; the row counts are also kept on the host,
// because launching the cuBLAS grouped matmul (and expert-parallel dispatch) needs them there. On
// the GPU, moe_plan(..., host_offsets = false) skips that copy, the one host synchronisation of an
// MoE layer: `offsets` stays empty, and only ops that read device_offsets (permute, unpermute,
// grouped_matmul where grouped_matmul_takes_device_offsets) can use the plan; the expert ids must
// then be in range (as router_topk makes them), since nothing is checked on the host.
struct MoePlan {
  int64_t tokens = 0, top_k = 0, experts = 0;
  Tensor order;                  // i32 [T*K]: sorted row -> assignment r
  Tensor row_of;                 // i32 [T*K]: assignment r -> sorted row (the inverse of order)
  Tensor device_offsets;         // i64 [E+1]: the offsets below, on the plan's device
  std::vector<int64_t> offsets;  // [E+1] on the host: rows of expert e are [offsets[e], offsets[e+1]); or empty
  int64_t rows() const { return tokens * top_k; }
  bool has_host_offsets() const { return !offsets.empty(); }
};
MoePlan moe_plan(const Tensor& indices, int64_t num_experts, bool host_offsets = true);

// x [T, H] -> xs [T*K, H] with xs[row] = x[order[row] / K].
Tensor moe_permute(const Tensor& x, const MoePlan& plan);
// Gradient of moe_permute: dx [T, H] = sum of the rows of dxs that came from each token.
Tensor moe_permute_backward(const Tensor& dxs, const MoePlan& plan);

// ys [T*K, H] sorted rows, weights [T, K] -> out [T, H] = sum_k weights[t,k] * ys[row of (t,k)].
Tensor moe_unpermute(const Tensor& ys, const Tensor& weights, const MoePlan& plan);
void moe_unpermute_backward(const Tensor& dout, const Tensor& ys, const Tensor& weights, const MoePlan& plan,
                            Tensor& dys, Tensor& dweights);

// xs [N, Kd] rows sorted by expert, w [E, Kd, Nd] -> [N, Nd]: rows of expert e times w[e].
// `offsets` [E+1] are on the host; on the GPU, `device_offsets` (i64 [E+1], the same values, e.g.
// MoePlan::device_offsets) saves uploading them; when undefined they are uploaded. Where
// grouped_matmul_takes_device_offsets(xs, w), `offsets` may be empty: the GPU kernels read
// device_offsets alone (no host synchronisation).
Tensor grouped_matmul(const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                      const Tensor& device_offsets = Tensor());
// dxs = dy · w[e]ᵀ per group; dw[e] = xs_eᵀ · dy_e (zero for experts with no rows).
// dw undefined on entry: a new tensor of w's dtype. dw defined on entry (w's shape; w's dtype, or
// f32 for bf16 w on the GPU): the product goes into it as dw = product + dw_beta · dw, so a bf16
// model's f32 weight gradient is written (dw_beta 0) or accumulated (dw_beta 1) by the GEMM itself.
void grouped_matmul_backward(const Tensor& dy, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                             Tensor& dxs, Tensor& dw, const Tensor& device_offsets = Tensor(), double dw_beta = 0);
// Whether grouped_matmul and its backward run on these operands from device offsets alone: GPU
// tensors that the wgmma kernels take, with those kernels chosen (ops/cuda/moe.h).
bool grouped_matmul_takes_device_offsets(const Tensor& rows, const Tensor& w);

// The routed experts of a few tokens in one call, for inference at decode sizes (T <=
// kMoeExpertsMaxTokens): out [T, H] = sum_k weights[t,k] * down_e(gelu(gate_e x_t) * up_e x_t), with
// e = indices[t,k] (i32 [T, K], as router_topk gives them), gate_up [E, H, 2I] (gate | up), down
// [E, I, H]. The same arithmetic as moe_permute -> grouped_matmul -> gelu_gate_fused ->
// grouped_matmul -> moe_unpermute, rounding where they round, but with nothing sized by the
// routing on the host: no synchronisation (moe_plan copies row counts to the host), so a decode step
// can be captured in a CUDA graph. No gradient.
constexpr int64_t kMoeExpertsMaxTokens = 256;
Tensor moe_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const Tensor& gate_up,
                   const Tensor& down);
// moe_experts' checks of x, gate_up and down (for ops built on it), errors naming `op`.
void check_moe_experts_operands(const char* op, const Tensor& x, const Tensor& gate_up, const Tensor& down);

}  // namespace g4::ops

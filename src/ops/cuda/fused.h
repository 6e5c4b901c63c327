// The GPU kernels of ops/fused.h. Each *_fits says whether the kernel takes the arguments (the
// dispatcher falls back to the separate ops otherwise); the arguments are checked by ops/fused.cpp.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "ops/fused.h"

namespace g4::ops::cuda {

// Last dim in whole 16-byte packs, 16-byte aligned rows, at most 2048 packs (32768 bf16 elements: a
// thread block holds a row in registers): each normed tensor and each norm weight.
bool fused_rows_fit(const Tensor& x);
Tensor add_rmsnorm(const Tensor& residual, const Tensor& a, const Tensor& w, double scale, double eps);
std::vector<Tensor> add_rmsnorm_norms(const Tensor& residual, const Tensor& a, const Tensor& w, double eps,
                                      const std::vector<NormOfSum>& norms, double scale);
Tensor rmsnorm_sum(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb, double eps);
std::vector<Tensor> rmsnorm_sum_add_norms(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb,
                                          const Tensor& residual, const Tensor& w, double eps,
                                          const std::vector<NormOfSum>& norms, double scale);
bool rmsnorm_rope_fits(const Tensor& x);  // each half of a head in whole packs, aligned (the weight: fused_rows_fit)
Tensor rmsnorm_rope(const Tensor& x, const Tensor& w, const Tensor& positions, const Tensor& inv_freq, double eps);
// One kernel; takes what norm_rope_write_kv_fits accepts (the arguments checked by ops/fused.cpp).
bool norm_rope_write_kv_fits(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                             const Tensor& v_raw, const Tensor& k_pages, const Tensor& v_pages, const Tensor& slots);
Tensor norm_rope_write_kv(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                          const Tensor& v_raw, const Tensor& positions, const Tensor& inv_freq, double eps,
                          Tensor& k_pages, Tensor& v_pages, const Tensor& slots);
// One warp per token (in moe.cu, beside router_topk; the same limits on k and the experts).
void softmax_topk(const Tensor& logits, int64_t k, Tensor& weights, Tensor& indices);
// One elementwise kernel (in elementwise.cu, beside the other maps); any float dtype and alignment.
Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b);

}  // namespace g4::ops::cuda

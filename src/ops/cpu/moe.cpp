// Mixture-of-experts blocks on the CPU: routing, the expert-sorted plan, permute/unpermute
// gathers, and a grouped matmul that issues one BLAS gemm per non-empty expert group.
#include "ops/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "ops/cpu/blas.h"
#include "ops/cpu/common.h"
#include "ops/cpu/elementwise.h"

namespace g4::ops::cpu {

namespace {
// Inverse of plan.order: the sorted row that holds assignment r = t*K + k.
std::vector<int64_t> row_of_assignment(const MoePlan& plan) {
  const int32_t* order = plan.order.data<int32_t>();
  std::vector<int64_t> row(static_cast<size_t>(plan.order.numel()));
  for (size_t i = 0; i < row.size(); ++i) row[static_cast<size_t>(order[i])] = static_cast<int64_t>(i);
  return row;
}
}  // namespace

void router_topk(const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices) {
  const int64_t tokens = probs.size(0), experts = probs.size(1);
  cpu::dispatch_float("router_topk", probs, [&](auto tag) {
    using T = decltype(tag);
    const T* p = probs.data<T>();
    // A NaN would break the ordering the sort relies on.
    for (int64_t i = 0; i < probs.numel(); ++i)
      G4_CHECK(!std::isnan(p[i]), "router_topk: NaN probability at token ", i / experts, ", expert ", i % experts);
    weights = Tensor::empty({tokens, k}, probs.dtype());
    indices = Tensor::empty({tokens, k}, DType::I32);
    T* w = weights.data<T>();
    int32_t* idx = indices.data<int32_t>();
#pragma omp parallel
    {
      std::vector<int32_t> ids(static_cast<size_t>(experts));
#pragma omp for
      for (int64_t t = 0; t < tokens; ++t) {
        const T* pt = p + t * experts;
        std::iota(ids.begin(), ids.end(), 0);
        // Descending probability; equal probabilities keep the lower expert id first.
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                          [pt](int32_t a, int32_t b) { return pt[a] > pt[b] || (pt[a] == pt[b] && a < b); });
        T sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += pt[ids[j]];
        for (int64_t j = 0; j < k; ++j) {
          idx[t * k + j] = ids[j];
          w[t * k + j] = pt[ids[j]] / sum;
        }
      }
    }
  });
}

Tensor router_topk_backward(const Tensor& dweights, const Tensor& probs, const Tensor& indices) {
  const char* op = "router_topk_backward";
  const int64_t tokens = probs.size(0), experts = probs.size(1);
  const int64_t k = dweights.size(1);
  const std::vector<int64_t> idx = cpu::read_indices(indices);
  for (size_t i = 0; i < idx.size(); ++i)
    G4_CHECK(idx[i] >= 0 && idx[i] < experts, op, ": expert id ", idx[i], " at position ", i, " outside [0, ",
             experts, ")");
  return cpu::dispatch_float(op, probs, [&](auto tag) {
    using T = decltype(tag);
    const T* p = probs.data<T>();
    const T* dw = dweights.data<T>();
    Tensor dp = Tensor::zeros(probs.shape(), probs.dtype());
    T* pd = dp.data<T>();
    // w_k = p_k / S with S = Σ_j p_j over the chosen experts, so
    // dL/dp_k = (dw_k - Σ_j dw_j w_j) / S.
#pragma omp parallel for if (tokens * k > 4096)
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t* it = idx.data() + t * k;
      double sum = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j) sum += p[t * experts + it[j]];
      for (int64_t j = 0; j < k; ++j) dot += static_cast<double>(dw[t * k + j]) * p[t * experts + it[j]] / sum;
      for (int64_t j = 0; j < k; ++j) pd[t * experts + it[j]] += static_cast<T>((dw[t * k + j] - dot) / sum);
    }
    return dp;
  });
}

MoePlan moe_plan(const Tensor& indices, int64_t num_experts, bool /*host_offsets: always made on the CPU*/) {
  const std::vector<int64_t> idx = cpu::read_indices(indices);
  MoePlan plan;
  plan.tokens = indices.size(0);
  plan.top_k = indices.size(1);
  plan.experts = num_experts;
  // Counting sort: count per expert, prefix-sum into offsets, then place assignments in r order
  // (which makes the sort stable).
  plan.offsets.assign(static_cast<size_t>(num_experts + 1), 0);
  for (size_t r = 0; r < idx.size(); ++r) {
    G4_CHECK(idx[r] >= 0 && idx[r] < num_experts, "moe_plan: expert id ", idx[r], " of token ",
             static_cast<int64_t>(r) / plan.top_k, " (choice ", static_cast<int64_t>(r) % plan.top_k,
             ") outside [0, ", num_experts, ")");
    plan.offsets[idx[r] + 1] += 1;
  }
  for (int64_t e = 0; e < num_experts; ++e) plan.offsets[e + 1] += plan.offsets[e];
  std::vector<int64_t> next(plan.offsets.begin(), plan.offsets.end() - 1);
  const int64_t rows = static_cast<int64_t>(idx.size());
  plan.order = Tensor::empty({rows}, DType::I32);
  plan.row_of = Tensor::empty({rows}, DType::I32);
  int32_t* order = plan.order.data<int32_t>();
  int32_t* row_of = plan.row_of.data<int32_t>();
  for (size_t r = 0; r < idx.size(); ++r) {
    const int64_t row = next[idx[r]]++;
    order[row] = static_cast<int32_t>(r);
    row_of[r] = static_cast<int32_t>(row);
  }
  plan.device_offsets = Tensor::from_vector(plan.offsets, {num_experts + 1});
  return plan;
}

Tensor moe_permute(const Tensor& x, const MoePlan& plan) {
  const int64_t rows = plan.tokens * plan.top_k;
  Tensor xs = Tensor::empty({rows, x.size(1)}, x.dtype());
  const size_t row_bytes = static_cast<size_t>(x.size(1)) * dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(xs.raw());
  const int32_t* order = plan.order.data<int32_t>();
  for (int64_t row = 0; row < rows; ++row)
    std::memcpy(dst + row * row_bytes, src + (order[row] / plan.top_k) * row_bytes, row_bytes);
  return xs;
}

Tensor moe_permute_backward(const Tensor& dxs, const MoePlan& plan) {
  const std::vector<int64_t> row = row_of_assignment(plan);
  return cpu::dispatch_float("moe_permute_backward", dxs, [&](auto tag) {
    using T = decltype(tag);
    const int64_t h = dxs.size(1), k = plan.top_k;
    Tensor dx = Tensor::zeros({plan.tokens, h}, dxs.dtype());
    const T* src = dxs.data<T>();
    T* dst = dx.data<T>();
    // Token-major with the inverse map: each thread owns its tokens' rows, no races.
#pragma omp parallel for if (plan.tokens * k * h > (1 << 15))
    for (int64_t t = 0; t < plan.tokens; ++t)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t c = 0; c < h; ++c) dst[t * h + c] += src[row[t * k + j] * h + c];
    return dx;
  });
}

Tensor moe_unpermute(const Tensor& ys, const Tensor& weights, const MoePlan& plan) {
  const std::vector<int64_t> row = row_of_assignment(plan);
  return cpu::dispatch_float("moe_unpermute", ys, [&](auto tag) {
    using T = decltype(tag);
    const int64_t h = ys.size(1), k = plan.top_k;
    Tensor out = Tensor::zeros({plan.tokens, h}, ys.dtype());
    const T* py = ys.data<T>();
    const T* pw = weights.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for if (plan.tokens * k * h > (1 << 15))
    for (int64_t t = 0; t < plan.tokens; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const T wt = pw[t * k + j];
        const T* y = py + row[t * k + j] * h;
        for (int64_t c = 0; c < h; ++c) po[t * h + c] += wt * y[c];
      }
    return out;
  });
}

void moe_unpermute_backward(const Tensor& dout, const Tensor& ys, const Tensor& weights, const MoePlan& plan,
                            Tensor& dys, Tensor& dweights) {
  const std::vector<int64_t> row = row_of_assignment(plan);
  cpu::dispatch_float("moe_unpermute_backward", ys, [&](auto tag) {
    using T = decltype(tag);
    const int64_t h = ys.size(1), k = plan.top_k;
    dys = Tensor::empty(ys.shape(), ys.dtype());
    dweights = Tensor::empty(weights.shape(), weights.dtype());
    const T* pdo = dout.data<T>();
    const T* py = ys.data<T>();
    const T* pw = weights.data<T>();
    T* pdy = dys.data<T>();
    T* pdw = dweights.data<T>();
#pragma omp parallel for if (plan.tokens * k * h > (1 << 15))
    for (int64_t t = 0; t < plan.tokens; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = row[t * k + j];
        double dot = 0;
        for (int64_t c = 0; c < h; ++c) {
          pdy[r * h + c] = pw[t * k + j] * pdo[t * h + c];
          dot += static_cast<double>(pdo[t * h + c]) * py[r * h + c];
        }
        pdw[t * k + j] = static_cast<T>(dot);
      }
  });
}

Tensor grouped_matmul(const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                      const Tensor& device_offsets) {
  return cpu::dispatch_float("grouped_matmul", xs, [&](auto tag) {
    using T = decltype(tag);
    const int64_t kd = w.size(1), nd = w.size(2);
    Tensor y = Tensor::empty({xs.size(0), nd}, xs.dtype());
    for (int64_t e = 0; e < w.size(0); ++e) {
      const int64_t n_e = offsets[e + 1] - offsets[e];
      if (n_e == 0) continue;
      cpu::gemm<T>(false, false, n_e, nd, kd, T(1), xs.data<T>() + offsets[e] * kd, kd, w.data<T>() + e * kd * nd, nd,
                   T(0), y.data<T>() + offsets[e] * nd, nd);
    }
    return y;
  });
}

void grouped_matmul_backward(const Tensor& dy, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                             Tensor& dxs, Tensor& dw, const Tensor& device_offsets, double dw_beta) {
  const bool into = dw.defined();
  cpu::dispatch_float("grouped_matmul_backward", xs, [&](auto tag) {
    using T = decltype(tag);
    const int64_t kd = w.size(1), nd = w.size(2);
    const T beta = into ? static_cast<T>(dw_beta) : T(0);
    dxs = Tensor::empty(xs.shape(), xs.dtype());
    if (!into) dw = Tensor::zeros(w.shape(), w.dtype());
    for (int64_t e = 0; e < w.size(0); ++e) {
      const int64_t n_e = offsets[e + 1] - offsets[e];
      T* dw_e = dw.data<T>() + e * kd * nd;
      if (n_e == 0) {  // no rows: the product is zero
        for (int64_t i = 0; i < kd * nd; ++i) dw_e[i] = beta == T(0) ? T(0) : beta * dw_e[i];
        continue;
      }
      const T* dy_e = dy.data<T>() + offsets[e] * nd;
      const T* x_e = xs.data<T>() + offsets[e] * kd;
      const T* w_e = w.data<T>() + e * kd * nd;
      // dxs_e [n_e, Kd] = dy_e [n_e, Nd] · w_eᵀ;  dw_e [Kd, Nd] = x_eᵀ · dy_e.
      cpu::gemm<T>(false, true, n_e, kd, nd, T(1), dy_e, nd, w_e, nd, T(0), dxs.data<T>() + offsets[e] * kd, kd);
      cpu::gemm<T>(true, false, kd, nd, n_e, T(1), x_e, kd, dy_e, nd, beta, dw_e, nd);
    }
  });
}

// The reference is the training path composed: plan, permute, grouped matmuls, unpermute.
Tensor moe_experts(const Tensor& x, const Tensor& weights, const Tensor& indices, const Tensor& gate_up,
                   const Tensor& down) {
  const MoePlan plan = cpu::moe_plan(indices, gate_up.size(0), true);
  const Tensor hidden = cpu::grouped_matmul(cpu::moe_permute(x, plan), gate_up, plan.offsets, Tensor());
  const Tensor act = cpu::gelu_gate_fused(hidden);
  return cpu::moe_unpermute(cpu::grouped_matmul(act, down, plan.offsets, Tensor()), weights, plan);
}

}  // namespace g4::ops::cpu

// The fused norm kernels of ops/fused.h. Each rounds where the separate kernels store
// (ops/cuda/norm.cu, elementwise.cu, rope.cu): the norm's output (x·inv)·w, the sum, the scaling,
// and rope's cos/sin and outputs, so a fused layer computes what the separate ops compute up to the
// order of the fp32 sum of squares.
#include "ops/cuda/common.cuh"
#include "ops/cuda/fused.h"
#include "ops/cuda/index_errors.h"
#include "ops/cuda/row_norms.cuh"

#include <type_traits>

namespace g4::ops::cuda {

namespace {

constexpr int kRopeWarps = 4;  // rows (one head of one token) per block of rmsnorm_rope

template <class T, int V, int P>
__global__ void __launch_bounds__(kRowMaxThreads) add_rmsnorm_kernel(const T* __restrict__ residual,
                                                                     const T* __restrict__ a, const T* __restrict__ w,
                                                                     T* __restrict__ y, int64_t d, float eps,
                                                                     float scale) {
  pdl_begin();
  __shared__ float smem[32];
  const int64_t off = int64_t{blockIdx.x} * d;
  const int nvec = static_cast<int>(d / V);
  RowPacks<T, V, P> ap, rp, wp;
  ap.load(a + off, nvec);
  rp.load(residual + off, nvec);
  wp.load(w, nvec);
  const float inv = inv_rms(ap.sum_of_squares(nvec), d, eps, smem);
  residual_plus_normed(rp, ap, wp, inv, scale, nvec).store(y + off, nvec);
}

// h = (residual + rmsnorm(a, w))·scale and the norms of h (row_norms.cuh), one row per block.
template <class T, int V, int P, bool kPair>
__global__ void __launch_bounds__(kRowMaxThreads)
    add_rmsnorm_norms_kernel(const T* __restrict__ residual, const T* __restrict__ a, const T* __restrict__ w,
                             T* __restrict__ h, const SumNorms<T> norms, const NormedPair<T> pair, int64_t d,
                             float eps, float scale) {
  pdl_begin();
  __shared__ float smem[32];
  add_rmsnorm_norms_row<T, V, P, kPair>(residual, a, w, h, norms, pair, int64_t{blockIdx.x} * d, d, eps, scale, smem);
}

template <class T, int V, int P>
__global__ void __launch_bounds__(kRowMaxThreads) rmsnorm_sum_kernel(const T* __restrict__ a, const T* __restrict__ wa,
                                                                     const T* __restrict__ b, const T* __restrict__ wb,
                                                                     T* __restrict__ y, int64_t d, float eps) {
  pdl_begin();
  __shared__ float smem[32];
  const int64_t off = int64_t{blockIdx.x} * d;
  const int nvec = static_cast<int>(d / V);
  RowPacks<T, V, P> ap, bp, wap, wbp;
  ap.load(a + off, nvec);
  bp.load(b + off, nvec);
  wap.load(wa, nvec);
  wbp.load(wb, nvec);
  normed_sum(ap, wap, bp, wbp, d, eps, smem, nvec).store(y + off, nvec);
}

// One row (a head of a token: x and y point at its 2·half elements) by one warp: the sum of squares
// over both halves, then each pair (i, i + half) normed, rounded, and rotated by position p as
// rope.cu rotates it.
template <class T, int V>
__device__ __forceinline__ void norm_rope_row(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                              float p, const float* __restrict__ inv_freq, int half, float eps,
                                              int lane) {
  const int hp = half / V;
  float ss = 0.f;
  for (int ip = lane; ip < hp; ip += 32) {
    const Pack<T, V> a = load_pack<T, V>(x + int64_t{ip} * V), b = load_pack<T, V>(x + half + int64_t{ip} * V);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float u = to_f32(a.v[e]), v = to_f32(b.v[e]);
      ss += u * u + v * v;
    }
  }
  ss = warp_reduce(ss, SumOp{});
  const float inv = 1.f / sqrtf(ss / static_cast<float>(2 * half) + eps);
  for (int ip = lane; ip < hp; ip += 32) {
    const int64_t lo = int64_t{ip} * V, hi = lo + half;
    const Pack<T, V> a = load_pack<T, V>(x + lo), b = load_pack<T, V>(x + hi);
    const Pack<T, V> wa = load_pack<T, V>(w + lo), wb = load_pack<T, V>(w + hi);
    Pack<T, V> ya, yb;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float sn, cs;
      sincosf(p * inv_freq[ip * V + e], &sn, &cs);
      const float c = to_f32(from_f32<T>(cs)), s = to_f32(from_f32<T>(sn));
      const float x1 = normed(a.v[e], inv, wa.v[e]), x2 = normed(b.v[e], inv, wb.v[e]);
      ya.v[e] = from_f32<T>(x1 * c - x2 * s);
      yb.v[e] = from_f32<T>(x2 * c + x1 * s);
    }
    store_pack<T, V>(y + lo, ya);
    store_pack<T, V>(y + hi, yb);
  }
}

// One row of d elements by one warp: rmsnorm without a weight, (x·inv) rounded as norm.cu rounds it.
template <class T, int V>
__device__ __forceinline__ void norm_row(const T* __restrict__ x, T* __restrict__ y, int d, float eps, int lane) {
  const int nvec = d / V;
  float ss = 0.f;
  for (int c = lane; c < nvec; c += 32) {
    const Pack<T, V> a = load_pack<T, V>(x + int64_t{c} * V);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float u = to_f32(a.v[e]);
      ss += u * u;
    }
  }
  ss = warp_reduce(ss, SumOp{});
  const float inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int c = lane; c < nvec; c += 32) {
    const Pack<T, V> a = load_pack<T, V>(x + int64_t{c} * V);
    Pack<T, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(to_f32(a.v[e]) * inv);
    store_pack<T, V>(y + int64_t{c} * V, o);
  }
}

// One warp per row (a head of a token).
template <class T, class I, int V>
__global__ void __launch_bounds__(kRopeWarps * 32) rmsnorm_rope_kernel(const T* __restrict__ x,
                                                                       const T* __restrict__ w, T* __restrict__ y,
                                                                       const I* __restrict__ pos,
                                                                       const float* __restrict__ inv_freq,
                                                                       int64_t rows, int heads, int half, float eps) {
  pdl_begin();
  const int64_t row = int64_t{blockIdx.x} * kRopeWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // a whole warp: only warp-level reductions follow
  const int64_t off = row * 2 * int64_t{half};
  norm_rope_row<T, V>(x + off, w, y + off, static_cast<float>(pos[row / heads]), inv_freq, half, eps,
                      threadIdx.x & 31);
}

// The rows of norm_rope_write_kv, one warp each: the T·nH query heads (normed and rotated into
// q_out), then, unless k is null (a KV-shared layer), the T·nKV key heads (normed and rotated) and
// the T·nKV value heads (normed without a weight), each written into its token's page row (pool
// row `slots[t]`, whose heads are consecutive; -1: the token is not kept; past the pool: reported
// as write_kv_pages reports it).
template <class T, class I>
struct AttentionInputs {
  const T* q;
  const T* wq;
  T* q_out;
  const T* k;
  const T* wk;
  const T* v;
  T* k_pages;
  T* v_pages;
  const int64_t* slots;
  int64_t pool_rows;
  const I* pos;
  const float* inv_freq;
  int64_t tokens;
  int q_heads, kv_heads, half;
  float eps;
  IndexErrorSink sink;
};

template <class T, class I, int V>
__global__ void __launch_bounds__(kRopeWarps * 32) norm_rope_write_kv_kernel(const AttentionInputs<T, I> a) {
  pdl_begin();
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t{blockIdx.x} * kRopeWarps + (threadIdx.x >> 5), d = 2 * int64_t{a.half};
  const int64_t q_rows = a.tokens * a.q_heads, kv_rows = a.k ? a.tokens * a.kv_heads : 0;
  if (row < q_rows) {
    norm_rope_row<T, V>(a.q + row * d, a.wq, a.q_out + row * d, static_cast<float>(a.pos[row / a.q_heads]), a.inv_freq,
                        a.half, a.eps, lane);
    return;
  }
  int64_t r = row - q_rows;
  const bool value = r >= kv_rows;
  if (value) r -= kv_rows;
  if (r >= kv_rows) return;  // a whole warp
  const int64_t t = r / a.kv_heads, head = r % a.kv_heads, slot = a.slots[t];
  if (slot < 0) return;
  if (slot >= a.pool_rows) {
    if (lane == 0 && head == 0 && !value) report_index_error(a.sink, slot, t, a.pool_rows);
    return;
  }
  const int64_t at = (slot * a.kv_heads + head) * d;
  if (value) {
    norm_row<T, V>(a.v + r * d, a.v_pages + at, static_cast<int>(d), a.eps, lane);
  } else {
    norm_rope_row<T, V>(a.k + r * d, a.wk, a.k_pages + at, static_cast<float>(a.pos[t]), a.inv_freq, a.half, a.eps,
                        lane);
  }
}

// launch(I{}) with I the positions' index type (i64 or i32).
template <class Launch>
void with_position_type(const Tensor& positions, Launch&& launch) {
  if (positions.dtype() == DType::I64)
    launch(int64_t{});
  else
    launch(int32_t{});
}

unsigned row_grid(int64_t rows, int64_t per_block, const char* op) {
  const int64_t blocks = (rows + per_block - 1) / per_block;
  G4_CHECK(blocks <= 0x7fffffff, op, ": ", rows, " rows exceed one grid");
  return static_cast<unsigned>(blocks);
}

// The packs per thread (1, 2 or kRowMaxPacks) and threads per block of a register-resident row
// kernel for rows of `nvec` packs: as few packs a thread as the block allows.
struct RowShape {
  int packs;
  unsigned threads;
};

RowShape row_shape(int64_t nvec) {
  const int packs = nvec <= kRowMaxThreads ? 1 : nvec <= 2 * kRowMaxThreads ? 2 : kRowMaxPacks;
  const int64_t threads = ((nvec + packs - 1) / packs + 31) / 32 * 32;
  return {packs, static_cast<unsigned>(threads)};
}

// launch(std::integral_constant<int, P>{}) with P = packs.
template <class Launch>
void with_row_packs(int packs, Launch&& launch) {
  if (packs == 1)
    launch(std::integral_constant<int, 1>{});
  else if (packs == 2)
    launch(std::integral_constant<int, 2>{});
  else
    launch(std::integral_constant<int, kRowMaxPacks>{});
}

}  // namespace

bool fused_rows_fit(const Tensor& x) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype()));
  return x.dim() >= 1 && x.size(-1) > 0 && x.size(-1) % vec == 0 && aligned16(x.raw()) &&
         x.size(-1) <= int64_t{kRowMaxPacks} * kRowMaxThreads * vec;
}

bool rmsnorm_rope_fits(const Tensor& x) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype()));
  return x.dim() == 4 && x.size(3) > 0 && (x.size(3) / 2) % vec == 0 && x.size(3) % 2 == 0 && aligned16(x.raw()) &&
         x.size(2) < (int64_t{1} << 31) && x.size(3) < (int64_t{1} << 30);
}

bool norm_rope_write_kv_fits(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                             const Tensor& v_raw, const Tensor& k_pages, const Tensor& v_pages, const Tensor& slots) {
  if (!rmsnorm_rope_fits(q_raw) || !fused_rows_fit(wq)) return false;
  if (!k_raw.defined()) return true;
  // Keys and values of the same head dim as the queries; each page row's heads in 16-byte packs.
  return rmsnorm_rope_fits(k_raw) && fused_rows_fit(wk) && k_raw.size(3) == q_raw.size(3) &&
         v_raw.shape() == k_raw.shape() && fused_rows_fit(v_raw) && aligned16(k_pages.raw()) &&
         aligned16(v_pages.raw()) && k_pages.size(3) == k_raw.size(3) && v_pages.size(3) == k_raw.size(3) &&
         slots.dtype() == DType::I64;
}

Tensor add_rmsnorm(const Tensor& residual, const Tensor& a, const Tensor& w, double scale, double eps) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  const int64_t d = last_dim(a), rows = leading_rows(a);
  if (rows == 0) return y;
  dispatch_float("add_rmsnorm", a, [&](auto tag) {
    using T = decltype(tag);
    const RowShape shape = row_shape(d / kVec<T>);
    with_row_packs(shape.packs, [&](auto packs) {
      launch_pdl(add_rmsnorm_kernel<T, kVec<T>, decltype(packs)::value>, row_grid(rows, 1, "add_rmsnorm"),
                 shape.threads, 0, static_cast<const T*>(residual.raw()), static_cast<const T*>(a.raw()),
                 static_cast<const T*>(w.raw()), static_cast<T*>(y.raw()), d, static_cast<float>(eps),
                 static_cast<float>(scale));
    });
  });
  return y;
}

namespace {

// add_rmsnorm_norms, with a made from *pair first when given (rmsnorm_sum_add_norms).
std::vector<Tensor> add_norms(const Tensor& residual, const Tensor& a, const Tensor& w, double eps,
                              const std::vector<NormOfSum>& norms, double scale, const Tensor* pair) {
  std::vector<Tensor> out{Tensor::empty(a.shape(), a.dtype(), Device::CUDA)};
  for (size_t n = 0; n < norms.size(); ++n) out.push_back(Tensor::empty(a.shape(), a.dtype(), Device::CUDA));
  const int64_t d = last_dim(a), rows = leading_rows(a);
  if (rows == 0) return out;
  dispatch_float("add_rmsnorm_norms", a, [&](auto tag) {
    using T = decltype(tag);
    SumNorms<T> sn{};
    sn.count = static_cast<int>(norms.size());
    for (size_t n = 0; n < norms.size(); ++n) {
      sn.w[n] = static_cast<const T*>(norms[n].weight.raw());
      sn.y[n] = static_cast<T*>(out[n + 1].raw());
      sn.scale[n] = static_cast<float>(norms[n].scale);
    }
    NormedPair<T> np{};
    if (pair)
      np = {static_cast<const T*>(pair[0].raw()), static_cast<const T*>(pair[1].raw()),
            static_cast<const T*>(pair[2].raw())};
    const RowShape shape = row_shape(d / kVec<T>);
    with_row_packs(shape.packs, [&](auto packs) {
      constexpr int P = decltype(packs)::value;
      launch_pdl(pair ? add_rmsnorm_norms_kernel<T, kVec<T>, P, true> : add_rmsnorm_norms_kernel<T, kVec<T>, P, false>,
                 row_grid(rows, 1, "add_rmsnorm_norms"), shape.threads, 0, static_cast<const T*>(residual.raw()),
                 static_cast<const T*>(a.raw()), static_cast<const T*>(w.raw()), static_cast<T*>(out[0].raw()), sn, np,
                 d, static_cast<float>(eps), static_cast<float>(scale));
    });
  });
  return out;
}

}  // namespace

std::vector<Tensor> add_rmsnorm_norms(const Tensor& residual, const Tensor& a, const Tensor& w, double eps,
                                      const std::vector<NormOfSum>& norms, double scale) {
  return add_norms(residual, a, w, eps, norms, scale, nullptr);
}

std::vector<Tensor> rmsnorm_sum_add_norms(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb,
                                          const Tensor& residual, const Tensor& w, double eps,
                                          const std::vector<NormOfSum>& norms, double scale) {
  const Tensor pair[3] = {b, wa, wb};
  return add_norms(residual, a, w, eps, norms, scale, pair);
}

Tensor rmsnorm_sum(const Tensor& a, const Tensor& wa, const Tensor& b, const Tensor& wb, double eps) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::CUDA);
  const int64_t d = last_dim(a), rows = leading_rows(a);
  if (rows == 0) return y;
  dispatch_float("rmsnorm_sum", a, [&](auto tag) {
    using T = decltype(tag);
    const RowShape shape = row_shape(d / kVec<T>);
    with_row_packs(shape.packs, [&](auto packs) {
      launch_pdl(rmsnorm_sum_kernel<T, kVec<T>, decltype(packs)::value>, row_grid(rows, 1, "rmsnorm_sum"),
                 shape.threads, 0, static_cast<const T*>(a.raw()), static_cast<const T*>(wa.raw()),
                 static_cast<const T*>(b.raw()), static_cast<const T*>(wb.raw()), static_cast<T*>(y.raw()), d,
                 static_cast<float>(eps));
    });
  });
  return y;
}

Tensor norm_rope_write_kv(const Tensor& q_raw, const Tensor& wq, const Tensor& k_raw, const Tensor& wk,
                          const Tensor& v_raw, const Tensor& positions, const Tensor& inv_freq, double eps,
                          Tensor& k_pages, Tensor& v_pages, const Tensor& slots) {
  raise_index_errors(/*wait=*/false);
  Tensor q = Tensor::empty(q_raw.shape(), q_raw.dtype(), Device::CUDA);
  const int64_t d = q_raw.size(3), tokens = q_raw.size(0) * q_raw.size(1);
  const int64_t kv_heads = k_raw.defined() ? k_raw.size(2) : 0;
  const int64_t rows = tokens * (q_raw.size(2) + 2 * kv_heads);
  if (rows == 0) return q;
  const unsigned grid = row_grid(rows, kRopeWarps, "norm_rope_write_kv");
  dispatch_float("norm_rope_write_kv", q_raw, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto itag) {
      using I = decltype(itag);
      AttentionInputs<T, I> a{};
      a.q = static_cast<const T*>(q_raw.raw());
      a.wq = static_cast<const T*>(wq.raw());
      a.q_out = static_cast<T*>(q.raw());
      if (k_raw.defined()) {
        a.k = static_cast<const T*>(k_raw.raw());
        a.wk = static_cast<const T*>(wk.raw());
        a.v = static_cast<const T*>(v_raw.raw());
        a.k_pages = static_cast<T*>(k_pages.raw());
        a.v_pages = static_cast<T*>(v_pages.raw());
        a.slots = slots.data<int64_t>();
        a.pool_rows = k_pages.size(0) * k_pages.size(1);
        a.sink = index_error_sink(IndexOp::WriteKvSlot);
      }
      a.pos = static_cast<const I*>(positions.raw());
      a.inv_freq = static_cast<const float*>(inv_freq.raw());
      a.tokens = tokens;
      a.q_heads = static_cast<int>(q_raw.size(2));
      a.kv_heads = static_cast<int>(kv_heads);
      a.half = static_cast<int>(d / 2);
      a.eps = static_cast<float>(eps);
      launch_pdl(norm_rope_write_kv_kernel<T, I, kVec<T>>, grid, kRopeWarps * 32, 0, a);
    };
    with_position_type(positions, launch);
  });
  return q;
}

Tensor rmsnorm_rope(const Tensor& x, const Tensor& w, const Tensor& positions, const Tensor& inv_freq, double eps) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t heads = x.size(2), half = x.size(3) / 2, rows = x.numel() / x.size(3);
  if (rows == 0) return y;
  const unsigned grid = row_grid(rows, kRopeWarps, "rmsnorm_rope");
  dispatch_float("rmsnorm_rope", x, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto itag) {
      using I = decltype(itag);
      launch_pdl(rmsnorm_rope_kernel<T, I, kVec<T>>, grid, kRopeWarps * 32, 0, static_cast<const T*>(x.raw()),
                 static_cast<const T*>(w.raw()), static_cast<T*>(y.raw()), static_cast<const I*>(positions.raw()),
                 static_cast<const float*>(inv_freq.raw()), rows, static_cast<int>(heads), static_cast<int>(half),
                 static_cast<float>(eps));
    };
    with_position_type(positions, launch);
  });
  return y;
}

}  // namespace g4::ops::cuda

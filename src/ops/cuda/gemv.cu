// y = alpha·x·Wᵀ + beta·y for a few rows of x (ops/cuda/gemv.h). A block of kWarps warps owns kRows
// consecutive rows of W and splits k among its warps; each lane loads 8 bf16 of each of the kRows
// rows of W per step (16 bytes each, several loads in flight) and applies every row of x to them,
// so W is read once and x (small, L1-resident) once per kRows rows. The partial sums are reduced
// within each warp by shuffles, then across the warps through shared memory, in a fixed order.
// One launch may cover up to kMaxProducts products of the same x (a layer's q, k and v
// projections): the grid is their blocks end to end, and a block finds its product by its index.
// Under programmatic dependent launch (core/cuda/pdl.cuh) a block asks L2 for its weight rows
// before it waits for the previous kernel: W is the bulk of the bytes and no kernel writes it.
#include "ops/cuda/gemv.h"

#include "core/cuda/arrivals.cuh"
#include "core/cuda/arrivals.h"
#include "core/env.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/row_norms.cuh"

namespace g4::ops::cuda {

namespace {

// 8 bf16 at p (16-byte aligned) as floats.
__device__ __forceinline__ void load8(const bf16_t* p, float* out) {
  const Pack<bf16_t, 8> v = load_pack<bf16_t, 8>(p);
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = to_f32(v.v[e]);
}

constexpr int kWarps = 4;
constexpr int kRows = 4;  // rows of W per block
constexpr int kPerLane = 8;  // bf16 per 16-byte load
constexpr int kStride = kWarps * 32 * kPerLane;  // elements of k one block step covers
constexpr int kMaxProducts = 3;

// What a block writes from its sums: alpha·sum + beta·y; gelu_tanh(gate)·up from a gate row and an
// up row (gemv_gelu_gate); gelu_tanh(sum)·b with b a tensor of y's shape (gemv_gelu_mul); or the sum,
// after which the last block to finish makes add_rmsnorm_norms of y's rows (gemv_add_rmsnorm_norms).
enum class Epilogue { kLinear, kGeluGate, kGeluMul, kLinearNorms };

// Packs of 8 per thread for the norms after the product: rows of up to kWarps·32·8·kNormPacks = 3072
// elements (E2B's, E4B's and 26B-A4B's hidden sizes).
constexpr int kNormPacks = 3;
// A projection joining the residual is a few hundred blocks (26B-A4B's 2816 outputs: 704), which
// stream the weights in one wave when six fit a multiprocessor. The kernel with the norms keeps
// its registers to that (80); the norms' tail loads its weights late to fit them. With two rows it
// spilled there, so more rows than one (a batch-1 decode step) take the separate kernels.
constexpr int kNormsMaxRows = 1;
constexpr int kNormsMinBlocks = 6;

// The norms after a kLinearNorms product (bf16): h = (residual + rmsnorm(y, w))·scale and norms of h,
// every row contiguous with y's width; `counter` counts the blocks that are done.
struct NormsAfter {
  const bf16_t* residual = nullptr;
  const bf16_t* w = nullptr;
  bf16_t* h = nullptr;
  SumNorms<bf16_t> norms{};
  float eps = 0.f, scale = 1.f;
  unsigned* counter = nullptr;
};

// The products of one launch (kernel parameters, so the table costs no copy): product p writes
// y[p] [m, n[p]] from w[p] (and, gated, w2[p]), in blocks [first_block[p], first_block[p + 1]).
// gemv_gelu_mul's b (one product) has y's row stride.
template <class TY>
struct Products {
  const bf16_t* w[kMaxProducts] = {};
  const bf16_t* w2[kMaxProducts] = {};
  const bf16_t* b = nullptr;
  TY* y[kMaxProducts] = {};
  int64_t n[kMaxProducts] = {}, ldw[kMaxProducts] = {}, ldy[kMaxProducts] = {};
  int64_t first_block[kMaxProducts + 1] = {};
  int count = 0;
};

// What one block computes: its kRows weight rows, its output and its first output column.
template <class TY>
struct BlockRows {
  const bf16_t* w[kRows];
  TY* y;
  int64_t n, ldy, row0;
};

// kGated: the block's rows are 2 of W (gate) and the same 2 of w2 (up). From the kernel's
// parameters only, so it may run before pdl_wait().
template <class TY, bool kGated>
__device__ __forceinline__ BlockRows<TY> block_rows(const Products<TY>& P) {
  constexpr int kCols = kGated ? kRows / 2 : kRows;
  // This block's product: fixed indices only, so the table stays in parameter space.
  const bf16_t* w = P.w[0];
  const bf16_t* w2 = P.w2[0];
  BlockRows<TY> b;
  b.y = P.y[0];
  int64_t ldw = P.ldw[0], first = 0;
  b.n = P.n[0], b.ldy = P.ldy[0];
#pragma unroll
  for (int p = 1; p < kMaxProducts; ++p)
    if (p < P.count && blockIdx.x >= P.first_block[p]) {
      w = P.w[p], w2 = P.w2[p], b.y = P.y[p];
      b.n = P.n[p], ldw = P.ldw[p], b.ldy = P.ldy[p], first = P.first_block[p];
    }
  b.row0 = (static_cast<int64_t>(blockIdx.x) - first) * kCols;
  // Rows past n (the last block) read the last row again; their sums are never written.
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = b.row0 + r % kCols;
    b.w[r] = (kGated && r >= kCols ? w2 : w) + (row < b.n ? row : b.n - 1) * ldw;
  }
  return b;
}

// kEpilogue kGeluGate: the block writes gelu_tanh(gate)·up for its 2 columns; kGeluMul:
// gelu_tanh(sum)·b; each product and the gelu rounded to TY first as separate ops round. prefetch:
// the block's weight rows start streaming into L2 before pdl_wait(), so under programmatic
// dependent launch they load while the previous kernel ends.
template <int M, class TY, Epilogue kEpilogue>
__global__ void __launch_bounds__(kWarps * 32, kEpilogue == Epilogue::kLinearNorms ? kNormsMinBlocks : 1)
    gemv_kernel(const bf16_t* __restrict__ x, int64_t ldx, const Products<TY> P, int64_t k, float alpha, float beta,
                bool prefetch, const NormsAfter after) {
  pdl_begin_after([&] {
    if (!prefetch) return;
    const BlockRows<TY> b = block_rows<TY, kEpilogue == Epilogue::kGeluGate>(P);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (threadIdx.x == r * 32) prefetch_l2(b.w[r], static_cast<unsigned>(k * sizeof(bf16_t)));
  });
  constexpr bool kGated = kEpilogue == Epilogue::kGeluGate;
  constexpr int kCols = kGated ? kRows / 2 : kRows;  // output columns per block
  __shared__ float partial[kWarps][M * kRows];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const BlockRows<TY> b = block_rows<TY, kGated>(P);
  TY* y = b.y;
  const int64_t n = b.n, ldy = b.ldy, row0 = b.row0;

  float acc[M][kRows];
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[i][r] = 0.f;

#pragma unroll 2
  for (int64_t k0 = (static_cast<int64_t>(warp) * 32 + lane) * kPerLane; k0 < k; k0 += kStride) {
    float wv[kRows][kPerLane];
#pragma unroll
    for (int r = 0; r < kRows; ++r) load8(b.w[r] + k0, wv[r]);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float xv[kPerLane];
      load8(x + i * ldx + k0, xv);
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc[i][r] = fmaf(xv[e], wv[r][e], acc[i][r]);
    }
  }

#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float v = warp_reduce(acc[i][r], SumOp{});
      if (lane == 0) partial[warp][i * kRows + r] = v;
    }
  __syncthreads();
  const auto total = [&](int i, int r) {
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) s += partial[v][i * kRows + r];
    return s;
  };
  for (int t = threadIdx.x; t < M * kCols; t += blockDim.x) {
    const int i = t / kCols, r = t % kCols;
    if (row0 + r >= n) continue;
    TY* out = y + i * ldy + row0 + r;
    if constexpr (kGated) {
      const float gate = to_f32(from_f32<TY>(total(i, r))), up = to_f32(from_f32<TY>(total(i, r + kCols)));
      *out = from_f32<TY>(gelu_value(gate) * up);
    } else if constexpr (kEpilogue == Epilogue::kGeluMul) {
      const float gelu = to_f32(from_f32<TY>(gelu_value(to_f32(from_f32<TY>(total(i, r))))));
      *out = from_f32<TY>(gelu * to_f32(P.b[i * ldy + row0 + r]));
    } else {
      float value = alpha * total(i, r);
      if (beta != 0.f) value = fmaf(beta, to_f32(*out), value);
      *out = from_f32<TY>(value);
    }
  }
  if constexpr (kEpilogue == Epilogue::kLinearNorms) {
    // The norms read whole rows of y: the last block to finish makes them, so no kernel follows.
    static_assert(M <= kNormsMaxRows, "one row");
    if (g4::cuda::arrive_last(after.counter, gridDim.x)) {
      __shared__ float smem[32];
      add_rmsnorm_norms_row<bf16_t, kPerLane, kNormPacks, false, true>(after.residual, y, after.w, after.h, after.norms,
                                                                      NormedPair<bf16_t>{}, 0, n, after.eps,
                                                                      after.scale, smem);
    }
  }
}

template <class TY, Epilogue kEpilogue>
void launch(int64_t m, int64_t k, const bf16_t* x, int64_t ldx, Products<TY> P, float alpha, float beta,
            NormsAfter after = {}) {
  constexpr int64_t cols = kEpilogue == Epilogue::kGeluGate ? kRows / 2 : kRows;
  int64_t blocks = 0;
  for (int p = 0; p < P.count; ++p) {
    P.first_block[p] = blocks;
    blocks += (P.n[p] + cols - 1) / cols;
  }
  P.first_block[P.count] = blocks;
  G4_CHECK(blocks <= 0x7fffffff, "gemv: ", blocks, " blocks of output columns exceed one grid");
  if (blocks == 0) return;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  // Prefetching pays only when the block can start before the previous kernel ends.
  const bool prefetch = g4::pdl_enabled();
#define G4_GEMV_CASE(M)                                                                                             \
  case M:                                                                                                             \
    launch_pdl(gemv_kernel<M, TY, kEpilogue>, grid, block, 0, x, ldx, P, k, alpha, beta, prefetch, after);          \
    break;
  if constexpr (kEpilogue == Epilogue::kLinearNorms) {
    after.counter = g4::cuda::arrival_counters(1);
    switch (m) {
      G4_GEMV_CASE(1)
      default: G4_FAIL("gemv_add_rmsnorm_norms: ", m, " rows (at most ", kNormsMaxRows, ")");
    }
  } else {
    switch (m) {
      G4_GEMV_CASE(1)
      G4_GEMV_CASE(2)
      G4_GEMV_CASE(3)
      G4_GEMV_CASE(4)
      G4_GEMV_CASE(5)
      G4_GEMV_CASE(6)
      G4_GEMV_CASE(7)
      G4_GEMV_CASE(8)
      default: G4_FAIL("gemv: ", m, " rows (1 to ", kGemvMaxRows, ")");
    }
  }
#undef G4_GEMV_CASE
}

bool aligned_rows(const void* p, int64_t ld) { return aligned16(p) && ld % kPerLane == 0; }

}  // namespace

bool gemv_fits(int64_t m, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw, DType ab_dtype,
               DType y_dtype) {
  return m >= 1 && m <= kGemvMaxRows && k > 0 && k % kPerLane == 0 && ab_dtype == DType::BF16 &&
         (y_dtype == DType::BF16 || y_dtype == DType::F32) && aligned_rows(x, ldx) && aligned_rows(w, ldw);
}

void gemv_rowmajor(int64_t m, int64_t n, int64_t k, float alpha, const void* x, int64_t ldx, const void* w,
                   int64_t ldw, float beta, void* y, int64_t ldy, DType y_dtype) {
  G4_CHECK(gemv_fits(m, k, x, ldx, w, ldw, DType::BF16, y_dtype), "gemv: [", m, ", ", k, "] x [", n, ", ", k,
           "]ᵀ -> ", dtype_name(y_dtype), " does not fit (1-", kGemvMaxRows,
           " rows, k a multiple of 8, 16-byte aligned rows, bf16 in, bf16 or f32 out)");
  G4_CHECK(ldy >= n, "gemv: output row stride ", ldy, " < ", n);
  const auto* px = static_cast<const bf16_t*>(x);
  const auto one = [&](auto* out) {
    using TY = std::remove_pointer_t<decltype(out)>;
    Products<TY> P;
    P.w[0] = static_cast<const bf16_t*>(w), P.y[0] = out, P.n[0] = n, P.ldw[0] = ldw, P.ldy[0] = ldy, P.count = 1;
    launch<TY, Epilogue::kLinear>(m, k, px, ldx, P, alpha, beta);
  };
  if (y_dtype == DType::F32)
    one(static_cast<float*>(y));
  else
    one(static_cast<bf16_t*>(y));
}

void gemv_many(int64_t m, int64_t k, const void* x, int64_t ldx, const std::vector<GemvProduct>& products) {
  G4_CHECK(!products.empty() && static_cast<int>(products.size()) <= kMaxProducts, "gemv_many: ", products.size(),
           " products (1 to ", kMaxProducts, ")");
  Products<bf16_t> P;
  for (const GemvProduct& g : products) {
    G4_CHECK(gemv_fits(m, k, x, ldx, g.w, g.ldw, DType::BF16, DType::BF16), "gemv_many: [", m, ", ", k, "] x [",
             g.n, ", ", k, "]ᵀ does not fit (1-", kGemvMaxRows, " rows, k a multiple of 8, 16-byte aligned rows, bf16)");
    G4_CHECK(g.ldy >= g.n, "gemv_many: output row stride ", g.ldy, " < ", g.n);
    P.w[P.count] = static_cast<const bf16_t*>(g.w);
    P.y[P.count] = static_cast<bf16_t*>(g.y);
    P.n[P.count] = g.n, P.ldw[P.count] = g.ldw, P.ldy[P.count] = g.ldy;
    ++P.count;
  }
  launch<bf16_t, Epilogue::kLinear>(m, k, static_cast<const bf16_t*>(x), ldx, P, 1.0f, 0.0f);
}

void gemv_gelu_gate(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w_gate,
                    const void* w_up, int64_t ldw, void* y, int64_t ldy) {
  G4_CHECK(gemv_fits(m, k, x, ldx, w_gate, ldw, DType::BF16, DType::BF16) &&
               gemv_fits(m, k, x, ldx, w_up, ldw, DType::BF16, DType::BF16),
           "gemv_gelu_gate: [", m, ", ", k, "] x 2 x [", n, ", ", k, "]ᵀ does not fit (1-", kGemvMaxRows,
           " rows, k a multiple of 8, 16-byte aligned rows, bf16)");
  G4_CHECK(ldy >= n, "gemv_gelu_gate: output row stride ", ldy, " < ", n);
  Products<bf16_t> P;
  P.w[0] = static_cast<const bf16_t*>(w_gate), P.w2[0] = static_cast<const bf16_t*>(w_up);
  P.y[0] = static_cast<bf16_t*>(y), P.n[0] = n, P.ldw[0] = ldw, P.ldy[0] = ldy, P.count = 1;
  launch<bf16_t, Epilogue::kGeluGate>(m, k, static_cast<const bf16_t*>(x), ldx, P, 1.0f, 0.0f);
}

void gemv_gelu_mul(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw,
                   const void* b, void* y, int64_t ldy) {
  G4_CHECK(gemv_fits(m, k, x, ldx, w, ldw, DType::BF16, DType::BF16), "gemv_gelu_mul: [", m, ", ", k, "] x [", n,
           ", ", k, "]ᵀ does not fit (1-", kGemvMaxRows, " rows, k a multiple of 8, 16-byte aligned rows, bf16)");
  G4_CHECK(ldy >= n, "gemv_gelu_mul: output row stride ", ldy, " < ", n);
  Products<bf16_t> P;
  P.w[0] = static_cast<const bf16_t*>(w), P.b = static_cast<const bf16_t*>(b);
  P.y[0] = static_cast<bf16_t*>(y), P.n[0] = n, P.ldw[0] = ldw, P.ldy[0] = ldy, P.count = 1;
  launch<bf16_t, Epilogue::kGeluMul>(m, k, static_cast<const bf16_t*>(x), ldx, P, 1.0f, 0.0f);
}

bool gemv_norms_fit(int64_t m, int64_t n) {
  return m >= 1 && m <= kNormsMaxRows && n > 0 && n % kPerLane == 0 && n / kPerLane <= kWarps * 32 * kNormPacks;
}

void gemv_add_rmsnorm_norms(int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx, const void* w, int64_t ldw,
                            void* y, const void* residual, const void* norm_w, void* h,
                            const std::vector<GemvNorm>& norms, float eps, float scale) {
  G4_CHECK(gemv_fits(m, k, x, ldx, w, ldw, DType::BF16, DType::BF16), "gemv_add_rmsnorm_norms: [", m, ", ", k, "] x [",
           n, ", ", k, "]ᵀ does not fit (1-", kGemvMaxRows, " rows, k a multiple of 8, 16-byte aligned rows, bf16)");
  G4_CHECK(gemv_norms_fit(m, n), "gemv_add_rmsnorm_norms: ", m, " rows of ", n, " elements (at most ", kNormsMaxRows,
           " rows, a multiple of 8 elements, at most ", kWarps * 32 * kNormPacks * kPerLane, ")");
  G4_CHECK(norms.size() <= 3, "gemv_add_rmsnorm_norms: at most 3 norms, got ", norms.size());
  Products<bf16_t> P;
  P.w[0] = static_cast<const bf16_t*>(w), P.y[0] = static_cast<bf16_t*>(y), P.n[0] = n, P.ldw[0] = ldw, P.ldy[0] = n;
  P.count = 1;
  NormsAfter after;
  after.residual = static_cast<const bf16_t*>(residual);
  after.w = static_cast<const bf16_t*>(norm_w);
  after.h = static_cast<bf16_t*>(h);
  after.norms.count = static_cast<int>(norms.size());
  for (size_t i = 0; i < norms.size(); ++i) {
    after.norms.w[i] = static_cast<const bf16_t*>(norms[i].w);
    after.norms.y[i] = static_cast<bf16_t*>(norms[i].y);
    after.norms.scale[i] = norms[i].scale;
  }
  after.eps = eps;
  after.scale = scale;
  launch<bf16_t, Epilogue::kLinearNorms>(m, k, static_cast<const bf16_t*>(x), ldx, P, 1.0f, 0.0f, after);
}

bool gemv_preferred(int64_t m, int64_t n, int64_t k) {
  // -1: the measured default; 0: never; 1: whenever the product fits.
  static const int mode = env_int("G4_DECODE_GEMV", -1, 0, 1, "the measured default");
  if (mode >= 0) return mode == 1;
  constexpr int64_t kLayerWeight = int64_t{16} << 20;
  return m <= 2 || (m <= 4 && n * k <= kLayerWeight);
}

}  // namespace g4::ops::cuda

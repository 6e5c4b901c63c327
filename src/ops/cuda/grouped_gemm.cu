// Grouped expert GEMMs with device-side offsets (see grouped_gemm.h).
//
// One persistent kernel per product. Each CTA reads the E+1 row offsets, turns them into a tile
// count per expert and its prefix sums in shared memory, then walks the flat tile list with a
// stride of the grid: tile t belongs to the expert whose prefix range holds it. A tile is 128 x 128
// of the output; its K dimension streams through four 32 KB stages of 64-wide slices.
//
// Warp specialisation: warpgroup 2 is the producer (one thread issues the TMA loads of a stage and
// waits for the consumers to release it); warpgroups 0 and 1 each compute 64 rows of the tile
// with wgmma m64n128k16, keeping one stage's products in flight while the next is issued, and
// write their accumulators straight from registers. The producer runs ahead into the next tile
// while the consumers store the current one.
//
// The operand layouts differ per product and are all read as the tensors lie in memory:
//   forward     A = xs rows, K-major (a 128-row box)       B = w_e [Kd, Nd], N-major (two 64-wide boxes)
//   input grad  A = dy rows, K-major                        B = w_e [Kd, Nd] read as [N=Kd, K=Nd], K-major
//   weight grad A = xs rows read as [K=rows, M=Kd], M-major B = dy rows [K=rows, N=Nd], N-major
// Rows past an expert's range belong to the next expert: the row products do not store them, and
// the weight gradient, whose reduction runs over rows, zeroes them in shared memory first.
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/grouped_tiles.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace g4::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

using grouped::kBK;
using grouped::kBM;
using grouped::kBN;
using grouped::kForward;
using grouped::Kind;
using grouped::kInputGrad;
using grouped::kWeightGrad;
using grouped::Tile;
constexpr int kStages = 4;
constexpr int kConsumerGroups = 2, kGroupThreads = 128;
constexpr int kConsumerThreads = kConsumerGroups * kGroupThreads;
constexpr int kThreads = kConsumerThreads + kGroupThreads;  // + the producer warpgroup
constexpr uint32_t kBoxBytes = 64 * 64 * 2;                 // a 64 x 64 bf16 box
constexpr uint32_t kOperandBytes = 2 * kBoxBytes;           // A or B of one stage
constexpr uint32_t kStageBytes = 2 * kOperandBytes;
constexpr int kMaxExperts = 4096;
constexpr size_t kSmemBytes =
    1024 + kStages * size_t{kStageBytes} + 2 * kStages * sizeof(uint64_t) + 2 * (kMaxExperts + 1) * sizeof(int);
static_assert(kSmemBytes <= 227 * 1024, "grouped GEMM shared memory");

struct Params {
  const int64_t* offsets;  // [experts + 1]
  int experts;
  grouped::Sizes sizes;
  void* c;  // forward / input grad: bf16 [rows, n]; weight grad: [experts, m, n], f32 or bf16
  bool c_f32;
  float beta;
};

struct Maps {
  CUtensorMap a, b;
};

template <Kind kKind>
__device__ __forceinline__ void issue_loads(const Maps& maps, const Tile& tl, int step, unsigned char* stage,
                                            uint64_t* full) {
  unsigned char* a = stage;
  unsigned char* b = stage + kOperandBytes;
  const int k0 = step * kBK;
  tma::mbar_expect_bytes(full, kStageBytes);
  if constexpr (kKind == kWeightGrad) {
    const int r = tl.row0 + k0;
    tma::load_2d(a, maps.a, tl.m0, r, full);
    tma::load_2d(a + kBoxBytes, maps.a, tl.m0 + 64, r, full);
    tma::load_2d(b, maps.b, tl.n0, r, full);
    tma::load_2d(b + kBoxBytes, maps.b, tl.n0 + 64, r, full);
  } else {
    tma::load_2d(a, maps.a, k0, tl.row0 + tl.m0, full);  // 128 rows x 64 columns
    if constexpr (kKind == kForward) {
      tma::load_3d(b, maps.b, tl.n0, k0, tl.expert, full);  // w_e rows k0.., columns n0..n0+63
      tma::load_3d(b + kBoxBytes, maps.b, tl.n0 + 64, k0, tl.expert, full);
    } else {
      tma::load_3d(b, maps.b, k0, tl.n0, tl.expert, full);  // w_e rows n0..n0+127, columns k0..
    }
  }
}

// Zeroes rows [valid, 64) of the stage's four 64-row boxes (the rows of the next expert), then makes
// the writes visible to the tensor cores' reads. Whole 128-byte rows: the swizzle only permutes
// 16-byte chunks within a row.
__device__ __forceinline__ void zero_foreign_rows(unsigned char* stage, int valid) {
  const int rows = 64 - valid, per_box = rows * 8;  // 16-byte chunks per box
  for (int i = threadIdx.x; i < 4 * per_box; i += kConsumerThreads) {
    const int box = i / per_box, j = i % per_box;
    reinterpret_cast<uint4*>(stage + box * kBoxBytes + valid * 128)[j] = make_uint4(0, 0, 0, 0);
  }
  wgmma::fence_smem_stores();
  asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads) : "memory");
}

template <Kind kKind>
__device__ __forceinline__ void mma_stage(float (&acc)[64], unsigned char* stage, int group) {
  unsigned char* a = stage;
  unsigned char* b = stage + kOperandBytes;
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    if constexpr (kKind == kWeightGrad) {
      const uint64_t da = wgmma::sw128_mn_desc(a + group * kBoxBytes, kBoxBytes);
      const uint64_t db = wgmma::sw128_mn_desc(b, kBoxBytes);
      wgmma::mma_m64n128k16_t<1, 1>(acc, wgmma::advance(da, 2048 * kk), wgmma::advance(db, 2048 * kk));
    } else if constexpr (kKind == kForward) {
      const uint64_t da = wgmma::sw128_desc(a + group * 64 * 128);
      const uint64_t db = wgmma::sw128_mn_desc(b, kBoxBytes);
      wgmma::mma_m64n128k16_t<0, 1>(acc, wgmma::advance(da, 32 * kk), wgmma::advance(db, 2048 * kk));
    } else {
      const uint64_t da = wgmma::sw128_desc(a + group * 64 * 128);
      const uint64_t db = wgmma::sw128_desc(b);
      wgmma::mma_m64n128k16_t<0, 0>(acc, wgmma::advance(da, 32 * kk), wgmma::advance(db, 32 * kk));
    }
  }
}

// The accumulators of this thread (rows r and r + 8 of its warp's 16, two columns per n8 tile).
template <Kind kKind>
__device__ __forceinline__ void store_tile(const float (&acc)[64], const Tile& tl, const Params& p, int group) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % kGroupThreads) / 32;
  const int r_base = tl.m0 + group * 64 + warp * 16 + lane / 4, c_base = tl.n0 + 2 * (lane % 4);
  const int m_limit = kKind == kWeightGrad ? p.sizes.m : tl.rows;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r_base + 8 * h;
    if (r >= m_limit) continue;
    if constexpr (kKind == kWeightGrad) {
      const long long row = (static_cast<long long>(tl.expert) * p.sizes.m + r) * p.sizes.n;
      // Every old value of the row is loaded before the first store: the compiler cannot move a
      // load above a store that may alias it, so a load-add-store per pair would wait one memory
      // round trip per pair, and with a weight gradient's short reduction (an expert's ~256 rows)
      // that wait was most of the kernel.
      float old[kBN / 4];
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int c = c_base + 8 * j;
        float2 o = make_float2(0.f, 0.f);
        if (p.beta != 0.f && c < p.sizes.n) {
          if (p.c_f32)
            o = *reinterpret_cast<const float2*>(static_cast<const float*>(p.c) + row + c);
          else
            o = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(static_cast<const bf16*>(p.c) + row + c));
        }
        old[2 * j] = o.x;
        old[2 * j + 1] = o.y;
      }
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int c = c_base + 8 * j;
        if (c >= p.sizes.n) continue;
        const float v0 = acc[4 * j + 2 * h] + p.beta * old[2 * j],
                    v1 = acc[4 * j + 2 * h + 1] + p.beta * old[2 * j + 1];
        if (p.c_f32)
          *reinterpret_cast<float2*>(static_cast<float*>(p.c) + row + c) = make_float2(v0, v1);
        else
          *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(p.c) + row + c) = __floats2bfloat162_rn(v0, v1);
      }
    } else {
      const long long row = static_cast<long long>(tl.row0 + r) * p.sizes.n;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int c = c_base + 8 * j;
        if (c < p.sizes.n)
          *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(p.c) + row + c) =
              __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      }
    }
  }
}

template <Kind kKind>
__global__ void __launch_bounds__(kThreads, 1) grouped_gemm_kernel(const __grid_constant__ Maps maps, Params p) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  int* row_off = reinterpret_cast<int*>(empty + kStages);  // [experts + 1]
  int* start = row_off + p.experts + 1;                    // [experts + 1]: first tile of each expert
  const int tid = threadIdx.x, E = p.experts;

  for (int e = tid; e <= E; e += kThreads) row_off[e] = static_cast<int>(p.offsets[e]);
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      tma::mbar_init(&full[s], 1);
      tma::mbar_init(&empty[s], kConsumerThreads);
    }
    tma::fence_mbar_init();
  }
  __syncthreads();
  if (tid < 32) {  // exclusive prefix sum of the tile counts: each lane a contiguous run of experts
    const int per = grouped::ceil_div(E, 32), lo = tid * per, hi = min(lo + per, E);
    int sum = 0;
    for (int e = lo; e < hi; ++e) sum += grouped::tiles_of(kKind, row_off[e + 1] - row_off[e], p.sizes);
    int incl = sum;
    for (int off = 1; off < 32; off *= 2) {
      const int o = __shfl_up_sync(0xffffffffu, incl, off);
      if (tid >= off) incl += o;
    }
    int run = incl - sum;
    for (int e = lo; e < hi; ++e) {
      start[e] = run;
      run += grouped::tiles_of(kKind, row_off[e + 1] - row_off[e], p.sizes);
    }
    if (tid == 31) start[E] = incl;
  }
  __syncthreads();
  const int total = start[E];
  // Broadcast from lane 0, so that the compiler sees a warp-uniform role (wgmma in a path it cannot
  // prove uniform gets serialised).
  const int group = __shfl_sync(0xffffffffu, tid / kGroupThreads, 0);

  if (group == kConsumerGroups) {  // the producer
    if (tid != kConsumerThreads) return;
    int it = 0;
    for (int t = blockIdx.x; t < total; t += gridDim.x) {
      const Tile tl = grouped::locate(kKind, t, start, row_off, E, p.sizes);
      for (int step = 0; step < tl.k_steps; ++step, ++it) {
        const int s = it % kStages;
        tma::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
        issue_loads<kKind>(maps, tl, step, smem + s * kStageBytes, &full[s]);
      }
    }
    return;
  }

  int it = 0;
  for (int t = blockIdx.x; t < total; t += gridDim.x) {
    const Tile tl = grouped::locate(kKind, t, start, row_off, E, p.sizes);
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    int prev = -1;
    for (int step = 0; step < tl.k_steps; ++step, ++it) {
      const int s = it % kStages;
      unsigned char* stage = smem + s * kStageBytes;
      tma::mbar_wait(&full[s], (it / kStages) & 1);
      if constexpr (kKind == kWeightGrad) {
        const int valid = tl.rows - step * kBK;
        if (valid < kBK) zero_foreign_rows(stage, valid);
      }
      wgmma::fence();
      mma_stage<kKind>(acc, stage, group);
      wgmma::commit();
      wgmma::wait<1>();  // the previous stage's products are done: release its buffers
      if (prev >= 0) tma::mbar_arrive(&empty[prev]);
      prev = s;
    }
    wgmma::wait<0>();
    if (prev >= 0) tma::mbar_arrive(&empty[prev]);
    store_tile<kKind>(acc, tl, p, group);
  }
}

// [rows, cols] bf16 rows in boxes of 64 columns x box_rows rows.
CUtensorMap rows_map(const Tensor& t, uint32_t box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(t.size(1)), static_cast<cuuint64_t>(t.size(0))};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(t.size(1) * 2)};
  const cuuint32_t box[2] = {64, box_rows};
  return tma::bf16_map(t.raw(), 2, dims, strides, box);
}

// w [E, Kd, Nd] as (Nd, Kd, E) in boxes of 64 columns x box_rows rows of one expert, so that a box
// never reaches into the next expert's weights.
CUtensorMap weights_map(const Tensor& w, uint32_t box_rows) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(w.size(2)), static_cast<cuuint64_t>(w.size(1)),
                              static_cast<cuuint64_t>(w.size(0))};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(w.size(2) * 2),
                                 static_cast<cuuint64_t>(w.size(1) * w.size(2) * 2)};
  const cuuint32_t box[3] = {64, box_rows, 1};
  return tma::bf16_map(w.raw(), 3, dims, strides, box);
}

template <Kind kKind>
void launch(const Maps& maps, const Params& p, int64_t max_tiles) {
  g4::cuda::allow_dynamic_smem<grouped_gemm_kernel<kKind>>(kSmemBytes);
  if (max_tiles <= 0) return;
  const int64_t sms = g4::cuda::device_sm_count();
  const auto grid = static_cast<unsigned>(max_tiles < sms ? max_tiles : sms);
  grouped_gemm_kernel<kKind><<<grid, kThreads, kSmemBytes, g4::cuda::stream()>>>(maps, p);
  G4_CUDA_CHECK_LAUNCH();
}

int64_t ceil_div64(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

Params params(const Tensor& offsets, int64_t experts, int64_t m, int64_t n, int64_t k, Tensor& c, float beta) {
  G4_CHECK(offsets.device() == Device::CUDA && offsets.dtype() == DType::I64 && offsets.numel() == experts + 1,
           "grouped GEMM: offsets ", offsets.describe(), " must be i64[", experts + 1, "] on the GPU");
  const grouped::Sizes sizes{static_cast<int>(m), static_cast<int>(n), static_cast<int>(k)};
  return {offsets.data<int64_t>(), static_cast<int>(experts), sizes, c.raw(), c.dtype() == DType::F32, beta};
}

}  // namespace

bool device_grouped_gemm_supported(const Tensor& rows, const Tensor& w) {
  return rows.dtype() == DType::BF16 && w.dtype() == DType::BF16 && w.dim() == 3 && rows.dim() == 2 && w.size(0) >= 1 &&
         w.size(0) <= kMaxExperts && w.size(1) % 8 == 0 && w.size(2) % 8 == 0 && rows.size(1) % 8 == 0 &&
         rows.size(0) <= INT_MAX && w.size(1) <= INT_MAX && w.size(2) <= INT_MAX && aligned16(rows.raw()) &&
         aligned16(w.raw());
}

void device_grouped_forward(const Tensor& xs, const Tensor& w, const Tensor& offsets, Tensor& y) {
  const char* op = "grouped_matmul";
  G4_CHECK(device_grouped_gemm_supported(xs, w) && aligned16(y.raw()), op,
           ": the device grouped GEMM does not take xs ", xs.describe(), " and w ", w.describe());
  const int64_t E = w.size(0), kd = w.size(1), nd = w.size(2);
  const Maps maps{rows_map(xs, kBM), weights_map(w, 64)};
  launch<kForward>(maps, params(offsets, E, 0, nd, kd, y, 0.f),
                   (ceil_div64(xs.size(0), kBM) + E) * ceil_div64(nd, kBN));
}

void device_grouped_input_grad(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dxs) {
  const char* op = "grouped_matmul_backward";
  G4_CHECK(device_grouped_gemm_supported(dy, w) && aligned16(dxs.raw()), op,
           ": the device grouped GEMM does not take dy ", dy.describe(), " and w ", w.describe());
  const int64_t E = w.size(0), kd = w.size(1), nd = w.size(2);
  const Maps maps{rows_map(dy, kBM), weights_map(w, kBN)};
  launch<kInputGrad>(maps, params(offsets, E, 0, kd, nd, dxs, 0.f),
                     (ceil_div64(dy.size(0), kBM) + E) * ceil_div64(kd, kBN));
}

void device_grouped_weight_grad(const Tensor& xs, const Tensor& dy, const Tensor& offsets, Tensor& dw, float beta) {
  const char* op = "grouped_matmul_backward";
  G4_CHECK(xs.dtype() == DType::BF16 && dy.dtype() == DType::BF16 && aligned16(xs.raw()) && aligned16(dy.raw()) &&
               aligned16(dw.raw()) && xs.size(1) % 8 == 0 && dy.size(1) % 8 == 0 && xs.size(0) <= INT_MAX &&
               (dw.dtype() == DType::F32 || dw.dtype() == DType::BF16),
           op, ": the device grouped GEMM does not take xs ", xs.describe(), ", dy ", dy.describe(), " and dw ",
           dw.describe());
  const int64_t E = dw.size(0), kd = dw.size(1), nd = dw.size(2);
  const Maps maps{rows_map(xs, 64), rows_map(dy, 64)};
  launch<kWeightGrad>(maps, params(offsets, E, kd, nd, 0, dw, beta), E * ceil_div64(kd, kBM) * ceil_div64(nd, kBN));
}

}  // namespace g4::ops::cuda

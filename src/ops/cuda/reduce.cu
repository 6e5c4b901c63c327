// Deterministic column sums of [rows, d] matrices (sum_rows, rmsnorm's weight gradient): blocks of
// 32 columns x 8 row lanes each sum an interleaved share of the rows into one partial row; a second
// kernel adds the partial rows per column in a fixed order. No atomics, so results repeat exactly.
#include <algorithm>

#include "ops/cuda/common.cuh"

namespace g4::ops::cuda {

namespace {

constexpr int kCols = 32;  // columns per block (one warp wide: coalesced row segments)
constexpr int kLanes = 8;  // row lanes per block

template <class T>
__global__ void column_partial_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                      const float* __restrict__ row_scale, int64_t rows, int64_t d,
                                      float* __restrict__ partial) {
  __shared__ float sm[kLanes][kCols + 1];
  const int64_t col = int64_t{blockIdx.x} * kCols + threadIdx.x;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  float acc = 0.f;
  if (col < d) {
    for (int64_t r = split * kLanes + threadIdx.y; r < rows; r += splits * kLanes) {
      float v = to_f32(a[r * d + col]);
      if (b) v *= to_f32(b[r * d + col]);
      if (row_scale) v *= row_scale[r];
      acc += v;
    }
  }
  sm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    float s = sm[0][threadIdx.x];
#pragma unroll
    for (int k = 1; k < kLanes; ++k) s += sm[k][threadIdx.x];
    partial[split * d + col] = s;
  }
}

template <class TO>
__global__ void column_final_kernel(const float* __restrict__ partial, int64_t splits, int64_t d,
                                    TO* __restrict__ out) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < d; j += int64_t{gridDim.x} * blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < splits; ++k) s += partial[k * d + j];
    out[j] = from_f32<TO>(s);
  }
}

}  // namespace

void column_reduce(const Tensor& a, const Tensor* b, const float* row_scale, int64_t rows, int64_t d, Tensor& out) {
  const char* op = "column_reduce";
  G4_CHECK(a.numel() == rows * d && out.numel() == d, op, ": a ", a.describe(), " is not [", rows, ", ", d,
           "] or out ", out.describe(), " has not ", d, " elements");
  if (d == 0) return;
  const int64_t col_blocks = (d + kCols - 1) / kCols;
  G4_CHECK(col_blocks <= 2147483647LL, op, ": ", d, " columns are too many");
  // Enough row splits to give every SM a few blocks; each split still sums >= 8 rows per lane
  // where there are that many.
  const int64_t want = (int64_t{g4::cuda::device_sm_count()} * 4 + col_blocks - 1) / col_blocks;
  const int64_t max_splits = std::max<int64_t>(1, std::min<int64_t>(512, rows / (kLanes * 8)));
  const int64_t splits = std::max<int64_t>(1, std::min(want, max_splits));
  Tensor partial = Tensor::empty({splits, d}, DType::F32, Device::CUDA);
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
  const dim3 block(kCols, kLanes);
  cudaStream_t st = g4::cuda::stream();
  float* pp = partial.data<float>();
  if (a.dtype() == DType::F32) {
    column_partial_kernel<float><<<grid, block, 0, st>>>(
        static_cast<const float*>(a.raw()), b ? static_cast<const float*>(b->raw()) : nullptr, row_scale, rows, d, pp);
  } else {
    column_partial_kernel<bf16_t><<<grid, block, 0, st>>>(
        static_cast<const bf16_t*>(a.raw()), b ? static_cast<const bf16_t*>(b->raw()) : nullptr, row_scale, rows, d,
        pp);
  }
  G4_CUDA_CHECK_LAUNCH();
  const unsigned fgrid = grid_for(d, 256);
  if (out.dtype() == DType::F32) {
    column_final_kernel<float><<<fgrid, 256, 0, st>>>(pp, splits, d, static_cast<float*>(out.raw()));
  } else {
    column_final_kernel<bf16_t><<<fgrid, 256, 0, st>>>(pp, splits, d, static_cast<bf16_t*>(out.raw()));
  }
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace g4::ops::cuda

// diffusion::step_stats on the GPU: one streaming kernel over chunks of every row (processed
// logits written, and per chunk the first maximum, the softmax sums behind the entropy and the
// exponential race's winner), then one thread per row merges its chunks in order; R results of
// each kind come back in one copy. The race draws its noise with generate/sampling_math.h as the
// CPU reference does, so both pick the same token unless two keys tie within rounding.
#include "diffusion/cuda/step_stats.h"

#include <cuda_bf16.h>

#include <cmath>

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "generate/sampling_math.h"

namespace g4::diffusion::cuda {

namespace {

constexpr int kChunk = 4096;  // tokens per block (a multiple of 4: race groups never straddle)
constexpr int kThreads = 256;

// A chunk's summary. (m, s, w): the max, sum e^(x - m) and sum (x - m) e^(x - m) of its processed
// logits; arg: the first index of m; (key, win): the race's best key and its token.
struct Part {
  float m, s, w;
  int32_t arg;
  float key;
  int32_t win;
};

__device__ inline void merge_soft(float& m, float& s, float& w, int32_t& arg, float m2, float s2, float w2, int32_t arg2) {
  if (m2 == -INFINITY) return;  // an empty part (a thread past the chunk's end)
  if (m == -INFINITY) {
    m = m2, s = s2, w = w2, arg = arg2;
    return;
  }
  if (m2 > m || (m2 == m && arg2 < arg)) {
    const float a = __expf(m - m2);
    w = a * (w + (m - m2) * s) + w2;
    s = a * s + s2;
    m = m2;
    arg = arg2;
  } else {
    const float a = __expf(m2 - m);
    w = w + a * (w2 + (m2 - m) * s2);
    s = s + a * s2;
  }
}

__device__ inline void merge_race(float& key, int32_t& win, float key2, int32_t win2) {
  if (key2 > key || (key2 == key && win2 < win)) {
    key = key2;
    win = win2;
  }
}

template <class Out>
__device__ inline void store(Out* p, float x);
template <>
__device__ inline void store<float>(float* p, float x) { *p = x; }
template <>
__device__ inline void store<__nv_bfloat16>(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

template <class Out>
__global__ void chunk_kernel(const float* __restrict__ logits, Out* __restrict__ processed, int64_t V, float temperature,
                             const uint64_t* __restrict__ seeds, const uint64_t* __restrict__ draws, int chunks,
                             Part* __restrict__ parts) {
  g4::cuda::pdl_begin();
  const int64_t row = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, V);
  const float* z = logits + row * V;
  Out* p = processed + row * V;
  float m = -INFINITY, s = 0.f, w = 0.f, key = -INFINITY;
  int32_t arg = INT32_MAX, win = INT32_MAX;
  for (int64_t g = begin / 4 + threadIdx.x; g * 4 < end; g += kThreads) {
    float ln_e[4] = {0.f, 0.f, 0.f, 0.f};
    if (seeds) gen::detail::race_noise(seeds[row], draws[row], static_cast<uint64_t>(g), ln_e);
    for (int i = 0; i < 4 && g * 4 + i < end; ++i) {
      const int64_t v = g * 4 + i;
      const float x = __fdiv_rn(z[v], temperature);
      store(p + v, x);
      merge_soft(m, s, w, arg, x, 1.f, 0.f, static_cast<int32_t>(v));
      if (seeds) merge_race(key, win, __fsub_rn(x, ln_e[i]), static_cast<int32_t>(v));
    }
  }
  __shared__ Part shared[kThreads];
  shared[threadIdx.x] = Part{m, s, w, arg, key, win};
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      Part& a = shared[threadIdx.x];
      const Part& b = shared[threadIdx.x + stride];
      merge_soft(a.m, a.s, a.w, a.arg, b.m, b.s, b.w, b.arg);
      merge_race(a.key, a.win, b.key, b.win);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) parts[row * chunks + blockIdx.x] = shared[0];
}

struct RowOut {
  int32_t argmax, sample;
  float entropy;
  int32_t pad;
};

__global__ void finish_kernel(const Part* __restrict__ parts, int chunks, int64_t rows, RowOut* __restrict__ out) {
  g4::cuda::pdl_begin();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  Part a = parts[row * chunks];
  for (int c = 1; c < chunks; ++c) {
    const Part& b = parts[row * chunks + c];
    merge_soft(a.m, a.s, a.w, a.arg, b.m, b.s, b.w, b.arg);
    merge_race(a.key, a.win, b.key, b.win);
  }
  out[row] = RowOut{a.arg, a.win, logf(a.s) - a.w / a.s, 0};
}

}  // namespace

StepStats step_stats(const Tensor& logits, float temperature, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& draws, DType processed_dtype) {
  const int64_t R = logits.size(0), V = logits.size(1);
  const int chunks = static_cast<int>((V + kChunk - 1) / kChunk);
  StepStats out;
  out.processed = Tensor::empty({R, V}, processed_dtype, Device::CUDA);
  if (R == 0) return out;
  Tensor parts = Tensor::empty({R * chunks * static_cast<int64_t>(sizeof(Part))}, DType::U8, Device::CUDA);
  Tensor results = Tensor::empty({R * static_cast<int64_t>(sizeof(RowOut))}, DType::U8, Device::CUDA);
  Tensor keys;
  const uint64_t *seed_ptr = nullptr, *draw_ptr = nullptr;
  if (!seeds.empty()) {
    std::vector<int64_t> host(2 * static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      host[r] = static_cast<int64_t>(seeds[r]);
      host[R + r] = static_cast<int64_t>(draws[r]);
    }
    keys = Tensor::from_vector(host, {2 * R}).to(Device::CUDA);
    seed_ptr = reinterpret_cast<const uint64_t*>(keys.data<int64_t>());
    draw_ptr = seed_ptr + R;
  }
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(R));
  Part* part_ptr = reinterpret_cast<Part*>(parts.data<uint8_t>());
  if (processed_dtype == DType::BF16)
    g4::cuda::launch_pdl(chunk_kernel<__nv_bfloat16>, grid, kThreads, 0, logits.data<float>(),
                         reinterpret_cast<__nv_bfloat16*>(out.processed.data<bf16>()), V, temperature, seed_ptr,
                         draw_ptr, chunks, part_ptr);
  else
    g4::cuda::launch_pdl(chunk_kernel<float>, grid, kThreads, 0, logits.data<float>(), out.processed.data<float>(), V,
                         temperature, seed_ptr, draw_ptr, chunks, part_ptr);
  RowOut* res_ptr = reinterpret_cast<RowOut*>(results.data<uint8_t>());
  g4::cuda::launch_pdl(finish_kernel, static_cast<unsigned>((R + 127) / 128), 128, 0, part_ptr, chunks, R, res_ptr);
  const Tensor host = results.to(Device::CPU);
  const RowOut* h = reinterpret_cast<const RowOut*>(host.data<uint8_t>());
  out.argmax.resize(static_cast<size_t>(R));
  out.entropy.resize(static_cast<size_t>(R));
  if (!seeds.empty()) out.sample.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    out.argmax[r] = h[r].argmax;
    out.entropy[r] = h[r].entropy;
    if (!seeds.empty()) out.sample[r] = h[r].sample;
  }
  return out;
}

}  // namespace g4::diffusion::cuda

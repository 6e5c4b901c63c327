// Embedding on the GPU: the lookup copies rows in the widest unit (16, 8, 4 or 2 bytes) that the
// row size and both base addresses allow, so it works for any weight dtype; the gradient adds dy's
// rows into an f32 [V, D] buffer with fp32 atomics (one CTA per id row).
#include "ops/cuda/embedding.h"

#include <cuda_bf16.h>

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "ops/cuda/index_errors.h"
#include "ops/cuda/vec_io.cuh"

namespace g4::ops::cuda {

namespace {

constexpr int kThreads = 128;

// One CTA per id (grid-stride); a bad id writes zeros and is reported.
template <class U>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const U* __restrict__ w, const int64_t* __restrict__ ids, int64_t n, int64_t vocab,
                       int64_t units, U* __restrict__ out, IndexErrorSink sink) {
  g4::cuda::pdl_begin();
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t id = ids[i];
    const bool ok = id >= 0 && id < vocab;
    if (!ok && threadIdx.x == 0) report_index_error(sink, id, i, vocab);
    const U* src = w + (ok ? id : 0) * units;
    U* dst = out + i * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = ok ? src[u] : U{};
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    scatter_add_kernel(const T* __restrict__ dy, const int64_t* __restrict__ ids, int64_t n, int64_t vocab, int64_t d,
                       int64_t padding_idx, float* __restrict__ dw, IndexErrorSink sink) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t id = ids[i];
    if (id < 0 || id >= vocab) {  // checked before padding_idx: -1 means "no padding", not a valid id
      if (threadIdx.x == 0) report_index_error(sink, id, i, vocab);
      continue;
    }
    if (id == padding_idx) continue;
    const T* src = dy + i * d;
    float* dst = dw + id * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) atomicAdd(dst + c, to_float(src[c]));
  }
}

// ids (any device, i32/i64) as a flat i64 tensor on the GPU.
Tensor gpu_ids(const Tensor& ids) {
  const Tensor g = ids.device() == Device::CUDA ? ids : ids.to(Device::CUDA);
  return (g.dtype() == DType::I64 ? g : g.to(DType::I64)).reshape({-1});
}

unsigned row_grid(int64_t n) { return static_cast<unsigned>(n < 2147483647LL ? n : 2147483647LL); }

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  raise_index_errors(/*wait=*/false);
  const Tensor flat = gpu_ids(ids);
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(out_shape, weight.dtype(), Device::CUDA);
  const int64_t n = flat.numel(), vocab = weight.size(0);
  const size_t row_bytes = static_cast<size_t>(weight.size(1)) * dtype_size(weight.dtype());
  if (n == 0 || row_bytes == 0) return out;
  const auto fits = [&](size_t unit) {
    return row_bytes % unit == 0 && reinterpret_cast<uintptr_t>(weight.raw()) % unit == 0 &&
           reinterpret_cast<uintptr_t>(out.raw()) % unit == 0;
  };
  const IndexErrorSink sink = index_error_sink(IndexOp::Embedding);
  auto launch = [&](auto unit_tag) {
    using U = decltype(unit_tag);
    g4::cuda::launch_pdl(gather_rows_kernel<U>, row_grid(n), kThreads, 0, static_cast<const U*>(weight.raw()),
               flat.data<int64_t>(), n, vocab, static_cast<int64_t>(row_bytes / sizeof(U)), static_cast<U*>(out.raw()),
               sink);
  };
  if (fits(16))
    launch(uint4{});
  else if (fits(8))
    launch(uint2{});
  else if (fits(4))
    launch(uint32_t{});
  else if (fits(2))
    launch(uint16_t{});
  else
    launch(uint8_t{});
  return out;
}

void embedding_backward_accumulate(Tensor& dw, const Tensor& dy, const Tensor& ids, int64_t padding_idx) {
  raise_index_errors(/*wait=*/false);
  const Tensor flat = gpu_ids(ids);
  const int64_t n = flat.numel(), d = dw.size(1);
  if (n == 0 || d == 0) return;
  const IndexErrorSink sink = index_error_sink(IndexOp::EmbeddingBackward);
  auto launch = [&](auto* p) {
    scatter_add_kernel<<<row_grid(n), kThreads, 0, g4::cuda::stream()>>>(
        p, flat.data<int64_t>(), n, dw.size(0), d, padding_idx, dw.data<float>(), sink);
    G4_CUDA_CHECK_LAUNCH();
  };
  if (dy.dtype() == DType::BF16)
    launch(static_cast<const __nv_bfloat16*>(dy.raw()));
  else
    launch(static_cast<const float*>(dy.raw()));
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t vocab, int64_t padding_idx) {
  Tensor dw = Tensor::zeros({vocab, dy.dim() > 0 ? dy.size(-1) : 0}, DType::F32, Device::CUDA);
  embedding_backward_accumulate(dw, dy, ids, padding_idx);
  return dw;
}

}  // namespace g4::ops::cuda

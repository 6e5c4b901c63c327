// narrow / narrow_backward / concat on the GPU. Like the CPU versions they only move bytes (any
// dtype): a tensor is seen as [outer, dim, inner] and each op is a pitched copy of `outer` rows of
// len * inner bytes, done by one kernel in the widest unit (16, 8, 4, 2 or 1 bytes) that divides
// every address, pitch and width involved.
#include <vector>

#include "ops/cuda/common.cuh"
#include "ops/cuda/elementwise.h"

namespace g4::ops::cuda {

namespace {

template <class U>
__global__ void pitched_copy_kernel(const U* __restrict__ src, int64_t src_pitch, U* __restrict__ dst,
                                    int64_t dst_pitch, int64_t width, int64_t rows) {
  pdl_begin();
  const int64_t total = rows * width;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const bool small = total <= 0xffffffffLL;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    int64_t r, k;
    if (small) {
      const uint32_t ui = static_cast<uint32_t>(i), uw = static_cast<uint32_t>(width);
      r = ui / uw;
      k = ui - static_cast<uint32_t>(r) * uw;
    } else {
      r = i / width;
      k = i - r * width;
    }
    dst[r * dst_pitch + k] = src[r * src_pitch + k];
  }
}

// Copies `rows` rows of `width` bytes from src (rows `src_pitch` bytes apart) to dst (rows
// `dst_pitch` bytes apart), on the compute stream.
void pitched_copy(const char* src, int64_t src_pitch, char* dst, int64_t dst_pitch, int64_t width, int64_t rows) {
  if (rows == 0 || width == 0) return;
  const uint64_t bits = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                        static_cast<uint64_t>(src_pitch) | static_cast<uint64_t>(dst_pitch) |
                        static_cast<uint64_t>(width);
  auto launch = [&](auto tag) {
    using U = decltype(tag);
    constexpr int64_t u = sizeof(U);
    const int64_t w = width / u;
    launch_pdl(pitched_copy_kernel<U>, grid_for(rows * w, 256), 256, 0, reinterpret_cast<const U*>(src), src_pitch / u,
               reinterpret_cast<U*>(dst), dst_pitch / u, w, rows);
  };
  if ((bits & 15u) == 0) {
    launch(uint4{});
  } else if ((bits & 7u) == 0) {
    launch(uint2{});
  } else if ((bits & 3u) == 0) {
    launch(uint32_t{});
  } else if ((bits & 1u) == 0) {
    launch(uint16_t{});
  } else {
    launch(uint8_t{});
  }
}


}  // namespace

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len) {
  const int64_t d = normalize_dim("narrow", x.shape(), dim);
  Shape out_shape = x.shape();
  out_shape[d] = len;
  Tensor y = Tensor::empty(out_shape, x.dtype(), Device::CUDA);
  const int64_t inner_bytes = inner_size(x.shape(), d) * static_cast<int64_t>(dtype_size(x.dtype()));
  pitched_copy(static_cast<const char*>(x.raw()) + start * inner_bytes, x.size(d) * inner_bytes,
               static_cast<char*>(y.raw()), len * inner_bytes, len * inner_bytes, outer_size(x.shape(), d));
  return y;
}

Tensor narrow_backward(const Tensor& dy, const Shape& input_shape, int64_t dim, int64_t start) {
  const int64_t d = normalize_dim("narrow_backward", input_shape, dim);
  Tensor dx = Tensor::zeros(input_shape, dy.dtype(), Device::CUDA);
  const int64_t inner_bytes = inner_size(input_shape, d) * static_cast<int64_t>(dtype_size(dy.dtype()));
  const int64_t len = dy.size(d);
  pitched_copy(static_cast<const char*>(dy.raw()), len * inner_bytes,
               static_cast<char*>(dx.raw()) + start * inner_bytes, input_shape[d] * inner_bytes, len * inner_bytes,
               outer_size(input_shape, d));
  return dx;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  const int64_t d = normalize_dim("concat", xs[0].shape(), dim);
  Shape out_shape = xs[0].shape();
  out_shape[d] = 0;
  for (const Tensor& x : xs) out_shape[d] += x.size(d);
  Tensor y = Tensor::empty(out_shape, xs[0].dtype(), Device::CUDA);
  const int64_t inner_bytes = inner_size(out_shape, d) * static_cast<int64_t>(dtype_size(y.dtype()));
  const int64_t outer = outer_size(out_shape, d);
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    const int64_t len = x.size(d);
    pitched_copy(static_cast<const char*>(x.raw()), len * inner_bytes,
                 static_cast<char*>(y.raw()) + offset * inner_bytes, out_shape[d] * inner_bytes, len * inner_bytes,
                 outer);
    offset += len;
  }
  return y;
}

}  // namespace g4::ops::cuda

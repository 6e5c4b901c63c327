// Elementwise dtype conversion of GPU tensors (Tensor::to on the device).
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "core/cuda/pack.cuh"
#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "core/device_memory.h"

namespace g4::detail {

namespace {

template <class To, class From>
__device__ To convert_one(From x) {
  if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return static_cast<To>(__bfloat162float(x));
  } else {
    return static_cast<To>(x);
  }
}

template <class To, class From>
__global__ void convert_kernel(To* dst, const From* src, int64_t n) {
  cuda::pdl_begin();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = convert_one<To>(src[i]);
  }
}

// Four elements a thread, where both pointers are aligned to a Pack of four (4 to 32 bytes): a
// conversion (the logits to f32, probabilities to bf16) is bound by memory, and one element a thread
// left it at a fraction of the bandwidth. The last n % 4 elements one a thread.
template <class To, class From>
__global__ void convert4_kernel(To* dst, const From* src, int64_t n) {
  cuda::pdl_begin();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x, first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t quads = n / 4;
  for (int64_t i = first; i < quads; i += stride) {
    const cuda::Pack<From, 4> in = cuda::load_pack<From, 4>(src + 4 * i);
    cuda::Pack<To, 4> out;
#pragma unroll
    for (int e = 0; e < 4; ++e) out.v[e] = convert_one<To>(in.v[e]);
    cuda::store_pack<To, 4>(dst + 4 * i, out);
  }
  for (int64_t i = quads * 4 + first; i < n; i += stride) dst[i] = convert_one<To>(src[i]);
}

template <class T>
bool aligned_four(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(cuda::Pack<T, 4>) == 0;
}

template <class From>
void convert_from(const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  const auto* s = static_cast<const From*>(src.raw());
  auto launch = [&](auto* d) {
    using To = std::remove_pointer_t<decltype(d)>;
    if (n >= 4 && aligned_four<From>(s) && aligned_four<To>(d)) {
      const int64_t quads = n / 4;
      const unsigned blocks = cuda::blocks_for(quads < (int64_t{1} << 22) ? quads : (int64_t{1} << 22), 256);
      cuda::launch_pdl(convert4_kernel<To, From>, blocks, 256, 0, d, s, n);
      return;
    }
    const unsigned blocks = cuda::blocks_for(n < (int64_t{1} << 24) ? n : (int64_t{1} << 24), 256);
    cuda::launch_pdl(convert_kernel<To, From>, blocks, 256, 0, d, s, n);
  };
  switch (dst.dtype()) {
    case DType::F32: launch(static_cast<float*>(dst.raw())); break;
    case DType::F64: launch(static_cast<double*>(dst.raw())); break;
    case DType::BF16: launch(static_cast<__nv_bfloat16*>(dst.raw())); break;
    case DType::I32: launch(static_cast<int32_t*>(dst.raw())); break;
    case DType::I64: launch(static_cast<int64_t*>(dst.raw())); break;
    case DType::U8:
    case DType::Bool: launch(static_cast<uint8_t*>(dst.raw())); break;
    default: G4_FAIL("to(): cannot convert ", src.describe(), " to ", dtype_name(dst.dtype()), " on the GPU");
  }
}

}  // namespace

void device_convert(const Tensor& src, Tensor& dst) {
  G4_CHECK(src.device() == Device::CUDA && dst.device() == Device::CUDA && src.shape() == dst.shape(),
           "device_convert: ", src.describe(), " -> ", dst.describe());
  if (src.numel() == 0) return;
  switch (src.dtype()) {
    case DType::F32: convert_from<float>(src, dst); break;
    case DType::F64: convert_from<double>(src, dst); break;
    case DType::BF16: convert_from<__nv_bfloat16>(src, dst); break;
    case DType::I32: convert_from<int32_t>(src, dst); break;
    case DType::I64: convert_from<int64_t>(src, dst); break;
    case DType::U8:
    case DType::Bool: convert_from<uint8_t>(src, dst); break;
    default: G4_FAIL("to(): cannot convert ", src.describe(), " on the GPU");
  }
}

}  // namespace g4::detail

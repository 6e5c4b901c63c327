// Philox normal draws on the GPU: the draws core/random.cpp makes on the CPU (equal up to the last
// bit of the two math libraries' logf/cosf).
#include <cuda_bf16.h>

#include <type_traits>

#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "core/philox.h"

namespace g4::detail {

namespace {
template <class T>
__global__ void philox_normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t stream, double std) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float v = static_cast<float>(std * philox_normal(seed, stream, static_cast<uint64_t>(i)));
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      out[i] = __float2bfloat16_rn(v);
    } else {
      out[i] = static_cast<T>(v);
    }
  }
}
}  // namespace

void device_fill_philox_normal(Tensor& t, uint64_t seed, uint64_t stream, double std) {
  const int64_t n = t.numel();
  if (n == 0) return;
  const unsigned blocks = cuda::blocks_for(n < (int64_t{1} << 22) ? n : (int64_t{1} << 22), 256);
  switch (t.dtype()) {
    case DType::F32:
      philox_normal_kernel<<<blocks, 256, 0, cuda::stream()>>>(static_cast<float*>(t.raw()), n, seed, stream, std);
      break;
    case DType::F64:
      philox_normal_kernel<<<blocks, 256, 0, cuda::stream()>>>(static_cast<double*>(t.raw()), n, seed, stream, std);
      break;
    case DType::BF16:
      philox_normal_kernel<<<blocks, 256, 0, cuda::stream()>>>(static_cast<__nv_bfloat16*>(t.raw()), n, seed,
                                                                stream, std);
      break;
    default: G4_FAIL("fill_philox_normal: ", t.describe());
  }
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace g4::detail

// Datasheet dense bf16 tensor-core peaks, the denominator NVIDIA and NeMo use for MFU, looked up by
// the name the CUDA runtime reports (cudaDeviceProp::name). Sparsity-doubled figures are halved.
#pragma once
#include <string>

namespace g4 {

// TFLOP/s of dense bf16 for the GPU of that name, or 0 when it is not in the table (the caller
// then asks for the figure explicitly).
double datasheet_dense_bf16_tflops(const std::string& device_name);

}  // namespace g4

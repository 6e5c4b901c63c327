#include "core/cuda/runtime.h"

#include <mutex>

#include "core/error.h"

namespace g4::cuda {

namespace {
struct Runtime {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  int sms = 0;
};

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

Runtime& runtime() {
  // Created on first use and never destroyed: CUDA objects must not be released after the driver
  // has shut down at process exit.
  static Runtime* rt = [] {
    auto* r = new Runtime;
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    G4_CHECK(err == cudaSuccess && count > 0, "no CUDA device is available (", cudaGetErrorString(err), ")");
    G4_CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
    G4_CUDA_CHECK(cudaDeviceGetAttribute(&r->sms, cudaDevAttrMultiProcessorCount, 0));
    G4_CUBLAS_CHECK(cublasLtCreate(&r->lt));
    G4_CUDA_CHECK(cudaMalloc(&r->workspace, kWorkspaceBytes));
    return r;
  }();
  return *rt;
}
}  // namespace

cudaStream_t stream() { return runtime().stream; }
int device_sm_count() { return runtime().sms; }
cublasLtHandle_t blaslt_handle() { return runtime().lt; }
void* blaslt_workspace() { return runtime().workspace; }
size_t blaslt_workspace_bytes() { return kWorkspaceBytes; }

void fail(cudaError_t err, const char* expr, const char* file, int line) {
  G4_FAIL("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", expr, " at ", file, ":",
          line);
}

void fail_cublas(int status, const char* expr, const char* file, int line) {
  G4_FAIL("cuBLAS error ", cublasGetStatusString(static_cast<cublasStatus_t>(status)), " (", status, ") in ", expr,
          " at ", file, ":", line);
}

}  // namespace g4::cuda

// The CUDA runtime state one process uses: its compute stream, the cuBLASLt handle and workspace,
// and the error check every CUDA call goes through. Only CUDA code (.cu files, cuda/ folders)
// includes this header.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace g4::cuda {

// Makes GPU `device` this process's GPU: the runtime below (stream, cuBLASLt handle, workspace) is
// created on it, and so is every allocation (each creates the runtime first). Call it before the
// first CUDA work, e.g. a rank taking its GPU at start-up; once the runtime exists, asking for
// another GPU is an error (its stream and memory live on the first one). Without a call the
// runtime takes the device current when it is created (0 unless someone set another).
// CUDA's current device is per host thread; each thread that first reaches the runtime (its
// stream, handle, workspace or an allocation) is switched to the runtime's GPU.
void select_device(int device);
// The GPU the runtime runs on (creates the runtime).
int device();

// Every kernel, copy and library call of g4 goes on this one stream, so work is ordered without
// host synchronisation and freed memory can be reused at once by the next allocation. The one
// exception is g4::run_side_by_side (core/device_memory.h): while its side work is being queued,
// stream() is a second stream (SideStreamScope below).
cudaStream_t stream();
int device_sm_count();
cublasLtHandle_t blaslt_handle();
// A workspace for cuBLASLt (32 MiB, allocated once): the side stream has its own, as the two
// streams' library calls may run at the same time.
void* blaslt_workspace();
size_t blaslt_workspace_bytes();

// While alive on a thread, stream() and blaslt_workspace() there are the side stream's, which
// starts after everything queued on the compute stream so far. join() makes the compute stream
// wait for what the side stream was given (before any later compute-stream work). Not nested.
class SideStreamScope {
 public:
  SideStreamScope();
  ~SideStreamScope();  // back to the compute stream (without join: run_side_by_side joins after its main work)
  SideStreamScope(const SideStreamScope&) = delete;
  SideStreamScope& operator=(const SideStreamScope&) = delete;
  // The compute stream waits for the side stream's work queued so far; callable after the scope ends.
  static void join();
};

[[noreturn]] void fail(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void fail_cublas(int status, const char* expr, const char* file, int line);
// A kernel launch that failed (or found an earlier kernel's fault), naming the kernel.
[[noreturn]] void fail_launch(cudaError_t err, const void* kernel);

// Grid size for a 1-D loop over n elements with `threads` threads per block.
inline unsigned blocks_for(long long n, int threads) {
  long long b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 2147483647LL) b = 2147483647LL;
  return static_cast<unsigned>(b);
}

}  // namespace g4::cuda

#define G4_CUDA_CHECK(expr)                                                      \
  do {                                                                           \
    cudaError_t g4_err_ = (expr);                                                \
    if (g4_err_ != cudaSuccess) ::g4::cuda::fail(g4_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define G4_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                          \
    cublasStatus_t g4_st_ = (expr);                                                             \
    if (g4_st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::g4::cuda::fail_cublas(static_cast<int>(g4_st_), #expr, __FILE__, __LINE__);             \
  } while (0)

// Checks the last kernel launch (launch errors only; faults surface at the next synchronisation).
#define G4_CUDA_CHECK_LAUNCH() G4_CUDA_CHECK(cudaGetLastError())

namespace g4::cuda {

// Lets `Kernel` take `bytes` of dynamic shared memory (past the default 48 KB). The attribute holds
// for the kernel and the process, so it is set once, before the first launch.
template <auto Kernel>
void allow_dynamic_smem(size_t bytes) {
  static const bool set = [bytes] {
    G4_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    return true;
  }();
  (void)set;
}

}  // namespace g4::cuda

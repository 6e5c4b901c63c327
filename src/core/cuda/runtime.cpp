#include "core/cuda/runtime.h"

#include <cxxabi.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "core/error.h"

namespace g4::cuda {

namespace {
struct Runtime {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  int sms = 0;
};

// The side stream of run_side_by_side, with its own cuBLASLt workspace and the two events that
// fork it from and join it to the compute stream; created at the first fork.
struct Side {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  cudaEvent_t forked = nullptr, joined = nullptr;
};

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// select_device() and the runtime's creation agree under this lock: a GPU is chosen either before
// the runtime exists (and the runtime is created on it) or it must be the runtime's.
std::mutex selection_mutex;
int selected = -1;               // the GPU select_device() chose, -1: none
Runtime* created = nullptr;      // the runtime once it exists

int visible_devices() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  G4_CHECK(err == cudaSuccess && count > 0, "no CUDA device is available (", cudaGetErrorString(err), ")");
  return count;
}

Runtime& runtime() {
  // Created on first use and never destroyed: CUDA objects must not be released after the driver
  // has shut down at process exit.
  static Runtime* rt = [] {
    std::lock_guard<std::mutex> lock(selection_mutex);
    auto* r = new Runtime;
    visible_devices();
    if (selected >= 0) G4_CUDA_CHECK(cudaSetDevice(selected));
    G4_CUDA_CHECK(cudaGetDevice(&r->device));
    G4_CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
    G4_CUDA_CHECK(cudaDeviceGetAttribute(&r->sms, cudaDevAttrMultiProcessorCount, r->device));
    G4_CUBLAS_CHECK(cublasLtCreate(&r->lt));
    G4_CUDA_CHECK(cudaMalloc(&r->workspace, kWorkspaceBytes));
    created = r;
    return r;
  }();
  // CUDA's current device is per host thread and starts at 0: every thread that reaches g4's
  // stream, handle or allocator first makes the runtime's GPU its own.
  thread_local bool on_runtime_device = false;
  if (!on_runtime_device) {
    G4_CUDA_CHECK(cudaSetDevice(rt->device));
    on_runtime_device = true;
  }
  return *rt;
}
}  // namespace

void select_device(int device) {
  const int count = visible_devices();
  G4_CHECK(device >= 0 && device < count, "select_device: GPU ", device, " does not exist: this process sees ", count,
           " GPU", count == 1 ? "" : "s", " (CUDA_VISIBLE_DEVICES limits them)");
  std::lock_guard<std::mutex> lock(selection_mutex);
  if (created) {
    G4_CHECK(created->device == device, "select_device: asked for GPU ", device, ", but the CUDA runtime already ",
             "runs on GPU ", created->device, " (its stream and memory live there): choose the GPU before the first "
             "CUDA work");
    return;
  }
  G4_CUDA_CHECK(cudaSetDevice(device));
  selected = device;
}

int device() { return runtime().device; }

namespace {
Side& side() {
  static Side* s = [] {
    (void)runtime();  // on the runtime's GPU
    auto* r = new Side;  // never destroyed, as the runtime
    G4_CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
    G4_CUDA_CHECK(cudaMalloc(&r->workspace, kWorkspaceBytes));
    G4_CUDA_CHECK(cudaEventCreateWithFlags(&r->forked, cudaEventDisableTiming));
    G4_CUDA_CHECK(cudaEventCreateWithFlags(&r->joined, cudaEventDisableTiming));
    return r;
  }();
  return *s;
}
thread_local bool on_side = false;  // inside a SideStreamScope on this thread
}  // namespace

cudaStream_t stream() { return on_side ? side().stream : runtime().stream; }
int device_sm_count() { return runtime().sms; }
cublasLtHandle_t blaslt_handle() { return runtime().lt; }
void* blaslt_workspace() { return on_side ? side().workspace : runtime().workspace; }
size_t blaslt_workspace_bytes() { return kWorkspaceBytes; }

SideStreamScope::SideStreamScope() {
  G4_CHECK(!on_side, "SideStreamScope: side work cannot open another side stream");
  Side& s = side();
  // The fork: the side stream starts after the compute stream's work so far (in a capture, a graph edge).
  G4_CUDA_CHECK(cudaEventRecord(s.forked, runtime().stream));
  G4_CUDA_CHECK(cudaStreamWaitEvent(s.stream, s.forked, 0));
  on_side = true;
}

SideStreamScope::~SideStreamScope() { on_side = false; }

void SideStreamScope::join() {
  Side& s = side();
  G4_CUDA_CHECK(cudaEventRecord(s.joined, s.stream));
  G4_CUDA_CHECK(cudaStreamWaitEvent(runtime().stream, s.joined, 0));
}

void fail(cudaError_t err, const char* expr, const char* file, int line) {
  G4_FAIL("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", expr, " at ", file, ":",
          line);
}

void fail_launch(cudaError_t err, const void* kernel) {
  const char* mangled = nullptr;
  std::string name = "?";
  if (cudaFuncGetName(&mangled, kernel) == cudaSuccess && mangled != nullptr) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    name = status == 0 && demangled != nullptr ? demangled : mangled;
    std::free(demangled);
  }
  G4_FAIL("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") launching kernel ", name);
}

void fail_cublas(int status, const char* expr, const char* file, int line) {
  G4_FAIL("cuBLAS error ", cublasGetStatusString(static_cast<cublasStatus_t>(status)), " (", status, ") in ", expr,
          " at ", file, ":", line);
}

}  // namespace g4::cuda

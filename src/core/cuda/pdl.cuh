// Programmatic dependent launch (PDL, Hopper and later): a kernel queued behind another may be
// scheduled while that one is still running, so its launch latency and set-up overlap the
// previous kernel's last wave. A decode step is hundreds of small kernels whose GPU time is
// mostly such latency (docs/performance.md, "Generation"), which is what this is for.
//
// The contract, which makes every PDL launch safe whatever ran before it:
//   - a kernel launched by launch_pdl() calls pdl_begin() (or pdl_wait()) before it touches global
//     memory in any way, and before any return. pdl_wait() returns once every kernel queued before
//     this one has completed and its writes are visible; without PDL it returns at once.
//     So the previous kernel's outputs are ready, and the buffers it still reads are not
//     overwritten (the allocator hands freed memory straight to the next kernel on the stream).
//   - before that wait a kernel may only compute from its parameters and issue L2 prefetches
//     (pdl_begin_after), which are hints: they change no value a load returns.
// tests/lint/pdl_kernels.py checks the first rule for every kernel passed to launch_pdl().
//
// pdl_begin() also lets the next kernel launch: its blocks may become resident and wait while
// this kernel's last blocks run. They can only take what the running kernel leaves free, because
// the next kernel is released once every block of this one has started.
//
// Off unless G4_PDL=1 (or g4::set_pdl_enabled(true), core/pdl.h): with it off, launch_pdl() is a
// plain launch and the wait instructions return at once.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "core/cuda/runtime.h"
#include "core/pdl.h"

namespace g4::cuda {

// kernel<<<grid, block, smem_bytes, stream()>>>(args...), with programmatic serialisation when
// pdl_enabled(). The kernel must keep the contract above.
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream();
  config.attrs = &attribute;
  config.numAttrs = g4::pdl_enabled() ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) fail_launch(err, reinterpret_cast<const void*>(kernel));
}

}  // namespace g4::cuda

#ifdef __CUDACC__
namespace g4::cuda {

// Waits for the kernels queued before this one (see the file comment).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream launch (its own pdl_wait() still waits for this one to end).
__device__ __forceinline__ void pdl_release_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The first statement of a kernel launched by launch_pdl().
__device__ __forceinline__ void pdl_begin() {
  pdl_wait();
  pdl_release_next();
}

// Starts bringing [p, p + bytes) into L2 (p and bytes multiples of 16; nothing when bytes is 0).
// A hint, legal before pdl_wait(): weights that no kernel of the step writes can stream in while
// the previous kernel finishes.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bytes != 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// pdl_begin() after `prefetch()`, which may only issue prefetch_l2() of memory no kernel of the
// step writes (weights), computed from the kernel's parameters: a kernel whose work is streaming
// weights starts reading them while the previous kernel ends.
template <class Prefetch>
__device__ __forceinline__ void pdl_begin_after(Prefetch&& prefetch) {
  prefetch();
  pdl_begin();
}

}  // namespace g4::cuda
#endif

// Hopper tensor-memory-accelerator (TMA) loads for the wgmma kernels: host helpers that describe a
// bf16 tensor as a TMA tensor map whose boxes land in shared memory in the SW128 layout of
// wgmma.cuh, and the device side: mbarriers that count the arriving bytes (or the consumers that
// released a buffer) and the bulk tensor loads.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/wgmma.cuh"

namespace g4::ops::cuda::tma {

// A bf16 tensor of `rank` dimensions (innermost first, `dims`), `strides` bytes apart for
// dimensions 1.. (multiples of 16), read in `box` boxes swizzled 128B (the innermost box extent is
// 64 elements: one 128-byte row) or, with CU_TENSOR_MAP_SWIZZLE_NONE, row-major (an innermost box
// extent of a multiple of 8 elements); elements outside `dims` read as zeros.
inline CUtensorMap bf16_map(const void* base, uint32_t rank, const cuuint64_t* dims, const cuuint64_t* strides,
                            const cuuint32_t* box, CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    G4_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    G4_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
             "tma: the driver has no cuTensorMapEncodeTiled (TMA needs a Hopper driver)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map{};
  const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<void*>(base), dims, strides, box,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  G4_CHECK(r == CUDA_SUCCESS, "tma: cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a rank-", rank,
           " bf16 tensor with innermost extent ", dims[0], " and a ", box[0], " x ", box[1], " box");
  return map;
}

// [B, S, heads, dim] bf16 at `base` as a 4-D map (dim, heads, S, B) with boxes of 64 columns x
// `box_rows` rows of one head, swizzled 128B; rows past S and columns past dim read as zeros.
inline CUtensorMap head_rows_map(const void* base, int64_t batch, int64_t seq, int64_t heads, int64_t dim,
                                 uint32_t box_rows) {
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(seq), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(dim * 2), static_cast<cuuint64_t>(heads * dim * 2),
                                 static_cast<cuuint64_t>(seq * heads * dim * 2)};
  const cuuint32_t box[4] = {64, 1, box_rows, 1};
  return bf16_map(base, 4, dims, strides, box);
}

// `arrivals` arrivals (one with the expected bytes, for TMA-filled buffers) complete a phase.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals = 1) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(wgmma::smem_addr(bar)), "r"(arrivals) : "memory");
}
// A plain arrival (a consumer releasing a buffer).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(wgmma::smem_addr(bar)) : "memory");
}
// Makes the initialisations visible to the TMA unit's completions.
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(wgmma::smem_addr(bar)), "r"(bytes)
               : "memory");
}
// Waits until the phase with this parity (0, 1, 0, ... for successive uses) has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(wgmma::smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// The box at (col, head, row, batch) of `map` into `dst`, completing its bytes on `bar`.
__device__ __forceinline__ void load(void* dst, const CUtensorMap& map, int col, int head, int row, int batch,
                                     uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(wgmma::smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(col), "r"(head), "r"(row), "r"(batch), "r"(wgmma::smem_addr(bar))
      : "memory");
}

// The same box into `dst` of every CTA of the cluster in `cta_mask`, completing its bytes on the
// mbarrier at `bar`'s offset in each of them.
__device__ __forceinline__ void load_multicast(void* dst, const CUtensorMap& map, int col, int head, int row, int batch,
                                               uint64_t* bar, uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(wgmma::smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(col), "r"(head), "r"(row), "r"(batch), "r"(wgmma::smem_addr(bar)),
      "h"(cta_mask)
      : "memory");
}

// This CTA's rank in its cluster.
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}

// An arrival on the mbarrier at `bar`'s offset in the shared memory of cluster CTA `cta`. The
// default release is at CTA scope: what it orders, a consumer's reads of a buffer, has completed
// (wgmma's wait) before it arrives, and the TMA writes that follow it are ordered by the barrier's
// phase. A release at cluster scope fenced every arrival (a quarter of the warps' stalls in the
// multicast forward, Nsight Compute on an H100).
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t cta) {
  asm volatile(
      "{\n"
      ".reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(wgmma::smem_addr(bar)),
      "r"(cta)
      : "memory");
}

// Every thread of every CTA of the cluster arrives, then waits for all the others.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// The box at (x, y) / (x, y, z) of a 2-D / 3-D map into `dst`, completing its bytes on `bar`.
__device__ __forceinline__ void load_2d(void* dst, const CUtensorMap& map, int x, int y, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(wgmma::smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(wgmma::smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void load_3d(void* dst, const CUtensorMap& map, int x, int y, int z, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(wgmma::smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(z), "r"(wgmma::smem_addr(bar))
      : "memory");
}

}  // namespace g4::ops::cuda::tma

// Hopper warpgroup MMA (wgmma) building blocks: shared-memory matrix descriptors for tiles stored
// K-major with the 128-byte swizzle, the fences wgmma needs, and the bf16 m64n128k16 product with
// an fp32 accumulator. A warpgroup is 4 consecutive warps (128 threads); each wgmma computes a
// 64 x 128 tile, warp w of the group owning rows [16w, 16w + 16).
//
// Tile layout ("SW128"): rows of 64 bf16 (128 bytes); the 16-byte chunk c of row r is stored at
// chunk c ^ (r % 8) of that row, and a tile starts on a 1024-byte boundary. One such tile holds a
// 64-wide K slice; the k16 steps inside it are 32 bytes apart.
//
// Accumulator layout of d[64] (g = lane / 4, c = lane % 4 within warp w of the group): d[4n + e]
// holds row 16w + g + 8 (e / 2), column 8n + 2c + (e % 2) — mma.sync's m16n8 C fragment,
// repeated for the 16 n8 tiles.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace g4::ops::cuda::wgmma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Descriptor of an SW128 K-major tile starting at `tile` (1024-byte aligned): 8-row groups are
// 1024 bytes apart (stride byte offset); the leading byte offset is unused for this layout.
__device__ __forceinline__ uint64_t sw128_desc(const void* tile) {
  const uint64_t addr = smem_addr(tile);
  return ((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// The same descriptor advanced by `bytes` along K (a multiple of 16, inside the 128-byte row).
__device__ __forceinline__ uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Orders register accesses to the accumulators before the wgmma that follow.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Makes this thread's ordinary stores to shared memory visible to the wgmma (and TMA) that read it
// after a barrier: those read through the async proxy.
__device__ __forceinline__ void fence_smem_stores() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Descriptor of an SW128 tile stored MN-major (M-major A, N-major B): 64-element rows along M or N,
// one row per K index, in 1024-byte atoms of 8 K rows; consecutive 64-wide M/N chunks are
// `chunk_bytes` apart (the leading byte offset), 8-row K groups 1024 bytes apart (the stride byte
// offset). A k16 step advances 16 rows: 2048 bytes, which keeps the swizzle phase.
__device__ __forceinline__ uint64_t sw128_mn_desc(const void* tile, uint32_t chunk_bytes) {
  const uint64_t addr = smem_addr(tile);
  return ((addr & 0x3FFFF) >> 4) | (uint64_t{(chunk_bytes >> 4) & 0x3FFF} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// d (64 x 128, fp32) += A (64 x 16) · B (16 x 128), bf16 operands in shared memory. kTransA /
// kTransB = 0: A / B stored K-major (the sw128_desc layout); 1: M-major A / N-major B (sw128_mn_desc).
template <int kTransA, int kTransB>
__device__ __forceinline__ void mma_m64n128k16_t(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63 "
      "}, "
      "%64, %65, p, 1, 1, %67, %68;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(1), "n"(kTransA), "n"(kTransB));
}

// d (64 x 128, fp32) += A (64 x 16) · Bᵀ with A and B (128 x 16) K-major bf16 in shared memory.
__device__ __forceinline__ void mma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  mma_m64n128k16_t<0, 0>(d, desc_a, desc_b);
}

// d (64 x 64, fp32) += A (64 x 16) · Bᵀ, A and B (64 x 16) K-major bf16 in shared memory (the
// sw128_desc layout). Accumulator layout as above, with 8 n8 tiles.
__device__ __forceinline__ void mma_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31 "
      "}, "
      "%32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}

// d (64 x 32, fp32) += A (64 x 16) · Bᵀ, A and B (32 x 16) K-major bf16 in shared memory. Accumulator
// layout as above, with 4 n8 tiles.
__device__ __forceinline__ void mma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15 "
      "}, "
      "%16, %17, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}

// Keeps the compiler from moving reads or writes of registers that an in-flight wgmma owns (its
// accumulators, or its A fragments) across this point: call after the wait that completes it.
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// The 128 accumulator registers of an m64n256 product: their placeholders %0..%127 in the
// instruction text, and their operands.
#define G4_WGMMA_N256_D_TEXT \
"%0, %1, %2, %3, %4, %5, %6, %7, " \
"%8, %9, %10, %11, %12, %13, %14, %15, " \
"%16, %17, %18, %19, %20, %21, %22, %23, " \
"%24, %25, %26, %27, %28, %29, %30, %31, " \
"%32, %33, %34, %35, %36, %37, %38, %39, " \
"%40, %41, %42, %43, %44, %45, %46, %47, " \
"%48, %49, %50, %51, %52, %53, %54, %55, " \
"%56, %57, %58, %59, %60, %61, %62, %63, " \
"%64, %65, %66, %67, %68, %69, %70, %71, " \
"%72, %73, %74, %75, %76, %77, %78, %79, " \
"%80, %81, %82, %83, %84, %85, %86, %87, " \
"%88, %89, %90, %91, %92, %93, %94, %95, " \
"%96, %97, %98, %99, %100, %101, %102, %103, " \
"%104, %105, %106, %107, %108, %109, %110, %111, " \
"%112, %113, %114, %115, %116, %117, %118, %119, " \
"%120, %121, %122, %123, %124, %125, %126, %127 "
#define G4_WGMMA_N256_D_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d (64 x 256, fp32) += A (64 x 16) · B (16 x 256) with A in registers (a[4]: mma.sync's m16n8k16 A
// fragment of the warp's 16 rows) and B N-major bf16 in shared memory (sw128_mn_desc). The registers
// of a must stay unchanged until the wgmma has completed (wait).
__device__ __forceinline__ void mma_m64n256k16_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{" G4_WGMMA_N256_D_TEXT "}, "
      "{%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"
      "}\n"
      : G4_WGMMA_N256_D_OPERANDS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// The same with A in shared memory too, K-major (the sw128_desc layout): a P tile written there by
// another warpgroup.
__device__ __forceinline__ void mma_m64n256k16_ss(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{" G4_WGMMA_N256_D_TEXT "}, "
      "%128, %129, p, 1, 1, 0, 1;\n"
      "}\n"
      : G4_WGMMA_N256_D_OPERANDS(d)
      : "l"(desc_a), "l"(desc_b), "r"(1));
}

#undef G4_WGMMA_N256_D_TEXT
#undef G4_WGMMA_N256_D_OPERANDS

}  // namespace g4::ops::cuda::wgmma

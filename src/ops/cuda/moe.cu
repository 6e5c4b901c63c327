// Mixture-of-experts blocks on the GPU. Everything is deterministic: no floating-point atomics, and
// reductions run in a fixed order, so two runs give the same bits.
#include "ops/cuda/moe.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>

#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/fused.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/router_topk.cuh"

namespace g4::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

// Weights may be f32 while the rows are bf16 (router weights kept in fp32).
__device__ __forceinline__ float load_weight(const void* w, bool w_f32, int64_t i) {
  return w_f32 ? static_cast<const float*>(w)[i] : __bfloat162float(static_cast<const bf16*>(w)[i]);
}

// Typed pointers for T = float or bf16 (Tensor::data knows no CUDA types); callers have checked the dtype.
template <class T>
const T* typed(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}
template <class T>
T* typed(Tensor& t) {
  return static_cast<T*>(t.raw());
}

// Calls fn(T{}) with T = float or bf16 for `t`'s dtype.
template <class Fn>
void dispatch(const char* op, const Tensor& t, Fn&& fn) {
  switch (t.dtype()) {
    case DType::F32: fn(float{}); break;
    case DType::BF16: fn(bf16{}); break;
    default: G4_FAIL(op, ": unsupported dtype ", t.describe(), " (the GPU op takes bf16 or f32)");
  }
}

void check_int_range(const char* op, const char* what, int64_t v) {
  G4_CHECK(v >= 0 && v <= INT_MAX, op, ": ", what, " = ", v, " exceeds the 32-bit range the GPU kernels use");
}

// ---------------------------------------------------------------------------------------------
// router_topk: one warp per token (topk::warp_topk, router_topk.cuh).

constexpr int kWarp = topk::kWarp;
constexpr int kTopkWarpsPerBlock = 8;
constexpr int kMaxTopkExperts = topk::kMaxExperts;

template <class T, bool kFromLogits>
__global__ void router_topk_kernel(const T* __restrict__ scores, int64_t tokens, int experts, int k,
                                   T* __restrict__ weights, int32_t* __restrict__ indices) {
  pdl_begin();
  const int lane = threadIdx.x % kWarp;
  const int64_t t = blockIdx.x * int64_t{kTopkWarpsPerBlock} + threadIdx.x / kWarp;
  if (t >= tokens) return;  // whole warps leave together
  float w;
  int id;
  topk::warp_topk<T, kFromLogits>(scores + t * experts, experts, k, &w, &id);
  if (lane < k) {
    weights[t * k + lane] = from_f32<T>(w);
    indices[t * k + lane] = id;
  }
}

// dL/dp_j = (dw_j - Σ_i dw_i w_i) / S for the chosen experts (w_i = p_i / S); one thread per token.
template <class T>
__global__ void router_topk_backward_kernel(const T* __restrict__ dweights, const T* __restrict__ probs,
                                            const int32_t* __restrict__ indices, int64_t tokens, int experts, int k,
                                            T* __restrict__ dprobs) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= tokens) return;
  const T* p = probs + t * experts;
  const int32_t* id = indices + t * k;
  float sum = 0.0f, dot = 0.0f;
  for (int j = 0; j < k; ++j)
    if (id[j] >= 0 && id[j] < experts) sum += to_f32(p[id[j]]);
  for (int j = 0; j < k; ++j)
    if (id[j] >= 0 && id[j] < experts) dot += to_f32(dweights[t * k + j]) * to_f32(p[id[j]]) / sum;
  for (int j = 0; j < k; ++j)
    if (id[j] >= 0 && id[j] < experts) {
      T& d = dprobs[t * experts + id[j]];
      d = from_f32<T>(to_f32(d) + (to_f32(dweights[t * k + j]) - dot) / sum);
    }
}

// ---------------------------------------------------------------------------------------------
// moe_plan: histogram -> exclusive scan -> stable scatter (one block per expert walks the
// assignments in r order, ranking its matches with warp ballots).

constexpr int kScatterThreads = 1024;

__global__ void plan_histogram_kernel(const int32_t* __restrict__ idx, int64_t n, int experts,
                                      unsigned* __restrict__ counts, unsigned long long* __restrict__ bad) {
  pdl_begin();
  extern __shared__ unsigned hist[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < n; r += int64_t{gridDim.x} * blockDim.x) {
    const int32_t e = idx[r];
    if (e >= 0 && e < experts) {
      atomicAdd(&hist[e], 1u);
    } else {
      atomicAdd(bad, 1ull);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    if (hist[e] != 0) atomicAdd(&counts[e], hist[e]);
}

// One block: offsets[0] = 0, offsets[e+1] = offsets[e] + counts[e].
__global__ void plan_offsets_kernel(const unsigned* __restrict__ counts, int experts, int64_t* __restrict__ offsets) {
  pdl_begin();
  extern __shared__ int64_t scan[];  // experts + 1
  for (int e = threadIdx.x; e < experts; e += blockDim.x) scan[e + 1] = counts[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    scan[0] = 0;
    for (int e = 0; e < experts; ++e) scan[e + 1] += scan[e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= experts; e += blockDim.x) offsets[e] = scan[e];
}

__global__ void plan_scatter_kernel(const int32_t* __restrict__ idx, int64_t n, const int64_t* __restrict__ offsets,
                                    int32_t* __restrict__ order, int32_t* __restrict__ row_of) {
  pdl_begin();
  __shared__ int warp_base[kScatterThreads / kWarp];
  __shared__ int chunk_total;
  const int e = blockIdx.x;
  const int64_t base = offsets[e], count = offsets[e + 1] - base;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  int64_t placed = 0;  // block-uniform
  for (int64_t start = 0; start < n && placed < count; start += kScatterThreads) {
    const int64_t r = start + threadIdx.x;
    const bool mine = r < n && idx[r] == e;
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_base[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {
      // Exclusive scan of the per-warp counts (kScatterThreads / 32 = 32 warps, one per lane).
      const int c = warp_base[lane];
      int incl = c;
      for (int off = 1; off < kWarp; off *= 2) {
        const int o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
      }
      warp_base[lane] = incl - c;
      if (lane == kWarp - 1) chunk_total = incl;
    }
    __syncthreads();
    if (mine) {
      const int64_t row = base + placed + warp_base[warp] + __popc(ballot & ((1u << lane) - 1u));
      order[row] = static_cast<int32_t>(r);
      row_of[r] = static_cast<int32_t>(row);
    }
    placed += chunk_total;
    __syncthreads();  // warp_base and chunk_total are rewritten by the next chunk
  }
}

// ---------------------------------------------------------------------------------------------
// Row gathers and combines. One block per output row; the fp32 sums run in k order.

template <class U>
__global__ void permute_rows_kernel(const U* __restrict__ x, U* __restrict__ xs, const int32_t* __restrict__ order,
                                    int k, int64_t units) {
  pdl_begin();
  const int64_t row = blockIdx.x;
  const int64_t src = order[row] / k;
  for (int64_t c = threadIdx.x; c < units; c += blockDim.x) xs[row * units + c] = x[src * units + c];
}

template <class T>
__global__ void permute_backward_kernel(const T* __restrict__ dxs, T* __restrict__ dx,
                                        const int32_t* __restrict__ row_of, int k, int64_t h) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc += to_f32(dxs[row_of[t * k + j] * h + c]);
    dx[t * h + c] = from_f32<T>(acc);
  }
}

// out[t, c] = sum over j in order of weights[t, j] * ys[row_of[t k + j], c], in fp32. A thread owns
// V consecutive columns of one token (16-byte packs where the rows allow, else V = 1) and issues
// the loads of all k rows before it adds: at decode sizes the kernel is as short as one memory
// round trip, so the loads must all be in flight at once.
template <class T, int V>
__global__ void unpermute_kernel(const T* __restrict__ ys, const void* __restrict__ weights, bool w_f32,
                                 T* __restrict__ out, const int32_t* __restrict__ row_of, int k, int64_t h,
                                 int64_t tokens) {
  pdl_begin();
  constexpr int kMaxK = 16;  // rows gathered at once; a larger top-k takes them in turns
  const int64_t packs = h / V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < tokens * packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / packs, c = (i - t * packs) * V;
    float acc[V] = {};
    for (int j0 = 0; j0 < k; j0 += kMaxK) {
      const int n = min(kMaxK, k - j0);
      Pack<T, V> rows[kMaxK];
#pragma unroll
      for (int j = 0; j < kMaxK; ++j)
        if (j < n) rows[j] = load_pack<T, V>(ys + row_of[t * k + j0 + j] * h + c);
#pragma unroll
      for (int j = 0; j < kMaxK; ++j)
        if (j < n) {
          const float w = load_weight(weights, w_f32, t * k + j0 + j);
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += w * to_f32(rows[j].v[e]);
        }
    }
    Pack<T, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(acc[e]);
    store_pack<T, V>(out + t * h + c, o);
  }
}

constexpr int kRowThreads = 256;

// One block per assignment r = t*K + j: dys[row] = w[r] · dout[t], dweights[r] = dout[t] · ys[row].
template <class T>
__global__ void unpermute_backward_kernel(const T* __restrict__ dout, const T* __restrict__ ys,
                                          const void* __restrict__ weights, bool w_f32, T* __restrict__ dys,
                                          void* __restrict__ dweights, const int32_t* __restrict__ row_of, int k,
                                          int64_t h) {
  __shared__ float partial[kRowThreads / kWarp];
  const int64_t r = blockIdx.x, t = r / k, row = row_of[r];
  const float w = load_weight(weights, w_f32, r);
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
    const float g = to_f32(dout[t * h + c]);
    dys[row * h + c] = from_f32<T>(w * g);
    dot += g * to_f32(ys[row * h + c]);
  }
  for (int off = kWarp / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < kRowThreads / kWarp; ++i) s += partial[i];
    if (w_f32) {
      static_cast<float*>(dweights)[r] = s;
    } else {
      static_cast<bf16*>(dweights)[r] = __float2bfloat16(s);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMM plumbing.

// Where operand X of expert e starts: base + e * expert_stride + offsets[e] * row_stride (bytes).
struct Operand {
  const char* base;
  int64_t expert_stride, row_stride;
};

// One block: the pointer arrays of the non-empty experts, in expert order (the same compaction the
// host makes from its copy of the offsets).
__global__ void build_pointers_kernel(const int64_t* __restrict__ offsets, int experts, Operand a, Operand b,
                                      Operand c, const void** __restrict__ pa, const void** __restrict__ pb,
                                      void** __restrict__ pc) {
  extern __shared__ int slot[];  // experts: compact index of expert e, or -1 when it has no rows
  if (threadIdx.x == 0) {
    int next = 0;
    for (int e = 0; e < experts; ++e) slot[e] = offsets[e + 1] > offsets[e] ? next++ : -1;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const int s = slot[e];
    if (s < 0) continue;
    const int64_t off = offsets[e];
    pa[s] = a.base + e * a.expert_stride + off * a.row_stride;
    pb[s] = b.base + e * b.expert_stride + off * b.row_stride;
    pc[s] = const_cast<char*>(c.base) + e * c.expert_stride + off * c.row_stride;
  }
}

GroupedGemmBackend initial_backend() {
  const char* env = std::getenv("G4_GROUPED_GEMM");
  if (env == nullptr || std::string(env).empty()) return GroupedGemmBackend::Auto;
  const std::string v(env);
  if (v == "device") return GroupedGemmBackend::Device;
  if (v == "grouped") return GroupedGemmBackend::Grouped;
  if (v == "loop") return GroupedGemmBackend::Loop;
  G4_CHECK(v == "auto", "G4_GROUPED_GEMM must be auto, device, grouped or loop, got '", v, "'");
  return GroupedGemmBackend::Auto;
}

GroupedGemmBackend& backend_setting() {
  static GroupedGemmBackend b = initial_backend();
  return b;
}
bool& grouped_rejected() {  // Auto: cuBLAS refused the grouped call once; use the loop from then on
  static bool r = false;
  return r;
}

cublasHandle_t cublas_handle() {
  // Created on first use and never destroyed (see core/cuda/runtime.cpp). It takes the stream and
  // the cuBLASLt workspace current at each use: the compute stream's, or the side stream's while
  // side work is queued (run_side_by_side), whose calls may overlap the compute stream's.
  static cublasHandle_t h = [] {
    cublasHandle_t handle = nullptr;
    // cuBLAS takes its own device memory with cudaMalloc, which fails when g4's caching allocator
    // holds the free memory (a first grouped GEMM late in a process): hand the cache back and retry.
    cublasStatus_t status = cublasCreate(&handle);
    if (status == CUBLAS_STATUS_ALLOC_FAILED) {
      release_cached_device_memory();
      status = cublasCreate(&handle);
    }
    if (status != CUBLAS_STATUS_SUCCESS)
      g4::cuda::fail_cublas(static_cast<int>(status), "cublasCreate(&handle)", __FILE__, __LINE__);
    return handle;
  }();
  // Set again only when the stream changes (a training step's grouped GEMMs all take the compute
  // stream's); the workspace goes with the stream.
  static cudaStream_t current = nullptr;
  if (cudaStream_t s = g4::cuda::stream(); s != current) {
    G4_CUBLAS_CHECK(cublasSetStream(h, s));
    G4_CUBLAS_CHECK(cublasSetWorkspace(h, g4::cuda::blaslt_workspace(), g4::cuda::blaslt_workspace_bytes()));
    current = s;
  }
  return h;
}

// One row-major problem per expert with rows: C_e = op(A_e) · op(B_e), where the expert's row count
// is m (vary_k false) or k (vary_k true); the other sizes are fixed. Strides as in gemm_rowmajor.
struct GroupedProblem {
  bool trans_a, trans_b, vary_k;
  int64_t m, n, k;  // the varying one is ignored
  Operand a, b, c;
  int64_t lda, ldb, ldc;
  DType dtype;            // of A and B
  DType c_dtype = dtype;  // C: A's dtype, or f32 with bf16 A and B
  float beta = 0;         // C = op(A)·op(B) + beta·C
};

void run_loop(const GroupedProblem& g, const std::vector<int64_t>& offsets) {
  const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const auto at = [&](const Operand& o) { return o.base + e * o.expert_stride + offsets[e] * o.row_stride; };
    gemm_rowmajor(g.trans_a, g.trans_b, g.vary_k ? g.m : rows, g.n, g.vary_k ? rows : g.k, 1.0f, at(g.a), g.lda,
                  at(g.b), g.ldb, g.dtype, g.beta, const_cast<char*>(at(g.c)), g.ldc, g.c_dtype);
  }
}

// cublasGemmGroupedBatchedEx with one group per non-empty expert. Returns false when cuBLAS
// rejects the problem (nothing was computed then).
bool run_grouped(const GroupedProblem& g, const std::vector<int64_t>& offsets, const Tensor& device_offsets) {
  const int experts = static_cast<int>(offsets.size()) - 1;
  // Host arrays in cuBLAS's column-major terms: C_eᵀ = op(B_e)ᵀ · op(A_e)ᵀ (see gemm.cpp).
  std::vector<cublasOperation_t> op_a, op_b;
  std::vector<int> m, n, k, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
  for (int e = 0; e < experts; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const int64_t gm = g.vary_k ? g.m : rows, gk = g.vary_k ? rows : g.k;
    op_a.push_back(g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    op_b.push_back(g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    m.push_back(static_cast<int>(g.n));
    n.push_back(static_cast<int>(gm));
    k.push_back(static_cast<int>(gk));
    lda.push_back(static_cast<int>(g.ldb));
    ldb.push_back(static_cast<int>(g.lda));
    ldc.push_back(static_cast<int>(g.ldc));
    group_size.push_back(1);
    alpha.push_back(1.0f);
    beta.push_back(g.beta);
  }
  const int groups = static_cast<int>(group_size.size());
  if (groups == 0) return true;
  Tensor ptrs = Tensor::empty({3 * int64_t{groups}}, DType::I64, Device::CUDA);
  auto** p = static_cast<void**>(ptrs.raw());
  build_pointers_kernel<<<1, 256, static_cast<size_t>(experts) * sizeof(int), g4::cuda::stream()>>>(
      device_offsets.data<int64_t>(), experts, g.a, g.b, g.c, const_cast<const void**>(p),
      const_cast<const void**>(p + groups), p + 2 * groups);
  G4_CUDA_CHECK_LAUNCH();
  const cudaDataType_t t = g.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t tc = g.c_dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  // cuBLAS's A is our B (pointers p + groups), its B our A (pointers p).
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      cublas_handle(), op_a.data(), op_b.data(), m.data(), n.data(), k.data(), alpha.data(),
      const_cast<const void* const*>(p + groups), t, lda.data(), const_cast<const void* const*>(p), t, ldb.data(),
      beta.data(), p + 2 * groups, tc, ldc.data(), groups, group_size.data(), CUBLAS_COMPUTE_32F);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) return false;
  G4_CUBLAS_CHECK(st);
  return true;
}

// Whether the device-offset kernels take these operands (`other`, dy in the backward, too when
// defined).
bool device_kernels_fit(const Tensor& rows, const Tensor& w, const Tensor& other = Tensor()) {
  return device_grouped_gemm_supported(rows, w) && (!other.defined() || device_grouped_gemm_supported(other, w));
}

// Whether this call takes the device-offset kernels: under Auto wherever they fit, under Device
// always (an error where they do not fit), never under the cuBLAS settings.
bool use_device_kernels(const char* op, const Tensor& rows, const Tensor& w, const Tensor& other = Tensor()) {
  const GroupedGemmBackend b = backend_setting();
  if (b == GroupedGemmBackend::Auto) return device_kernels_fit(rows, w, other);
  if (b != GroupedGemmBackend::Device) return false;
  G4_CHECK(device_kernels_fit(rows, w, other), op, ": G4_GROUPED_GEMM=device, but the device kernels do not take ",
           rows.describe(), " and ", w.describe(), " (they need bf16 and widths that are multiples of 8)");
  return true;
}

void run_grouped_problem(const GroupedProblem& g, const std::vector<int64_t>& offsets, const Tensor& device_offsets) {
  GroupedGemmBackend b = backend_setting();
  if (b == GroupedGemmBackend::Auto && grouped_rejected()) b = GroupedGemmBackend::Loop;
  // Degenerate fixed sizes (an empty sum or an empty output) go through gemm_rowmajor's special cases.
  // cuBLAS's grouped GEMM has no bf16 x bf16 -> f32 form (CUDA 13.1 rejects it): a bf16 model's f32
  // expert weight gradients take one cuBLASLt call per expert, whose outputs are large enough
  // ([Kd, Nd] per expert) to keep those calls efficient.
  if (g.n == 0 || (g.vary_k ? g.m == 0 : g.k == 0) || g.c_dtype != g.dtype) b = GroupedGemmBackend::Loop;
  if (b == GroupedGemmBackend::Loop) return run_loop(g, offsets);
  if (run_grouped(g, offsets, device_offsets)) return;
  G4_CHECK(b == GroupedGemmBackend::Auto, "grouped_matmul: cuBLAS rejected the grouped GEMM (",
           dtype_name(g.dtype), ") and G4_GROUPED_GEMM=grouped forbids the per-expert fallback");
  grouped_rejected() = true;
  run_loop(g, offsets);
}

// The offsets on the device: the caller's copy, or an upload of the host offsets.
Tensor device_offsets_for(const std::vector<int64_t>& offsets, const Tensor& given) {
  if (!given.defined()) return Tensor::from_vector(offsets, {static_cast<int64_t>(offsets.size())}).to(Device::CUDA);
  return given;
}

// The sizes the grouped GEMMs pass to cuBLAS as ints (shapes checked by ops/moe.cpp).
void check_grouped_sizes(const char* op, const Tensor& xs, const Tensor& w) {
  check_int_range(op, "rows", xs.size(0));
  check_int_range(op, "Kd", w.size(1));
  check_int_range(op, "Nd", w.size(2));
  check_int_range(op, "experts", w.size(0));
}

Operand operand(const Tensor& t, int64_t expert_stride_elems, int64_t row_stride_elems) {
  const auto es = static_cast<int64_t>(dtype_size(t.dtype()));
  return {static_cast<const char*>(t.raw()), expert_stride_elems * es, row_stride_elems * es};
}

}  // namespace

// ---------------------------------------------------------------------------------------------

namespace {

template <bool kFromLogits>
void launch_router_topk(const char* op, const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices) {
  const int64_t tokens = probs.size(0), experts = probs.size(1);
  G4_CHECK(k <= kWarp && experts <= kMaxTopkExperts, op, ": the GPU kernel takes k <= ", kWarp, " and at most ",
           kMaxTopkExperts, " experts, got k = ", k, " and ", probs.describe());
  // NaN probabilities are not detected on the GPU (that would need a synchronisation); they order
  // below every number here, where the CPU op raises an error.
  weights = Tensor::empty({tokens, k}, probs.dtype(), Device::CUDA);
  indices = Tensor::empty({tokens, k}, DType::I32, Device::CUDA);
  if (tokens == 0) return;
  const unsigned blocks = g4::cuda::blocks_for(tokens, kTopkWarpsPerBlock);
  dispatch(op, probs, [&](auto tag) {
    using T = decltype(tag);
    launch_pdl(router_topk_kernel<T, kFromLogits>, blocks, kTopkWarpsPerBlock * kWarp, 0, typed<T>(probs), tokens,
               static_cast<int>(experts), static_cast<int>(k), typed<T>(weights), indices.data<int32_t>());
  });
}

}  // namespace

void router_topk(const Tensor& probs, int64_t k, Tensor& weights, Tensor& indices) {
  launch_router_topk<false>("router_topk", probs, k, weights, indices);
}

void softmax_topk(const Tensor& logits, int64_t k, Tensor& weights, Tensor& indices) {
  launch_router_topk<true>("softmax_topk", logits, k, weights, indices);
}

Tensor router_topk_backward(const Tensor& dweights, const Tensor& probs, const Tensor& indices) {
  const char* op = "router_topk_backward";
  const int64_t tokens = probs.size(0), experts = probs.size(1);
  check_int_range(op, "experts", experts);
  const Tensor idx = indices.dtype() == DType::I32 ? indices : indices.to(DType::I32);
  const int64_t k = dweights.size(1);
  Tensor dp = Tensor::zeros(probs.shape(), probs.dtype(), Device::CUDA);
  if (tokens == 0) return dp;
  dispatch(op, probs, [&](auto tag) {
    using T = decltype(tag);
    router_topk_backward_kernel<T><<<g4::cuda::blocks_for(tokens, 128), 128, 0, g4::cuda::stream()>>>(
        typed<T>(dweights), typed<T>(probs), idx.data<int32_t>(), tokens, static_cast<int>(experts),
        static_cast<int>(k), typed<T>(dp));
  });
  G4_CUDA_CHECK_LAUNCH();
  return dp;
}

MoePlan moe_plan(const Tensor& indices, int64_t num_experts, bool host_offsets) {
  const char* op = "moe_plan";
  G4_CHECK(num_experts <= 4096, op, ": at most 4096 experts on the GPU, got ", num_experts);
  const int64_t n = indices.numel();
  check_int_range(op, "tokens * top_k", n);
  const Tensor idx = indices.dtype() == DType::I32 ? indices : indices.to(DType::I32);
  const int experts = static_cast<int>(num_experts);

  MoePlan plan;
  plan.tokens = indices.size(0);
  plan.top_k = indices.size(1);
  plan.experts = num_experts;
  plan.order = Tensor::empty({n}, DType::I32, Device::CUDA);
  plan.row_of = Tensor::empty({n}, DType::I32, Device::CUDA);
  // offsets [E+1] followed by the count of out-of-range expert ids: one copy brings both back.
  Tensor meta = Tensor::zeros({num_experts + 2}, DType::I64, Device::CUDA);
  Tensor counts = Tensor::zeros({num_experts}, DType::I32, Device::CUDA);
  auto* bad = reinterpret_cast<unsigned long long*>(meta.data<int64_t>() + num_experts + 1);
  auto* cnt = reinterpret_cast<unsigned*>(counts.data<int32_t>());
  if (n > 0) {
    const unsigned hist_blocks = g4::cuda::blocks_for(n < (int64_t{1} << 20) ? n : (int64_t{1} << 20), 256);
    launch_pdl(plan_histogram_kernel, hist_blocks, 256, static_cast<size_t>(experts) * sizeof(unsigned),
               idx.data<int32_t>(), n, experts, cnt, bad);
  }
  launch_pdl(plan_offsets_kernel, 1, 256, static_cast<size_t>(experts + 1) * sizeof(int64_t), cnt, experts,
             meta.data<int64_t>());
  if (n > 0) {
    launch_pdl(plan_scatter_kernel, static_cast<unsigned>(experts), kScatterThreads, 0, idx.data<int32_t>(), n,
               meta.data<int64_t>(), plan.order.data<int32_t>(), plan.row_of.data<int32_t>());
  }
  plan.device_offsets = meta.slice0(0, num_experts + 1);
  if (!host_offsets) return plan;
  // The one device-to-host copy of an MoE layer: the cuBLAS grouped GEMM launches (and
  // expert-parallel dispatch) need each expert's row count on the host. E+2 values; the host waits.
  std::vector<int64_t> host(static_cast<size_t>(num_experts + 2));
  detail::device_copy(host.data(), Device::CPU, meta.raw(), Device::CUDA, host.size() * sizeof(int64_t));
  G4_CHECK(host.back() == 0, op, ": ", host.back(), " expert ids of indices ", indices.describe(),
           " are outside [0, ", num_experts, ")");
  host.pop_back();
  plan.offsets = std::move(host);
  return plan;
}

Tensor moe_permute(const Tensor& x, const MoePlan& plan) {
  const char* op = "moe_permute";
  const int64_t rows = plan.rows();
  Tensor xs = Tensor::empty({rows, x.size(1)}, x.dtype(), Device::CUDA);
  const int64_t row_bytes = x.size(1) * static_cast<int64_t>(dtype_size(x.dtype()));
  if (rows == 0 || row_bytes == 0) return xs;
  // Copy in the widest unit that divides the row and both base addresses.
  const auto aligned = [&](int64_t unit) {
    return row_bytes % unit == 0 && reinterpret_cast<uintptr_t>(x.raw()) % unit == 0 &&
           reinterpret_cast<uintptr_t>(xs.raw()) % unit == 0;
  };
  const auto launch = [&](auto unit_tag) {
    using U = decltype(unit_tag);
    const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
    const int threads = units >= 256 ? 256 : (units >= 64 ? 64 : 32);
    launch_pdl(permute_rows_kernel<U>, static_cast<unsigned>(rows), threads, 0, static_cast<const U*>(x.raw()),
               static_cast<U*>(xs.raw()), plan.order.data<int32_t>(), static_cast<int>(plan.top_k), units);
  };
  check_int_range(op, "tokens * top_k", rows);
  if (aligned(16)) {
    launch(uint4{});
  } else if (aligned(4)) {
    launch(uint32_t{});
  } else if (aligned(2)) {
    launch(uint16_t{});
  } else {
    launch(uint8_t{});
  }
  return xs;
}

Tensor moe_permute_backward(const Tensor& dxs, const MoePlan& plan) {
  const char* op = "moe_permute_backward";
  const int64_t h = dxs.size(1);
  Tensor dx = Tensor::empty({plan.tokens, h}, dxs.dtype(), Device::CUDA);
  if (plan.tokens == 0 || h == 0) return dx;
  check_int_range(op, "tokens", plan.tokens);
  dispatch(op, dxs, [&](auto tag) {
    using T = decltype(tag);
    permute_backward_kernel<T><<<static_cast<unsigned>(plan.tokens), kRowThreads, 0, g4::cuda::stream()>>>(
        typed<T>(dxs), typed<T>(dx), plan.row_of.data<int32_t>(), static_cast<int>(plan.top_k), h);
  });
  G4_CUDA_CHECK_LAUNCH();
  return dx;
}

Tensor moe_unpermute(const Tensor& ys, const Tensor& weights, const MoePlan& plan) {
  const char* op = "moe_unpermute";
  const int64_t h = ys.size(1);
  Tensor out = Tensor::empty({plan.tokens, h}, ys.dtype(), Device::CUDA);
  if (plan.tokens == 0 || h == 0) return out;
  check_int_range(op, "tokens", plan.tokens);
  dispatch(op, ys, [&](auto tag) {
    using T = decltype(tag);
    const auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      launch_pdl(unpermute_kernel<T, V>, grid_for(plan.tokens * (h / V), kRowThreads), kRowThreads, 0, typed<T>(ys),
                 weights.raw(), weights.dtype() == DType::F32, typed<T>(out), plan.row_of.data<int32_t>(),
                 static_cast<int>(plan.top_k), h, plan.tokens);
    };
    if (h % kVec<T> == 0 && aligned16(ys.raw()) && aligned16(out.raw()))
      launch(std::integral_constant<int, kVec<T>>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  return out;
}

void moe_unpermute_backward(const Tensor& dout, const Tensor& ys, const Tensor& weights, const MoePlan& plan,
                            Tensor& dys, Tensor& dweights) {
  const char* op = "moe_unpermute_backward";
  const int64_t h = ys.size(1);
  dys = Tensor::empty(ys.shape(), ys.dtype(), Device::CUDA);
  dweights = Tensor::empty(weights.shape(), weights.dtype(), Device::CUDA);
  if (plan.rows() == 0) return;
  check_int_range(op, "tokens * top_k", plan.rows());
  if (h == 0) {
    dweights.fill(0.0);
    return;
  }
  dispatch(op, ys, [&](auto tag) {
    using T = decltype(tag);
    unpermute_backward_kernel<T><<<static_cast<unsigned>(plan.rows()), kRowThreads, 0, g4::cuda::stream()>>>(
        typed<T>(dout), typed<T>(ys), weights.raw(), weights.dtype() == DType::F32, typed<T>(dys), dweights.raw(),
        plan.row_of.data<int32_t>(), static_cast<int>(plan.top_k), h);
  });
  G4_CUDA_CHECK_LAUNCH();
}

Tensor grouped_matmul(const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                      const Tensor& device_offsets) {
  const char* op = "grouped_matmul";
  check_grouped_sizes(op, xs, w);
  const int64_t kd = w.size(1), nd = w.size(2);
  Tensor y = Tensor::empty({xs.size(0), nd}, xs.dtype(), Device::CUDA);
  if (xs.size(0) == 0 || nd == 0) return y;
  const Tensor dev = device_offsets_for(offsets, device_offsets);
  const bool device_kernels = kd > 0 && use_device_kernels(op, xs, w);
  G4_CHECK(device_kernels || !offsets.empty(), op, ": no host offsets, and the device kernels do not run here");
  if (device_kernels) {
    device_grouped_forward(xs, w, dev, y);
    return y;
  }
  // y_e [n_e, Nd] = xs_e [n_e, Kd] · w_e [Kd, Nd].
  const GroupedProblem g{false, false, false, 0, nd, kd, operand(xs, 0, kd), operand(w, kd * nd, 0),
                         operand(y, 0, nd), kd, nd, nd, xs.dtype()};
  run_grouped_problem(g, offsets, dev);
  return y;
}

void grouped_matmul_backward(const Tensor& dy, const Tensor& xs, const Tensor& w, const std::vector<int64_t>& offsets,
                             Tensor& dxs, Tensor& dw, const Tensor& device_offsets, double dw_beta) {
  const char* op = "grouped_matmul_backward";
  check_grouped_sizes(op, xs, w);
  const int64_t kd = w.size(1), nd = w.size(2);
  const bool into = dw.defined();
  const float beta = into ? static_cast<float>(dw_beta) : 0.0f;
  dxs = Tensor::empty(xs.shape(), xs.dtype(), Device::CUDA);
  if (!into) dw = Tensor::empty(w.shape(), w.dtype(), Device::CUDA);
  const bool device_kernels = kd > 0 && nd > 0 && use_device_kernels(op, xs, w, dy);
  G4_CHECK(device_kernels || !offsets.empty(), op, ": no host offsets, and the device kernels do not run here");
  if (device_kernels) {
    if (xs.size(0) == 0) {
      if (beta == 0.0f) dw.fill(0.0);
      return;
    }
    // Experts without rows get beta·dw from the kernel itself; nothing is read on the host.
    const Tensor dev = device_offsets_for(offsets, device_offsets);
    device_grouped_input_grad(dy, w, dev, dxs);
    device_grouped_weight_grad(xs, dy, dev, dw, beta);
    return;
  }
  // Experts without rows get no GEMM: their weight gradient is zero (or, accumulating, unchanged).
  const size_t expert_bytes = static_cast<size_t>(kd * nd) * dtype_size(dw.dtype());
  for (size_t e = 0; e + 1 < offsets.size() && beta == 0.0f; ++e)
    if (offsets[e + 1] == offsets[e] && expert_bytes > 0)
      G4_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(dw.raw()) + e * expert_bytes, 0, expert_bytes,
                                    g4::cuda::stream()));
  if (xs.size(0) == 0) return;
  const Tensor dev = device_offsets_for(offsets, device_offsets);
  // dxs_e [n_e, Kd] = dy_e [n_e, Nd] · w_eᵀ.
  if (kd > 0) {
    const GroupedProblem gx{false, true, false, 0, kd, nd, operand(dy, 0, nd), operand(w, kd * nd, 0),
                            operand(dxs, 0, kd), nd, nd, kd, xs.dtype()};
    run_grouped_problem(gx, offsets, dev);
  }
  // dw_e [Kd, Nd] = xs_eᵀ [Kd, n_e] · dy_e [n_e, Nd].
  if (kd > 0 && nd > 0) {
    const GroupedProblem gw{true, false, true, kd, nd, 0, operand(xs, 0, kd), operand(dy, 0, nd),
                            operand(dw, kd * nd, 0), kd, nd, nd, xs.dtype(), dw.dtype(), beta};
    run_grouped_problem(gw, offsets, dev);
  }
}

void set_grouped_gemm_backend(GroupedGemmBackend backend) {
  backend_setting() = backend;
  grouped_rejected() = false;
}

GroupedGemmBackend grouped_gemm_backend() { return backend_setting(); }

bool grouped_matmul_takes_device_offsets(const Tensor& rows, const Tensor& w) {
  const GroupedGemmBackend b = backend_setting();
  return (b == GroupedGemmBackend::Auto || b == GroupedGemmBackend::Device) && device_kernels_fit(rows, w);
}

}  // namespace g4::ops::cuda

// Flash-attention forward for head dim 512 on Hopper, in the FlashAttention-3 manner: a producer
// warpgroup streams Q, K and V into shared memory with TMA, two consumer warpgroups multiply on wgmma,
// and mbarriers hand the buffers back and forth.
//
// A CTA owns 64 query rows of one (batch, head). Their output accumulator, 64 x 512 in f32, is
// 128 KB — half the register file — so the two consumer warpgroups split it by columns (256 each,
// 128 registers a thread). Each warpgroup also computes S = Q Kᵀ over its own half of the head dim
// only, so that it reads only its halves of Q, K and V:
//   1. S_w = Q[:, half w] K[:, half w]ᵀ         (wgmma m64n64k16, both operands in shared memory)
//   2. S = S_0 + S_1 through shared memory      (each warpgroup adds the other's 64 x 64 partial)
//   3. the online softmax of S                  (the same in both: the same two addends, so the
//                                                same bits, the same P and the same rescaling)
//   4. O_w += P V[:, half w]                    (wgmma m64n256k16, P from registers)
// Shared memory holds Q, one K tile and one V tile (64 x 512 bf16, 64 KB each) and the two partial
// S (16 KB each): 224 of the 227 KB. K and V are therefore single-buffered, but per half: the
// producer refills warpgroup w's half of K while w runs its softmax and P·V, and its half of V
// while w computes the next Q Kᵀ.
//
// Under GQA the CTAs of 2 or 4 query heads of one KV head (the same query tile, so the same key
// tiles) can form a cluster in which each K and V box is read from L2 once and multicast into all
// of them; a buffer is then refilled when the warpgroups of every CTA have released it (one
// arrival per consumer warp on each CTA's empty barrier). Measured on an H100 at S 8192 causal
// (GQA 8): 3.67 ms alone, 5.54 ms in pairs, 8.22 ms in fours — the kernel is bound by its
// single-buffered pipeline, not by L2, and lockstepping CTAs only adds waits. So the default is
// no cluster; G4_ATTENTION_CLUSTER=2 or 4 selects one, for measuring a deeper pipeline later.
//
// Masks are those of the FlashAttention-2 kernel (attention_fwd.cu) with the same helpers: key
// tiles outside the causal / sliding-window band or the query tile's documents are never loaded;
// the others are masked element by element when the tile is not wholly visible.
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace g4::ops::cuda::attn {

namespace {

constexpr int kD = 512, kBM = 64, kBN = 64;
constexpr int kBoxes = kD / 64;                     // 64-column boxes of a 64-row tile
constexpr int kHalfBoxes = kBoxes / 2;              // the boxes of one warpgroup's half
constexpr uint32_t kBoxBytes = 64 * 64 * 2;         // 8 KB
constexpr uint32_t kTileBytes = kBoxes * kBoxBytes;  // 64 KB
constexpr uint32_t kHalfBytes = kTileBytes / 2;
constexpr uint32_t kPartialBytes = kBM * kBN * 4;   // one warpgroup's S partial, f32
constexpr int kGroupThreads = 128, kConsumerThreads = 2 * kGroupThreads;
constexpr int kThreads = kConsumerThreads + kGroupThreads;  // + the producer warpgroup
constexpr int kBarriers = 9;                         // full_q, full_k[2], empty_k[2], full_v[2], empty_v[2]
constexpr int kConsumerWarps = kGroupThreads / 32;   // per warpgroup
constexpr size_t kSmemBytes = 1024 + 3 * size_t{kTileBytes} + 2 * size_t{kPartialBytes} + kBarriers * 8;
static_assert(kSmemBytes <= 227 * 1024, "head-dim-512 forward shared memory");

struct Maps {
  CUtensorMap q, k, v;
};

struct Barriers {
  uint64_t full_q, full_k[2], empty_k[2], full_v[2], empty_v[2];
};

// The register file split by setmaxnreg: 384 threads get 168 registers each at launch, and that
// allocation is all the CTA ever has — the consumers' increase is paid by the producer's decrease
// (asking for more than the launch allocation blocks setmaxnreg.inc for ever). The consumers'
// 128 accumulators of O, 32 of S and 16 of P need about 200.
constexpr int kLaunchRegisters = 168, kProducerRegisters = 24, kConsumerRegisters = 240;
static_assert(kProducerRegisters + 2 * kConsumerRegisters <= 3 * kLaunchRegisters, "register split");

// Named barrier `id` over the two consumer warpgroups (the producer warpgroup never joins).
__device__ __forceinline__ void consumers_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kConsumerThreads) : "memory");
}

// Half w of a K or V tile (keys k0..) into `dst`: in a cluster, this CTA loads every kCluster-th
// box for all of the cluster; the full barrier of each CTA counts the whole half.
template <int kCluster>
__device__ __forceinline__ void load_half(unsigned char* dst, const CUtensorMap& map, int w, int kvh, int k0, int b,
                                          uint64_t* full, uint32_t rank) {
  tma::mbar_expect_bytes(full, kHalfBytes);
  for (int box = w * kHalfBoxes + static_cast<int>(rank); box < (w + 1) * kHalfBoxes; box += kCluster) {
    if constexpr (kCluster == 1)
      tma::load(dst + box * kBoxBytes, map, 64 * box, kvh, k0, b, full);
    else
      tma::load_multicast(dst + box * kBoxBytes, map, 64 * box, kvh, k0, b, full, (1u << kCluster) - 1);
  }
}

// The producer: Q once, then for each key tile the halves of K and of V, each as soon as the
// warpgroups that read it have released the previous tile's.
template <int kCluster>
__device__ __forceinline__ void produce(const Maps& maps, Barriers* bars, unsigned char* sQ, unsigned char* sK,
                                        unsigned char* sV, int b, int h, int kvh, int q0, int jt_begin, int jt_end) {
  const uint32_t rank = kCluster == 1 ? 0 : tma::cluster_rank();
  tma::mbar_expect_bytes(&bars->full_q, kTileBytes);
  for (int box = 0; box < kBoxes; ++box) tma::load(sQ + box * kBoxBytes, maps.q, 64 * box, h, q0, b, &bars->full_q);
  for (int jt = jt_begin, it = 0; jt < jt_end; ++jt, ++it) {
    const uint32_t free_parity = (it & 1) ^ 1;
    for (int w = 0; w < 2; ++w) {
      tma::mbar_wait(&bars->empty_k[w], free_parity);
      load_half<kCluster>(sK, maps.k, w, kvh, jt * kBN, b, &bars->full_k[w], rank);
    }
    for (int w = 0; w < 2; ++w) {
      tma::mbar_wait(&bars->empty_v[w], free_parity);
      load_half<kCluster>(sV, maps.v, w, kvh, jt * kBN, b, &bars->full_v[w], rank);
    }
  }
}

// A consumer warp releases a buffer to the producers of every CTA in the cluster; `last`: no
// refill follows (and a peer CTA may already have finished), so nobody is told.
template <int kCluster>
__device__ __forceinline__ void release(uint64_t* empty, bool last) {
  __syncwarp();
  if (last || threadIdx.x % 32 != 0) return;
  if constexpr (kCluster == 1) {
    tma::mbar_arrive(empty);
  } else {
#pragma unroll
    for (int c = 0; c < kCluster; ++c) tma::mbar_arrive_cluster(empty, c);
  }
}

// A consumer warpgroup: for each key tile its partial S, the exchange, the softmax and its half of
// O; then its half of the output rows (and, warpgroup 0, the log-sum-exp).
template <int kCluster>
__device__ __forceinline__ void consume(const FwdArgs& a, Barriers* bars, const unsigned char* sQ,
                                        const unsigned char* sK, const unsigned char* sV, float* sPartial, int group,
                                        int q0, int q_last, int b, int h, int jt_begin, int jt_end) {
  const Dims& dm = a.dims;
  const int t = threadIdx.x % kGroupThreads, lane = t % 32, cq = lane % 4;
  const int r_local = (t / 32) * 16 + lane / 4;  // this thread's rows: r_local and r_local + 8
  const bool elem_mask_always = a.mask.key_valid != nullptr || a.mask.q_doc != nullptr;
  float o[1][32][4];  // O[:, 256 group + 8 n + 2 cq + (e % 2)], rows r_local + 8 (e / 2)
  zero_acc(o);
  float(&o_flat)[128] = reinterpret_cast<float(&)[128]>(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // log2 units
  float4* mine = reinterpret_cast<float4*>(sPartial + group * kBM * kBN);
  const float4* theirs = reinterpret_cast<const float4*>(sPartial + (1 - group) * kBM * kBN);

  tma::mbar_wait(&bars->full_q, 0);
  for (int jt = jt_begin, it = 0; jt < jt_end; ++jt, ++it) {
    const uint32_t parity = it & 1;
    const int k0 = jt * kBN;

    // 1. This warpgroup's partial S over its half of the head dim.
    float s[1][8][4];
    zero_acc(s);
    float(&s_flat)[32] = reinterpret_cast<float(&)[32]>(s);
    tma::mbar_wait(&bars->full_k[group], parity);
    wgmma::fence();
#pragma unroll
    for (int box = 0; box < kHalfBoxes; ++box) {
      const int at = (group * kHalfBoxes + box) * kBoxBytes;
      const uint64_t dq = wgmma::sw128_desc(sQ + at), dk = wgmma::sw128_desc(sK + at);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma::mma_m64n64k16(s_flat, wgmma::advance(dq, 32 * kk), wgmma::advance(dk, 32 * kk));
    }
    wgmma::commit();
    wgmma::wait<0>();
    release<kCluster>(&bars->empty_k[group], jt + 1 == jt_end);

    // 2. S = S_0 + S_1. Thread t of either warpgroup holds the same elements, so each writes its
    // 32 partials where its twin reads them. The first barrier keeps this write behind the twin's
    // read of the previous tile's partial.
    consumers_sync(1);
#pragma unroll
    for (int i = 0; i < 8; ++i) mine[i * kGroupThreads + t] = make_float4(s[0][i][0], s[0][i][1], s[0][i][2], s[0][i][3]);
    consumers_sync(2);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float4 x = theirs[i * kGroupThreads + t];
      s[0][i][0] += x.x;
      s[0][i][1] += x.y;
      s[0][i][2] += x.z;
      s[0][i][3] += x.w;
    }

    // 3. Mask, online softmax, P.
    const bool need_mask = elem_mask_always || k0 + kBN > dm.sk ||
                           !rect_fully_visible(a.mask, q0, q_last, k0, min(k0 + kBN, dm.sk) - 1);
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[0][nt][e] * a.scale_log2;
        if (need_mask) {
          const int i = q0 + r_local + (e >= 2 ? 8 : 0), j = k0 + nt * 8 + 2 * cq + (e & 1);
          if (!visible(a.mask, dm, b, i, j)) x = -INFINITY;
        }
        s[0][nt][e] = x;
        tile_max[e >> 1] = KeepNaN{}(tile_max[e >> 1], x);
      }
    }
    float m_use[2];
    online_softmax_step<1, kBM>(tile_max, row_max, row_sum, o, m_use, nullptr, 0, r_local, cq, KeepNaN{});
    uint32_t p[4][4];  // the A fragments of P for the four k16 steps over the tile's keys
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      float e2[2][4];
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = exp2f(s[0][2 * kk + half][e] - m_use[e >> 1]);
          e2[half][e] = x;
          row_sum[e >> 1] += x;  // partial: this thread's columns only, reduced at the end
        }
      p[kk][0] = pack_bf16(e2[0][0], e2[0][1]);
      p[kk][1] = pack_bf16(e2[0][2], e2[0][3]);
      p[kk][2] = pack_bf16(e2[1][0], e2[1][1]);
      p[kk][3] = pack_bf16(e2[1][2], e2[1][3]);
    }

    // 4. O_w += P V[:, half w]: V's rows are the keys (K dim), its columns N-major in four boxes.
    tma::mbar_wait(&bars->full_v[group], parity);
    wgmma::fence();
    const uint64_t dv = wgmma::sw128_mn_desc(sV + group * kHalfBoxes * kBoxBytes, kBoxBytes);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma::mma_m64n256k16_rs(o_flat, p[kk], wgmma::advance(dv, 2048 * kk));
    wgmma::commit();
    wgmma::wait<0>();
    release<kCluster>(&bars->empty_v[group], jt + 1 == jt_end);
  }

  total_row_sums<1, kBM>(row_sum, nullptr, 0, r_local, cq);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = q0 + r_local + 8 * r;
    if (i >= dm.sq) continue;
    const bool empty = row_sum[r] == 0.f;  // no visible key: output 0, lse -inf
    const float inv = empty ? 0.f : 1.f / row_sum[r];
    bf16* orow = a.out + ((static_cast<long long>(b) * dm.sq + i) * dm.heads + h) * kD + group * (kD / 2);
#pragma unroll
    for (int nt = 0; nt < 32; ++nt)
      *reinterpret_cast<__nv_bfloat162*>(orow + nt * 8 + 2 * cq) =
          __floats2bfloat162_rn(o[0][nt][2 * r] * inv, o[0][nt][2 * r + 1] * inv);
    if (a.lse != nullptr && group == 0 && cq == 0)
      a.lse[(static_cast<long long>(b) * dm.heads + h) * dm.sq + i] =
          empty ? -INFINITY : (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
}

template <int kCluster>
__global__ void __launch_bounds__(kThreads, 1) fwd_wgmma_kernel(const __grid_constant__ Maps maps, FwdArgs a) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* sQ = smem;
  unsigned char* sK = sQ + kTileBytes;
  unsigned char* sV = sK + kTileBytes;
  float* sPartial = reinterpret_cast<float*>(sV + kTileBytes);  // [2][kBM * kBN]
  Barriers* bars = reinterpret_cast<Barriers*>(sV + kTileBytes + 2 * kPartialBytes);

  const Dims& dm = a.dims;
  const int tid = threadIdx.x;
  // Late query tiles see the most keys under a causal mask: start them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBM;
  const int b = blockIdx.y / dm.heads, h = blockIdx.y % dm.heads, kvh = h / dm.group;
  const int q_last = min(q0 + kBM, dm.sq) - 1;
  int klo, khi;
  key_range(a.mask, dm, q0, q_last, &klo, &khi);
  doc_key_range(a.mask, dm, b, q0, q_last, &klo, &khi);
  const int jt_begin = klo <= khi ? klo / kBN : 0, jt_end = klo <= khi ? khi / kBN + 1 : 0;

  if (tid == 0) {
    tma::mbar_init(&bars->full_q, 1);
    for (int w = 0; w < 2; ++w) {
      tma::mbar_init(&bars->full_k[w], 1);
      tma::mbar_init(&bars->full_v[w], 1);
      tma::mbar_init(&bars->empty_k[w], kConsumerWarps * kCluster);
      tma::mbar_init(&bars->empty_v[w], kConsumerWarps * kCluster);
    }
    tma::fence_mbar_init();
  }
  // The peers' multicast loads and arrivals may reach this CTA's barriers only once they exist.
  if constexpr (kCluster > 1)
    tma::cluster_sync();
  else
    __syncthreads();

  // Broadcast from lane 0, so that the compiler sees a warp-uniform role (wgmma in a path it cannot
  // prove uniform gets serialised).
  const int group = __shfl_sync(0xffffffffu, tid / kGroupThreads, 0);
  if (group == 2) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
    if (tid == kConsumerThreads) produce<kCluster>(maps, bars, sQ, sK, sV, b, h, kvh, q0, jt_begin, jt_end);
    __syncwarp();  // the producer's warp meets the cluster barrier below whole
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));
    consume<kCluster>(a, bars, sQ, sK, sV, sPartial, group, q0, q_last, b, h, jt_begin, jt_end);
  }
  // No CTA leaves while a peer may still multicast into it or arrive on its barriers.
  if constexpr (kCluster > 1) tma::cluster_sync();
}


bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool wgmma_forward_fits(const FwdArgs& a) {
  return a.dims.d == kD && a.dims.dv == kD && aligned16(a.q) && aligned16(a.k) && aligned16(a.v);
}

namespace {

template <int kCluster>
void launch(const Maps& maps, const FwdArgs& a) {
  static bool configured = false;  // the attribute is per kernel and process
  if (!configured) {
    G4_CUDA_CHECK(cudaFuncSetAttribute(fwd_wgmma_kernel<kCluster>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kSmemBytes)));
    configured = true;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3((a.dims.sq + kBM - 1) / kBM, a.dims.batch * a.dims.heads);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = g4::cuda::stream();
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 1;
  cluster.val.clusterDim.y = kCluster;  // query heads h .. h + kCluster - 1 of one KV head
  cluster.val.clusterDim.z = 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  G4_CUDA_CHECK(cudaLaunchKernelEx(&cfg, fwd_wgmma_kernel<kCluster>, maps, a));
  G4_CUDA_CHECK_LAUNCH();
}

// The CTAs per cluster: 1 (see the top of this file), or G4_ATTENTION_CLUSTER (1, 2 or 4; it must
// divide the GQA group, so that the cluster's query heads share one KV head).
int cluster_size(int group) {
  int n = 1;
  if (const char* env = std::getenv("G4_ATTENTION_CLUSTER"); env != nullptr && *env != 0) {
    const int want = std::atoi(env);
    G4_CHECK((want == 1 || want == 2 || want == 4) && group % want == 0, "G4_ATTENTION_CLUSTER=", env,
             ": must be 1, 2 or 4 and divide the GQA group (", group, " query heads per KV head)");
    n = want;
  }
  return n;
}

}  // namespace

void forward_wgmma(const FwdArgs& a) {
  const Dims& dm = a.dims;
  const Maps maps{tma::head_rows_map(a.q, dm.batch, dm.sq, dm.heads, kD, kBM),
                  tma::head_rows_map(a.k, dm.batch, dm.sk, dm.kv_heads, kD, kBN),
                  tma::head_rows_map(a.v, dm.batch, dm.sk, dm.kv_heads, kD, kBN)};
  switch (cluster_size(dm.group)) {
    case 4: launch<4>(maps, a); break;
    case 2: launch<2>(maps, a); break;
    default: launch<1>(maps, a); break;
  }
}

}  // namespace g4::ops::cuda::attn

// Flash-attention forward for head dims 512 and 256 on Hopper, in the FlashAttention-3 manner: a
// producer warpgroup streams Q, K and V into shared memory with TMA, two consumer warpgroups
// multiply on wgmma, and mbarriers hand the buffers back and forth. (Head dim 256: see Cfg.)
//
// At head dim 512 a CTA owns 64 query rows of one (batch, head). Their output accumulator, 64 x 512 in f32, is
// 128 KB — half the register file — so the two consumer warpgroups split it by columns (256 each,
// 128 registers a thread). Each warpgroup also computes S = Q Kᵀ over its own half of the head dim
// only, so that it reads only its halves of Q, K and V:
//   1. S_w = Q[:, half w] K[:, half w]ᵀ         (wgmma m64n64k16, both operands in shared memory)
//   2. S = S_0 + S_1 through shared memory      (each warpgroup adds the other's 64 x 64 partial)
//   3. the online softmax of S                  (the same in both: the same two addends, so the
//                                                same bits, the same P and the same rescaling)
//   4. O_w += P V[:, half w]                    (wgmma m64n256k16, P from registers)
// With tiles of 64 keys, shared memory holds Q, one K tile and one V tile (64 x 512 bf16, 64 KB
// each) and the two partial S (16 KB each): 224 of the 227 KB. K and V are therefore
// single-buffered, but per half: the producer refills warpgroup w's half of K while w runs its
// softmax and P·V, and its half of V while w computes the next Q Kᵀ. That is the serial schedule.
// The pipelined one (see Cfg) takes 32-key tiles, two buffers, and overlaps each tile's exchange
// and softmax with the previous tile's P·V.
//
// Which is faster (bench_attention, one H100, S 8192 causal): at head dim 512 the serial one, 2.89
// ms against 3.32 (the pipelined one's 32-key tiles make the S products too narrow), and the softmax
// group below faster still; at 256 the pipelined one, 1.04 ms against 1.18. The op runs the
// pipelined one at 256 and the softmax group at 512 (ops/cuda/attention.h). Two variants
// measured no faster and were dropped: the serial schedule with two buffers (so single buffering
// is not what limits it), and FlashAttention-3's ping-pong, the warpgroups taking turns through
// named barriers to issue their GEMMs (1.03 ms either way at 256).
//
// Under GQA the CTAs of 2 or 4 query heads of one KV head (the same query tile, so the same key
// tiles) can form a cluster in which each K and V box is read from L2 once and multicast into all
// of them; a buffer is then refilled when the warpgroups of every CTA have released it (one
// arrival per consumer warp on each CTA's empty barrier, at CTA scope: a cluster-scope release
// fenced every arrival and made pairs 1.7x slower). The serial schedule does not gain from it
// (S 8192 causal, GQA 8, one H100: 2.87 ms alone, 2.94 in pairs, 3.24 in fours, with the tensor pipes
// as busy), nor did two CTAs splitting the head dim of 128 rows (sessions 31 and 34;
// docs/performance.md). The softmax group does: it waits on its loads, and their floor is set by the
// reads, which clusters share (the loads alone take 2.01 ms at S 8192 one CTA a cluster, 1.24 in
// pairs, 0.89 in fours). In a cluster, though, whoever refills a K part waits for the slowest CTA's
// release; the softmax warpgroup's thread 0 doing so held up its warp, and with it the warpgroup's
// next products and P's publication (pairs 0.87x of one CTA). So in clusters each P·V warpgroup
// refills its own half of K, as it does of V, at the top of its tile, where it would wait for P
// anyway; pairs then took 2.26 ms against 2.54 at S 8192 (1.13x; 1.22x at S 4096, 1.01-1.07x on
// packed documents; fours 0.99-1.11x). So the softmax group runs in pairs wherever the GQA group is
// even; G4_ATTENTION_CLUSTER=1, 2 or 4 overrides that, for it and for the serial schedule
// (G4_ATTENTION_SOFTMAX_GROUP=0), which runs one CTA a cluster by default.
//
// What the serial schedule waits on is its order: each warpgroup's exchange and softmax sit between
// its products. Computing S twice instead (each warpgroup over the whole head dim, no exchange) was
// measured and dropped (2.75 against 2.89 ms at S 8192, equal on packed documents; docs/performance.md).
//
// The softmax group (Schedule::softmax_group, the default at head dim 512 since session 33) has no producer
// warpgroup: the third warpgroup computes S over the whole head dim once, its softmax, and P into
// shared memory, while the two others multiply the previous tile's P (read from shared memory) by
// their halves of V, each loading its own half of V. The softmax then runs beside the P·V products
// instead of between them. Measured on an H100 (docs/performance.md): 2.58 ms at S 8192 causal
// against the serial schedule's 2.89, and 12-16% faster on every shape bench_attention times.
// G4_ATTENTION_SOFTMAX_GROUP=0 selects the serial schedule. Holding six of Q's eight boxes in the
// softmax warpgroup's registers (so that S read mostly K from shared memory) was measured 2-7%
// slower and dropped: shared memory's bandwidth does not bound it. Its softmax and P's write run
// while the tensor cores wait for the next S, so their length is the tile's: with the shorter
// softmax (softmax_tile) and P by stmatrix (write_p) the tile took 3 485 cycles in pairs against
// 3 781, and S 8192 causal 2.09 ms, 527 TFLOP/s (session 36).
//
// Masks are those of the FlashAttention-2 kernel (attention_fwd.cu) with the same helpers: key
// tiles outside the causal / sliding-window band or the query tile's documents are never loaded;
// the others are masked element by element (visible_bits) when the tile is not wholly visible.
// The tile loops are unrolled and must stay small: the instruction cache is the first limit of
// this kernel. With the mask's per-element test inlined into every element, fetching instructions
// stalled the warps 27% (serial) to 56% (pipelined) of their cycles, and head dim 256 ran at 300
// TFLOP/s at best; with the test in one compact loop, 530.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace g4::ops::cuda::attn {

namespace {

constexpr int kPartDim = 256;                // the head-dim columns of O one warpgroup holds
constexpr int kPartBoxes = kPartDim / 64;     // 64-column boxes of a part
constexpr int kGroupThreads = 128, kConsumerThreads = 2 * kGroupThreads;
constexpr int kThreads = kConsumerThreads + kGroupThreads;  // + the producer (or softmax) warpgroup
constexpr int kConsumerWarps = kGroupThreads / 32;          // per warpgroup

// The two schedules. serial (64 keys a tile, one buffer of K and V): for each tile S, exchange,
// softmax, P·V in turn; the tensor cores wait during the exchange and the softmax. pipelined (32
// keys a tile, two buffers; cluster 1 only): FlashAttention-3's intra-warpgroup overlap — the
// P·V of tile j - 1 is issued right after the Q Kᵀ of tile j and runs while tile j is exchanged
// and its softmax computed; O is rescaled once that P·V has completed. The smaller tile is what
// pays for the second buffers (Q, 2 x K, 2 x V and the partials: 208 KB).
//
// Head dim 256 is the same kernel with the warpgroups split by rows instead: each owns 64 query
// rows (128 a CTA) and the whole head dim, so there is nothing to exchange (FlashAttention-3's
// own layout). A "part" below is 256 head-dim columns: two per tile at head dim 512 (one per
// warpgroup), one at 256 (shared by both warpgroups, each reading its own 64 rows of Q).
//
// loads_only (a benchmark's instrument): the serial schedule's loads, waits and releases with no
// arithmetic and no output, so that its time is what the loads alone take (ForwardKernel::wgmma_loads_only),
// also in clusters (G4_ATTENTION_CLUSTER), where each K and V box is read from L2 once for the cluster.
enum class Schedule { serial, pipelined, softmax_group, loads_only };

// TRACE (an instrument, bench_attention --trace): the softmax group writing its cycle counters into
// FwdArgs::trace (mark, below).
template <int D, int BN, int STAGES, int CLUSTER, Schedule SCHEDULE, bool TRACE = false>
struct Cfg {
  static constexpr int kD = D, kBN = BN, kStages = STAGES, kCluster = CLUSTER;
  static constexpr bool kTrace = TRACE;
  static constexpr bool kPipelined = SCHEDULE == Schedule::pipelined;
  static constexpr bool kSoftmaxGroup = SCHEDULE == Schedule::softmax_group;
  static constexpr bool kLoadsOnly = SCHEDULE == Schedule::loads_only;
  static constexpr int kParts = D / kPartDim;              // 2: the warpgroups split d; 1: rows
  static constexpr int kRowGroups = 2 / kParts;            // 64-row groups of the query tile
  static constexpr int kBM = 64 * kRowGroups;              // query rows of a CTA
  static constexpr int kBoxes = D / 64;                    // 64-column boxes of a row block
  static constexpr uint32_t kQBoxBytes = kBM * 128;
  static constexpr uint32_t kQBytes = kBoxes * kQBoxBytes;
  static constexpr int kNT = BN / 8;                       // n8 tiles of S
  static constexpr int kKK = BN / 16;                      // k16 steps of P·V
  static constexpr uint32_t kBoxBytes = BN * 128;          // a 64-column box of BN key rows
  static constexpr uint32_t kPartBytes = kPartBoxes * kBoxBytes;
  static constexpr uint32_t kTileBytes = kParts * kPartBytes;  // one K or V tile
  // One warpgroup's S partial (f32), exchanged when the warpgroups split d.
  static constexpr uint32_t kPartialBytes =
      kParts == 2 && (SCHEDULE == Schedule::serial || SCHEDULE == Schedule::pipelined) ? 64 * BN * 4 : 0;
  // Softmax group: two buffers of P (64 x BN bf16, one SW128 box) and of the rows' rescaling
  // factors, and the rows' final 1 / sum.
  static constexpr int kPBuffers = kSoftmaxGroup ? 2 : 0;
  static constexpr uint32_t kPBytes = 64 * BN * 2;
  static constexpr uint32_t kRowFactorsBytes = kSoftmaxGroup ? (kPBuffers + 1) * 64 * 4 : 0;
  // Consumer warps that read one part of a stage, in every CTA of the cluster (the softmax group's
  // P·V warpgroups read their own part of V, its softmax warpgroup both parts of K).
  static constexpr int kPartReaders = kRowGroups * kConsumerWarps * CLUSTER;
  struct Barriers {
    uint64_t full_q;
    uint64_t full_k[STAGES][kParts], empty_k[STAGES][kParts], full_v[STAGES][kParts], empty_v[STAGES][kParts];
    uint64_t full_p[2], empty_p[2];  // softmax group
  };
  static constexpr size_t kSmemBytes = 1024 + kQBytes + 2 * size_t{STAGES} * kTileBytes + 2 * size_t{kPartialBytes} +
                                       size_t{kPBuffers} * kPBytes + kRowFactorsBytes + sizeof(Barriers);
  static_assert(D == 256 || D == 512, "head dims 256 and 512");
  static_assert(kSmemBytes <= 227 * 1024, "wgmma forward shared memory");
  static_assert(!kPipelined || CLUSTER == 1, "the pipelined schedule runs without clusters");
  static_assert(!kSoftmaxGroup || (D == 512 && BN == 64 && STAGES == 1),
                "softmax group: head dim 512, 64-key tiles, one stage");
  static_assert(!kTrace || kSoftmaxGroup, "the trace: softmax group");
  static_assert(!kLoadsOnly || (D == 512 && BN == 64 && STAGES == 1),
                "loads only: the serial head-dim-512 schedule, one stage");
  static_assert(kKK * 16 == BN && kNT * 8 == BN, "whole k16 steps and n8 tiles");
};
// Head dim 512, 64-key tiles, one stage, in clusters of CLUSTER CTAs: the serial schedule, the
// softmax group (the default) and the loads alone.
template <Schedule SCHEDULE, int CLUSTER, bool TRACE = false>
using Cfg512 = Cfg<512, 64, 1, CLUSTER, SCHEDULE, TRACE>;
using PipelinedCfg = Cfg<512, 32, 2, 1, Schedule::pipelined>;
// Head dim 256: Q (128 x 256) and two stages of K and V (64 x 256) are 192 KB.
using SerialCfg256 = Cfg<256, 64, 1, 1, Schedule::serial>;
using PipelinedCfg256 = Cfg<256, 64, 2, 1, Schedule::pipelined>;

struct Maps {
  CUtensorMap q, k, v;
};

// The register file split by setmaxnreg: 384 threads get 168 registers each at launch, and that
// allocation is all the CTA ever has — the consumers' increase is paid by the producer's decrease
// (asking for more than the launch allocation blocks setmaxnreg.inc for ever). The consumers' 128
// accumulators of O, 16-32 of S and 16 of P need about 200. ptxas allocates the code after a
// setmaxnreg to its count (checked with -Xptxas -v: the softmax group's P·V warpgroups spill at 152
// and not at 160). A fourth warpgroup does not fit, though: with 512 threads (128 registers each at
// launch) ptxas refused the m64n256 products after a setmaxnreg.inc to 176 (C7602, "insufficient
// registers (128)"; session 34).
constexpr int kLaunchRegisters = 168, kProducerRegisters = 24, kConsumerRegisters = 240;
static_assert(kProducerRegisters + 2 * kConsumerRegisters <= 3 * kLaunchRegisters, "register split");

// Named barrier `id` over the two consumer warpgroups (the producer warpgroup never joins).
__device__ __forceinline__ void consumers_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kConsumerThreads) : "memory");
}

// Part w of a K or V tile (keys k0..) into `dst`: in a cluster, this CTA loads every kCluster-th
// box for all of the cluster; the full barrier of each CTA counts the whole part.
template <class C>
__device__ __forceinline__ void load_part(unsigned char* dst, const CUtensorMap& map, int w, int kvh, int k0, int b,
                                          uint64_t* full, uint32_t rank) {
  tma::mbar_expect_bytes(full, C::kPartBytes);
  for (int box = w * kPartBoxes + static_cast<int>(rank); box < (w + 1) * kPartBoxes; box += C::kCluster) {
    if constexpr (C::kCluster == 1)
      tma::load(dst + box * C::kBoxBytes, map, 64 * box, kvh, k0, b, full);
    else
      tma::load_multicast(dst + box * C::kBoxBytes, map, 64 * box, kvh, k0, b, full, (1u << C::kCluster) - 1);
  }
}

// The CTA's query rows, every box of the head dim, into sQ on full_q.
template <class C>
__device__ __forceinline__ void load_q(const Maps& maps, typename C::Barriers* bars, unsigned char* sQ, int b, int h,
                                       int q0) {
  tma::mbar_expect_bytes(&bars->full_q, C::kQBytes);
  for (int box = 0; box < C::kBoxes; ++box)
    tma::load(sQ + box * C::kQBoxBytes, maps.q, 64 * box, h, q0, b, &bars->full_q);
}

// The producer: Q once, then for each key tile the parts of K and of V into the tile's stage,
// each as soon as the warpgroups that read that stage have released its previous tile.
template <class C>
__device__ __forceinline__ void produce(const Maps& maps, typename C::Barriers* bars, unsigned char* sQ,
                                        unsigned char* sK, unsigned char* sV, int b, int h, int kvh, int q0,
                                        int jt_begin, int jt_end) {
  const uint32_t rank = C::kCluster == 1 ? 0 : tma::cluster_rank();
  load_q<C>(maps, bars, sQ, b, h, q0);
  for (int jt = jt_begin, it = 0; jt < jt_end; ++jt, ++it) {
    const int st = it % C::kStages;
    const uint32_t free_parity = ((it / C::kStages) & 1) ^ 1;
    for (int w = 0; w < C::kParts; ++w) {
      tma::mbar_wait(&bars->empty_k[st][w], free_parity);
      load_part<C>(sK + st * C::kTileBytes, maps.k, w, kvh, jt * C::kBN, b, &bars->full_k[st][w], rank);
    }
    for (int w = 0; w < C::kParts; ++w) {
      tma::mbar_wait(&bars->empty_v[st][w], free_parity);
      load_part<C>(sV + st * C::kTileBytes, maps.v, w, kvh, jt * C::kBN, b, &bars->full_v[st][w], rank);
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

// What a consumer thread knows of its place: warpgroup, the part of the head dim it holds, thread
// in the warpgroup, quad lane, and its rows (r_local and r_local + 8 of the CTA's kBM).
struct Consumer {
  int group, part, t, cq, r_local;
};

// S += Q[rows, boxes] · K[:, boxes]ᵀ over kCount 64-column boxes from `first` of Q's rows and of
// one K stage (issued, not committed; the count is fixed so that the loop unrolls).
template <class C, int kCount>
__device__ __forceinline__ void issue_score_boxes(float (&s)[1][C::kNT][4], const unsigned char* q_rows,
                                                  const unsigned char* sK_stage, int first) {
  float(&flat)[C::kBN / 2] = reinterpret_cast<float(&)[C::kBN / 2]>(s);
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    const int box = first + i;
    const uint64_t dq = wgmma::sw128_desc(q_rows + box * C::kQBoxBytes),
                   dk = wgmma::sw128_desc(sK_stage + box * C::kBoxBytes);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if constexpr (C::kBN == 64)
        wgmma::mma_m64n64k16(flat, wgmma::advance(dq, 32 * kk), wgmma::advance(dk, 32 * kk));
      else
        wgmma::mma_m64n32k16(flat, wgmma::advance(dq, 32 * kk), wgmma::advance(dk, 32 * kk));
    }
  }
}

// Issues (without waiting) this warpgroup's S over its part of the head dim, Q[rows, part] ·
// K[:, part]ᵀ, from one K stage (a partial S when the warpgroups split d).
template <class C>
__device__ __forceinline__ void issue_scores(float (&s)[1][C::kNT][4], const unsigned char* sQ,
                                             const unsigned char* sK_stage, const Consumer& me) {
  const unsigned char* q_rows = sQ + (me.r_local / 64) * 64 * 128;  // this warpgroup's 64 rows of each box
  zero_acc(s);
  wgmma::fence();
  issue_score_boxes<C, kPartBoxes>(s, q_rows, sK_stage, me.part * kPartBoxes);
  wgmma::commit();
}

// S = S_0 + S_1. Thread t of either warpgroup holds the same elements, so each writes its partials
// where its twin reads them. The first barrier keeps this write behind the twin's read of the
// previous tile's partial.
template <class C>
__device__ __forceinline__ void exchange_scores(float (&s)[1][C::kNT][4], float* sPartial, const Consumer& me) {
  float4* mine = reinterpret_cast<float4*>(sPartial + me.group * 64 * C::kBN);
  const float4* theirs = reinterpret_cast<const float4*>(sPartial + (1 - me.group) * 64 * C::kBN);
  consumers_sync(1);
#pragma unroll
  for (int i = 0; i < C::kNT; ++i)
    mine[i * kGroupThreads + me.t] = make_float4(s[0][i][0], s[0][i][1], s[0][i][2], s[0][i][3]);
  consumers_sync(2);
#pragma unroll
  for (int i = 0; i < C::kNT; ++i) {
    const float4 x = theirs[i * kGroupThreads + me.t];
    s[0][i][0] += x.x;
    s[0][i][1] += x.y;
    s[0][i][2] += x.z;
    s[0][i][3] += x.w;
  }
}

// 2^x in one special-function instruction. exp2f adds a range test and two multiplies around it so
// that results below 2^-126 come out denormal rather than 0; a weight that small is below a bf16 P's
// and an f32 row sum's resolution next to the row maximum's weight of 1. Instructions count here: in
// the softmax group the tensor cores wait for the softmax warpgroup's softmax.
__device__ __forceinline__ float exp2_flush(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The maximum of row r's elements of a thread's S fragment (elements 2 r and 2 r + 1 of each n8 tile)
// as a tree, so that the dependent chain is log2 of the count rather than the count.
template <int NT>
__device__ __forceinline__ float fragment_row_max(const float (&s)[1][NT][4], int r) {
  float m[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) m[nt] = fmaxf(s[0][nt][2 * r], s[0][nt][2 * r + 1]);
#pragma unroll
  for (int w = NT / 2; w >= 1; w /= 2)
#pragma unroll
    for (int i = 0; i < w; ++i) m[i] = fmaxf(m[i], m[i + w]);
  return m[0];
}

// The online softmax of one tile of S (keys k0..): masks and scales it, updates the rows' running
// maxima and sums, and returns the factor O must be multiplied by (alpha, applied by the caller,
// when no P·V is in flight) and P as wgmma A fragments, one per k16 step.
//
// The maxima are fmaxf's, which skip a NaN score, where the other kernels' KeepNaN keeps it: the NaN
// still reaches its own weight (2^NaN), so the row's sum and every column of its output (P·V adds
// NaN · V) come out NaN, and so does its log-sum-exp, as they do there (GpuAttention.NanScorePropagates).
template <class C>
__device__ __forceinline__ void softmax_tile(float (&s)[1][C::kNT][4], const FwdArgs& a, const Consumer& me, int q0,
                                             int q_last, int b, int k0, float (&row_max)[2], float (&row_sum)[2],
                                             float (&alpha)[2], uint32_t (&p)[C::kKK][4]) {
  const Dims& dm = a.dims;
#pragma unroll
  for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[0][nt][e] *= a.scale_log2;
  // Only the tiles the mask cuts test their elements.
  if (k0 + C::kBN > dm.sk || !tile_fully_visible(a.mask, dm, b, q0, q_last, k0, min(k0 + C::kBN, dm.sk) - 1)) {
    const uint64_t vis = visible_bits<C::kNT>(a.mask, dm, b, q0 + me.r_local, k0, me.cq);
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!bit_set(vis, 4 * nt + e)) s[0][nt][e] = -INFINITY;
  }
  float m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = fragment_row_max(s, r);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(row_max[r], tile_max);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet keeps weights 0
    alpha[r] = exp2f(row_max[r] - m_use[r]);
    row_max[r] = m_new;
    row_sum[r] *= alpha[r];
  }
#pragma unroll
  for (int kk = 0; kk < C::kKK; ++kk) {
    float e2[2][4];
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = exp2_flush(s[0][2 * kk + half][e] - m_use[e >> 1]);
        e2[half][e] = x;
        row_sum[e >> 1] += x;  // partial: this thread's columns only, reduced at the end
      }
    p[kk][0] = pack_bf16(e2[0][0], e2[0][1]);
    p[kk][1] = pack_bf16(e2[0][2], e2[0][3]);
    p[kk][2] = pack_bf16(e2[1][0], e2[1][1]);
    p[kk][3] = pack_bf16(e2[1][2], e2[1][3]);
  }
}

// O *= alpha per row; skipped when no row of the warp changed its maximum (x * 1 is x, so the
// result is the same).
__device__ __forceinline__ void rescale(float (&o)[1][32][4], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
  for (int nt = 0; nt < 32; ++nt) {
    o[0][nt][0] *= alpha[0];
    o[0][nt][1] *= alpha[0];
    o[0][nt][2] *= alpha[1];
    o[0][nt][3] *= alpha[1];
  }
}

// Issues (without waiting) O += P V[:, part] over one V stage: V's rows are the keys (K dim), its
// columns N-major in four boxes.
template <class C>
__device__ __forceinline__ void issue_pv(float (&o)[1][32][4], const uint32_t (&p)[C::kKK][4],
                                         const unsigned char* sV_stage, int part) {
  float(&flat)[128] = reinterpret_cast<float(&)[128]>(o);
  wgmma::fence();
  const uint64_t dv = wgmma::sw128_mn_desc(sV_stage + part * C::kPartBytes, C::kBoxBytes);
#pragma unroll
  for (int kk = 0; kk < C::kKK; ++kk) wgmma::mma_m64n256k16_rs(flat, p[kk], wgmma::advance(dv, 2048 * kk));
  wgmma::commit();
}

// This warpgroup's part of its output rows, O times each row's 1 / sum (0 for a row that saw no
// visible key: its output is 0).
template <class C>
__device__ __forceinline__ void store_output(const FwdArgs& a, const Consumer& me, const float (&o)[1][32][4],
                                             const float (&inv)[2], int q0, int b, int h) {
  const Dims& dm = a.dims;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = q0 + me.r_local + 8 * r;
    if (i >= dm.sq) continue;
    bf16* orow = a.out + ((static_cast<long long>(b) * dm.sq + i) * dm.heads + h) * C::kD + me.part * kPartDim;
#pragma unroll
    for (int nt = 0; nt < 32; ++nt)
      *reinterpret_cast<__nv_bfloat162*>(orow + nt * 8 + 2 * me.cq) =
          __floats2bfloat162_rn(o[0][nt][2 * r] * inv[r], o[0][nt][2 * r + 1] * inv[r]);
  }
}

// The log-sum-exp of the thread's rows (once per row: from the threads of quad lane 0), from their
// maxima and total sums in log2 units; -inf for a row that saw no visible key.
__device__ __forceinline__ void store_lse(const FwdArgs& a, const Consumer& me, const float (&row_max)[2],
                                          const float (&row_sum)[2], int q0, int b, int h) {
  const Dims& dm = a.dims;
  if (a.lse == nullptr || me.cq != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = q0 + me.r_local + 8 * r;
    if (i < dm.sq)
      a.lse[(static_cast<long long>(b) * dm.heads + h) * dm.sq + i] =
          row_sum[r] == 0.f ? -INFINITY : (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
}

// The rows' 1 / sum from the thread's partial sums (added over the quad first).
template <class C>
__device__ __forceinline__ void inverse_sums(float (&row_sum)[2], float (&inv)[2], const Consumer& me) {
  total_row_sums<1, C::kBM>(row_sum, nullptr, 0, me.r_local, me.cq);
#pragma unroll
  for (int r = 0; r < 2; ++r) inv[r] = row_sum[r] == 0.f ? 0.f : 1.f / row_sum[r];
}

// A consumer warpgroup's key loop (either schedule), then its half of the output.
template <class C>
__device__ __forceinline__ void consume(const FwdArgs& a, typename C::Barriers* bars, const unsigned char* sQ,
                                        const unsigned char* sK, const unsigned char* sV, float* sPartial,
                                        const Consumer& me, int q0, int q_last, int b, int h, int jt_begin,
                                        int jt_end) {
  constexpr int S = C::kStages;
  const int g = me.part, n = jt_end - jt_begin;  // the barriers of this warpgroup's part
  float o[1][32][4];  // O[:, 256 group + 8 n + 2 cq + (e % 2)], rows r_local + 8 (e / 2)
  zero_acc(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // log2 units
  float alpha[2];
  float s[1][C::kNT][4];
  const auto k_stage = [&](int it) { return sK + (it % S) * C::kTileBytes; };
  const auto v_stage = [&](int it) { return sV + (it % S) * C::kTileBytes; };
  const auto parity = [](int it) { return static_cast<uint32_t>((it / S) & 1); };

  tma::mbar_wait(&bars->full_q, 0);
  if constexpr (C::kLoadsOnly) {
    for (int it = 0; it < n; ++it) {
      tma::mbar_wait(&bars->full_k[it % S][g], parity(it));
      release<C::kCluster>(&bars->empty_k[it % S][g], it + S >= n);
      tma::mbar_wait(&bars->full_v[it % S][g], parity(it));
      release<C::kCluster>(&bars->empty_v[it % S][g], it + S >= n);
    }
    return;  // no output
  } else if constexpr (!C::kPipelined) {
    for (int it = 0; it < n; ++it) {
      uint32_t p[C::kKK][4];
      tma::mbar_wait(&bars->full_k[it % S][g], parity(it));
      issue_scores<C>(s, sQ, k_stage(it), me);
      wgmma::wait<0>();
      wgmma::fence_operands(reinterpret_cast<float(&)[C::kBN / 2]>(s));
      release<C::kCluster>(&bars->empty_k[it % S][g], it + S >= n);
      if constexpr (C::kParts == 2) exchange_scores<C>(s, sPartial, me);
      softmax_tile<C>(s, a, me, q0, q_last, b, (jt_begin + it) * C::kBN, row_max, row_sum, alpha, p);
      rescale(o, alpha);
      tma::mbar_wait(&bars->full_v[it % S][g], parity(it));
      issue_pv<C>(o, p, v_stage(it), g);
      wgmma::wait<0>();
      wgmma::fence_operands(reinterpret_cast<float(&)[128]>(o));
      release<C::kCluster>(&bars->empty_v[it % S][g], it + S >= n);
    }
  } else if (n > 0) {
    uint32_t p[2][C::kKK][4];  // P of the tile whose P·V is in flight, and of the next
    tma::mbar_wait(&bars->full_k[0][g], parity(0));
    issue_scores<C>(s, sQ, k_stage(0), me);
    wgmma::wait<0>();
    wgmma::fence_operands(reinterpret_cast<float(&)[C::kBN / 2]>(s));
    release<C::kCluster>(&bars->empty_k[0][g], S >= n);
    if constexpr (C::kParts == 2) exchange_scores<C>(s, sPartial, me);
    softmax_tile<C>(s, a, me, q0, q_last, b, jt_begin * C::kBN, row_max, row_sum, alpha, p[0]);  // O is 0
    // Two tiles per trip, so that the P buffers have constant indices (registers, not memory).
    const auto step = [&](int it, uint32_t(&p_cur)[C::kKK][4], uint32_t(&p_prev)[C::kKK][4]) {
      const int prev = it - 1;
      tma::mbar_wait(&bars->full_k[it % S][g], parity(it));
      tma::mbar_wait(&bars->full_v[prev % S][g], parity(prev));
      issue_scores<C>(s, sQ, k_stage(it), me);
      issue_pv<C>(o, p_prev, v_stage(prev), g);
      wgmma::wait<1>();  // this tile's scores are done; the previous tile's P·V may still run
      wgmma::fence_operands(reinterpret_cast<float(&)[C::kBN / 2]>(s));
      release<C::kCluster>(&bars->empty_k[it % S][g], it + S >= n);
      if constexpr (C::kParts == 2) exchange_scores<C>(s, sPartial, me);
      softmax_tile<C>(s, a, me, q0, q_last, b, (jt_begin + it) * C::kBN, row_max, row_sum, alpha, p_cur);
      wgmma::wait<0>();
      wgmma::fence_operands(reinterpret_cast<float(&)[128]>(o));
      wgmma::fence_operands(reinterpret_cast<uint32_t(&)[C::kKK * 4]>(p_prev));
      release<C::kCluster>(&bars->empty_v[prev % S][g], prev + S >= n);
      rescale(o, alpha);
    };
    for (int it = 1; it < n; it += 2) {
      step(it, p[1], p[0]);
      if (it + 1 < n) step(it + 1, p[0], p[1]);
    }
    const int last = n - 1;
    tma::mbar_wait(&bars->full_v[last % S][g], parity(last));
    if (last & 1)
      issue_pv<C>(o, p[1], v_stage(last), g);
    else
      issue_pv<C>(o, p[0], v_stage(last), g);
    wgmma::wait<0>();
    wgmma::fence_operands(reinterpret_cast<float(&)[128]>(o));
  }
  float inv[2];
  inverse_sums<C>(row_sum, inv, me);
  store_output<C>(a, me, o, inv, q0, b, h);
  if (me.part == 0) store_lse(a, me, row_max, row_sum, q0, b, h);
}

// ---- The softmax-group schedule (head dim 512): a third consumer warpgroup, the softmax
// warpgroup, computes S over the whole head dim for the CTA's 64 rows, its softmax, and P into
// shared memory, while the two P·V warpgroups (one per half of the head dim, as in the serial
// schedule) multiply the previous tile's P by their halves of V. S is computed once (no exchange,
// no second copy), and the softmax runs beside the P·V products rather than between them. P has
// two buffers, so the softmax warpgroup can run a tile ahead.

// The trace's events, each a column of FwdArgs::trace (attention_kernels.h): the cycle counter when
// a warpgroup of the traced CTA reaches that step of key tile `it`.
enum TraceEvent {
  // the softmax warpgroup (the trace's third row)
  kScoreTileStart = 0,
  kKPart0Ready = 1,   // K's first part has arrived
  kScoresIssued = 2,  // both parts' products issued (the second part has arrived)
  kScoresDone = 3,    // S complete, both K parts released (and refilled by the loading thread, one CTA a cluster)
  kSoftmaxDone = 4,
  kPBufferFree = 5,  // the P·V warpgroups have released the P buffer this tile writes
  kPPublished = 6,
  // a P·V warpgroup (rows 0 and 1)
  kValueTileStart = 0,
  kPReady = 1,
  kVReady = 2,
  kProductDone = 3,
  kValueRefilled = 4,  // V released and, by the loading thread, refilled with the next tile
  kKRefilled = 5,      // in clusters: its part of K refilled with the next tile (the top of the tile)
};

// Thread 0 of each warpgroup of the traced CTA (head 0's last query tile) records `event` of tile it.
template <class C>
__device__ __forceinline__ void mark(const FwdArgs& a, int group, int it, TraceEvent event) {
  if constexpr (C::kTrace) {
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x % kGroupThreads == 0 && it < kTraceTiles)
      a.trace[(group * kTraceTiles + it) * kTraceEvents + event] = clock64();
  }
}

// Named barrier 3: the softmax warpgroup and the two P·V warpgroups, once the key loop is done.
__device__ __forceinline__ void softmax_group_sync() {
  asm volatile("bar.sync 3, %0;\n" ::"n"(3 * kGroupThreads) : "memory");
}

// The softmax warpgroup hands the P·V warpgroups one float per row of the CTA's 64 through shared
// memory: slot k of `factors` (64 floats) holds tile k's rescaling factors (k = 0, 1: the P buffer's
// index) or, in slot 2, the rows' 1 / sum. A thread's two rows are r_local and r_local + 8; the quad's
// first thread writes them.
constexpr int kInverseSumSlot = 2;
__device__ __forceinline__ void put_row_factors(float* factors, int slot, const float (&x)[2], const Consumer& me) {
  if (me.cq != 0) return;
  factors[slot * 64 + me.r_local] = x[0];
  factors[slot * 64 + me.r_local + 8] = x[1];
}
__device__ __forceinline__ void get_row_factors(const float* factors, int slot, const Consumer& me, float (&x)[2]) {
  x[0] = factors[slot * 64 + me.r_local];
  x[1] = factors[slot * 64 + me.r_local + 8];
}

// P (the thread's A fragments of a 64 x 64 tile, as softmax_tile makes them) into one SW128
// K-major box, the A operand of mma_m64n256k16_ss: element (r, c) at byte 128 r + 16 ((c / 8) ^
// (r % 8)) + 2 (c % 8). The four fragments of k16 step kk are the four 8 x 8 matrices of the warp's
// 16 rows by columns 16 kk..16 kk + 15 (rows + 0 / + 8, columns + 0 / + 8, in that order), which is
// what one stmatrix x4 stores: lane l gives the address of row l % 8 of matrix l / 8, a 16-byte
// chunk of the box. One store a step instead of four 4-byte ones.
template <class C>
__device__ __forceinline__ void write_p(unsigned char* box, const uint32_t (&p)[C::kKK][4], const Consumer& me) {
  const int lane = me.t % 32, matrix = lane / 8;
  const int row = (me.t / 32) * 16 + 8 * (matrix % 2) + lane % 8;
  const uint32_t row_address = wgmma::smem_addr(box + row * 128);
#pragma unroll
  for (int kk = 0; kk < C::kKK; ++kk) {
    const int chunk = 2 * kk + matrix / 2;
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                     row_address + ((chunk ^ (row % 8)) * 16)),
                 "r"(p[kk][0]), "r"(p[kk][1]), "r"(p[kk][2]), "r"(p[kk][3])
                 : "memory");
  }
}

// The softmax warpgroup, which also loads Q and K (its thread 0; the softmax group has no producer
// warpgroup, and each P·V warpgroup loads its own half of V, and in clusters of K after the first
// tile). Per key tile j: S = Q Kᵀ as two commit groups, one per K part, so that part 0 can be
// refilled with tile j + 1 while part 1 is multiplied; the online softmax; then P and the rows'
// rescaling factors into P buffer j % 2. At the end the rows' 1 / sum go to the factors' last slot
// and the log-sum-exp to memory.
template <class C>
__device__ __forceinline__ void score_rows(const Maps& maps, const FwdArgs& a, typename C::Barriers* bars,
                                           unsigned char* sQ, unsigned char* sK, unsigned char* sP, float* factors,
                                           const Consumer& me, int q0, int q_last, int b, int h, int kvh, int jt_begin,
                                           int jt_end) {
  const int n = jt_end - jt_begin;
  const bool loader = me.t == 0;
  const uint32_t rank = C::kCluster == 1 ? 0 : tma::cluster_rank();
  if (loader && n > 0) {
    load_q<C>(maps, bars, sQ, b, h, q0);
    for (int w = 0; w < C::kParts; ++w)
      load_part<C>(sK, maps.k, w, kvh, jt_begin * C::kBN, b, &bars->full_k[0][w], rank);
  }
  __syncwarp();  // thread 0's branches rejoin before the warp's aligned wgmma instructions
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f}, alpha[2];
  float s[1][C::kNT][4];
  float(&flat)[C::kBN / 2] = reinterpret_cast<float(&)[C::kBN / 2]>(s);
  if (n > 0) tma::mbar_wait(&bars->full_q, 0);
  for (int it = 0; it < n; ++it) {
    const uint32_t parity = it & 1;
    const int k0 = (jt_begin + it) * C::kBN;
    mark<C>(a, 2, it, kScoreTileStart);
    zero_acc(s);
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) {
      tma::mbar_wait(&bars->full_k[0][w], parity);
      if (w == 0) mark<C>(a, 2, it, kKPart0Ready);
      wgmma::fence();
      issue_score_boxes<C, kPartBoxes>(s, sQ, sK, w * kPartBoxes);
      wgmma::commit();
    }
    mark<C>(a, 2, it, kScoresIssued);
    // Each K part is released as its products complete (part 0 while part 1 still runs) and, unless
    // this was the last tile, refilled with the next tile's at once.
    const bool last = it + 1 >= n;
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) {
      if (w == 0) {
        wgmma::wait<1>();
      } else {
        wgmma::wait<0>();
        wgmma::fence_operands(flat);
      }
      release<C::kCluster>(&bars->empty_k[0][w], last);
      if (C::kCluster == 1 && loader && !last) {  // in clusters P·V warpgroup w refills part w
        tma::mbar_wait(&bars->empty_k[0][w], parity);
        load_part<C>(sK, maps.k, w, kvh, k0 + C::kBN, b, &bars->full_k[0][w], rank);
      }
      __syncwarp();
    }
    mark<C>(a, 2, it, kScoresDone);
    uint32_t p[C::kKK][4];
    softmax_tile<C>(s, a, me, q0, q_last, b, k0, row_max, row_sum, alpha, p);
    mark<C>(a, 2, it, kSoftmaxDone);
    const int buf = it % 2;
    tma::mbar_wait(&bars->empty_p[buf], ((it / 2) & 1) ^ 1);
    mark<C>(a, 2, it, kPBufferFree);
    write_p<C>(sP + buf * C::kPBytes, p, me);
    put_row_factors(factors, buf, alpha, me);
    wgmma::fence_smem_stores();  // P is read by the P·V warpgroups' wgmma
    __syncwarp();
    if (me.t % 32 == 0) tma::mbar_arrive(&bars->full_p[buf]);
    mark<C>(a, 2, it, kPPublished);
  }
  float inv[2];
  inverse_sums<C>(row_sum, inv, me);
  put_row_factors(factors, kInverseSumSlot, inv, me);
  store_lse(a, me, row_max, row_sum, q0, b, h);
  softmax_group_sync();
}

// A P·V warpgroup. Per key tile: O (its half of the head dim) times the tile's rescaling factors,
// then O += P V[:, half] with P from shared memory; P's buffer is released when the product has
// completed, and its half of V is refilled with the next tile's at once (by its thread 0: only this
// warpgroup reads that half, so its loads wait for nothing else; in clusters, for every CTA's P·V
// warpgroup of that half). At the end, O times the rows' 1 / sum.
template <class C>
__device__ __forceinline__ void weigh_values(const Maps& maps, const FwdArgs& a, typename C::Barriers* bars,
                                             unsigned char* sK, unsigned char* sV, const unsigned char* sP,
                                             const float* factors,
                                             const Consumer& me, int q0, int b, int h, int kvh, int jt_begin, int n) {
  const int g = me.part;
  const bool loader = me.t == 0;
  const uint32_t rank = C::kCluster == 1 ? 0 : tma::cluster_rank();
  if (loader && n > 0) load_part<C>(sV, maps.v, g, kvh, jt_begin * C::kBN, b, &bars->full_v[0][g], rank);
  __syncwarp();
  float o[1][32][4];
  zero_acc(o);
  float(&flat)[128] = reinterpret_cast<float(&)[128]>(o);
  const uint64_t dv = wgmma::sw128_mn_desc(sV + g * C::kPartBytes, C::kBoxBytes);
  for (int it = 0; it < n; ++it) {
    const int buf = it % 2;
    mark<C>(a, g, it, kValueTileStart);
    // In clusters K part g's refill waits for the softmax warpgroups of every CTA to release it; their
    // thread 0 would block its warp (and the warpgroup's next products) on a late peer, while this
    // warpgroup is idle here: the softmax warpgroup releases K before it publishes P.
    if (C::kCluster > 1 && loader && it + 1 < n) {
      tma::mbar_wait(&bars->empty_k[0][g], it & 1);
      load_part<C>(sK, maps.k, g, kvh, (jt_begin + it + 1) * C::kBN, b, &bars->full_k[0][g], rank);
    }
    if constexpr (C::kCluster > 1) mark<C>(a, g, it, kKRefilled);
    tma::mbar_wait(&bars->full_p[buf], (it / 2) & 1);
    mark<C>(a, g, it, kPReady);
    float alpha[2];
    get_row_factors(factors, buf, me, alpha);
    rescale(o, alpha);
    tma::mbar_wait(&bars->full_v[0][g], it & 1);
    mark<C>(a, g, it, kVReady);
    wgmma::fence();
    const uint64_t dp = wgmma::sw128_desc(sP + buf * C::kPBytes);
#pragma unroll
    for (int kk = 0; kk < C::kKK; ++kk)
      wgmma::mma_m64n256k16_ss(flat, wgmma::advance(dp, 32 * kk), wgmma::advance(dv, 2048 * kk));
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_operands(flat);
    mark<C>(a, g, it, kProductDone);
    release<C::kCluster>(&bars->empty_v[0][g], it + 1 >= n);
    if (me.t % 32 == 0) tma::mbar_arrive(&bars->empty_p[buf]);
    if (loader && it + 1 < n) {
      tma::mbar_wait(&bars->empty_v[0][g], it & 1);
      load_part<C>(sV, maps.v, g, kvh, (jt_begin + it + 1) * C::kBN, b, &bars->full_v[0][g], rank);
    }
    __syncwarp();
    mark<C>(a, g, it, kValueRefilled);
  }
  softmax_group_sync();
  float inv[2];
  get_row_factors(factors, kInverseSumSlot, me, inv);
  store_output<C>(a, me, o, inv, q0, b, h);
}

template <class C>
__global__ void __launch_bounds__(kThreads, 1) fwd_wgmma_kernel(const __grid_constant__ Maps maps, FwdArgs a) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* sQ = smem;
  unsigned char* sK = sQ + C::kQBytes;
  unsigned char* sV = sK + C::kStages * C::kTileBytes;
  float* sPartial = reinterpret_cast<float*>(sV + C::kStages * C::kTileBytes);  // [2][64 * kBN] (d split)
  unsigned char* sP = reinterpret_cast<unsigned char*>(sPartial) + 2 * C::kPartialBytes;  // [kPBuffers][kPBytes]
  float* factors = reinterpret_cast<float*>(sP + C::kPBuffers * C::kPBytes);            // [kPBuffers + 1][64]
  auto* bars = reinterpret_cast<typename C::Barriers*>(reinterpret_cast<unsigned char*>(factors) + C::kRowFactorsBytes);

  const Dims& dm = a.dims;
  const int tid = threadIdx.x;
  // Late query tiles see the most keys under a causal mask: start them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * C::kBM;
  const int b = blockIdx.y / dm.heads, h = blockIdx.y % dm.heads, kvh = h / dm.group;
  const int q_last = min(q0 + C::kBM, dm.sq) - 1;
  int klo, khi;
  key_range(a.mask, dm, q0, q_last, &klo, &khi);
  doc_key_range(a.mask, dm, b, q0, q_last, &klo, &khi);
  const int jt_begin = klo <= khi ? klo / C::kBN : 0, jt_end = klo <= khi ? khi / C::kBN + 1 : 0;

  if (tid == 0) {
    tma::mbar_init(&bars->full_q, 1);
    for (int st = 0; st < C::kStages; ++st)
      for (int w = 0; w < C::kParts; ++w) {
        tma::mbar_init(&bars->full_k[st][w], 1);
        tma::mbar_init(&bars->full_v[st][w], 1);
        tma::mbar_init(&bars->empty_k[st][w], C::kPartReaders);
        tma::mbar_init(&bars->empty_v[st][w], C::kPartReaders);
      }
    for (int buf = 0; buf < C::kPBuffers; ++buf) {
      tma::mbar_init(&bars->full_p[buf], kConsumerWarps);       // the softmax warpgroup's warps
      tma::mbar_init(&bars->empty_p[buf], 2 * kConsumerWarps);  // the P·V warpgroups' warps
    }
    tma::fence_mbar_init();
  }
  // The peers' multicast loads and arrivals may reach this CTA's barriers only once they exist.
  if constexpr (C::kCluster > 1)
    tma::cluster_sync();
  else
    __syncthreads();

  // Broadcast from lane 0, so that the compiler sees a warp-uniform role (wgmma in a path it cannot
  // prove uniform gets serialised).
  const int group = __shfl_sync(0xffffffffu, tid / kGroupThreads, 0);
  const int t = tid % kGroupThreads, lane = t % 32;
  if constexpr (C::kSoftmaxGroup) {
    // No setmaxnreg: the P·V warpgroups' 128 accumulators and the softmax warpgroup's S both fit the
    // launch allocation.
    if (group == 2) {
      const Consumer me{group, 0, t, lane % 4, (t / 32) * 16 + lane / 4};
      score_rows<C>(maps, a, bars, sQ, sK, sP, factors, me, q0, q_last, b, h, kvh, jt_begin, jt_end);
    } else {
      const Consumer me{group, group, t, lane % 4, (t / 32) * 16 + lane / 4};
      weigh_values<C>(maps, a, bars, sK, sV, sP, factors, me, q0, b, h, kvh, jt_begin, jt_end - jt_begin);
    }
  } else if (group == 2) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
    if (t == 0) produce<C>(maps, bars, sQ, sK, sV, b, h, kvh, q0, jt_begin, jt_end);
    __syncwarp();  // the producer's warp meets the cluster barrier below whole
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));
    // d split: warpgroup g holds part g of every row; row split: rows [64 g, 64 g + 64) whole.
    const Consumer me{group, C::kParts == 2 ? group : 0, t, lane % 4,
                      (C::kParts == 2 ? 0 : 64 * group) + (t / 32) * 16 + lane / 4};
    consume<C>(a, bars, sQ, sK, sV, sPartial, me, q0, q_last, b, h, jt_begin, jt_end);
  }
  // No CTA leaves while a peer may still multicast into it or arrive on its barriers.
  if constexpr (C::kCluster > 1) tma::cluster_sync();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool wgmma_forward_fits(const FwdArgs& a) {
  return a.dims.d == a.dims.dv && (a.dims.d == 256 || a.dims.d == 512) && aligned16(a.q) && aligned16(a.k) &&
         aligned16(a.v);
}

namespace {

template <class C>
void launch(const FwdArgs& a) {
  g4::cuda::allow_dynamic_smem<fwd_wgmma_kernel<C>>(C::kSmemBytes);
  const Dims& dm = a.dims;
  const Maps maps{tma::head_rows_map(a.q, dm.batch, dm.sq, dm.heads, C::kD, C::kBM),
                  tma::head_rows_map(a.k, dm.batch, dm.sk, dm.kv_heads, C::kD, C::kBN),
                  tma::head_rows_map(a.v, dm.batch, dm.sk, dm.kv_heads, C::kD, C::kBN)};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3((dm.sq + C::kBM - 1) / C::kBM, dm.batch * dm.heads);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = g4::cuda::stream();
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 1;
  cluster.val.clusterDim.y = C::kCluster;  // query heads h .. h + kCluster - 1 of one KV head
  cluster.val.clusterDim.z = 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  G4_CUDA_CHECK(cudaLaunchKernelEx(&cfg, fwd_wgmma_kernel<C>, maps, a));
  G4_CUDA_CHECK_LAUNCH();
}

// The CTAs per cluster of a head-dim-512 schedule: G4_ATTENTION_CLUSTER (1, 2 or 4; it must divide
// the GQA group, so that the cluster's query heads share one KV head) when set, else `fallback`.
int cluster_size(int group, int fallback = 1) {
  int n = fallback;
  if (const char* env = std::getenv("G4_ATTENTION_CLUSTER"); env != nullptr && *env != 0) {
    const int want = std::atoi(env);
    G4_CHECK((want == 1 || want == 2 || want == 4) && group % want == 0, "G4_ATTENTION_CLUSTER=", env,
             ": must be 1, 2 or 4 and divide the GQA group (", group, " query heads per KV head)");
    n = want;
  }
  return n;
}

// The softmax group's cluster size: pairs where the GQA group is even (see the top of this file).
int softmax_group_cluster(int group) { return cluster_size(group, group % 2 == 0 ? 2 : 1); }

// The head-dim-512 kernel of SCHEDULE in clusters of `cluster` CTAs (1, 2 or 4: cluster_size).
template <Schedule SCHEDULE, bool TRACE = false>
void launch_in_clusters(const FwdArgs& a, int cluster) {
  switch (cluster) {
    case 4: launch<Cfg512<SCHEDULE, 4, TRACE>>(a); break;
    case 2: launch<Cfg512<SCHEDULE, 2, TRACE>>(a); break;
    default: launch<Cfg512<SCHEDULE, 1, TRACE>>(a); break;
  }
}

// A switch of the head-dim-512 schedule: 0 or 1 (unset or empty: `unset`).
bool schedule_switch(const char* name, bool unset) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == 0) return unset;
  G4_CHECK(std::string_view(env) == "0" || std::string_view(env) == "1", name, "=", env, ": must be 0 or 1");
  return *env == '1';
}

}  // namespace

void forward_wgmma_loads_only(const FwdArgs& a) {
  G4_CHECK(a.dims.d == 512, "the wgmma forward's loads alone are timed at head dim 512, got ", a.dims.d);
  launch_in_clusters<Schedule::loads_only>(a, cluster_size(a.dims.group));
}

void forward_wgmma_trace(const FwdArgs& a) {
  G4_CHECK(a.dims.d == 512 && a.trace != nullptr, "the softmax group's trace: head dim 512 and a trace buffer");
  launch_in_clusters<Schedule::softmax_group, true>(a, softmax_group_cluster(a.dims.group));
}

void forward_wgmma(const FwdArgs& a, bool pipelined) {
  if (a.dims.d == 256) {
    if (pipelined)
      launch<PipelinedCfg256>(a);
    else
      launch<SerialCfg256>(a);
    return;
  }
  if (pipelined) {
    launch<PipelinedCfg>(a);
    return;
  }
  // The softmax group, in pairs where the GQA group is even (see the top of this file), unless
  // G4_ATTENTION_SOFTMAX_GROUP=0: then the serial schedule, one CTA a cluster. G4_ATTENTION_CLUSTER
  // sets the cluster size of either.
  if (schedule_switch("G4_ATTENTION_SOFTMAX_GROUP", true))
    launch_in_clusters<Schedule::softmax_group>(a, softmax_group_cluster(a.dims.group));
  else
    launch_in_clusters<Schedule::serial>(a, cluster_size(a.dims.group));
}

}  // namespace g4::ops::cuda::attn

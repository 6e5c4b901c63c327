// CUDA paged attention (bf16 pages, fp32 softmax) and the KV page writes.
//
// Work unit. The query rows of one sequence and the query heads of one kv head are flattened into
// "rows" R = query_row * group + head_in_group (the group's heads are adjacent in q, so a row is
// one d-long vector of q). A CTA owns BM consecutive rows of one sequence, one kv head, and one
// split of the keys those rows see. GQA comes for free: every key a CTA loads serves all of its
// query heads, so in a decode step (one query row per sequence) each key of a kv head is read from
// memory once per split, whatever the group size. S = Q Kᵀ and O += P V run on the tensor cores
// (mma.sync m16n8k16, attention_tiles.cuh): a decode CTA fills only `group` of its 16 rows, but the
// kernel is bound by reading K and V, and the tensor cores keep the arithmetic off that path (a
// head-dim-512, group-8 decode is 8 FLOP per byte of KV, too much for fp32 FMAs at 4.8 TB/s).
//
// Grid from shapes only (no host read of the layout, so a decode step can be captured in a CUDA
// graph): x enumerates (tile slot, kv head) pairs, y the split. Sequence i owns the slots
// [i + A_i / BM, i + 1 + A_{i+1} / BM) with A_i = cu_q[i] * group (integer division), at least as
// many as its ceil(q_len * group / BM) tiles, so N + T * group / BM slots cover every sequence; a
// CTA finds its sequence with one parallel scan of cu_q and exits when its slot or split is unused.
//
// Splits (flash decoding). When sequences x kv heads are too few to fill the GPU, the keys a CTA
// sees are cut into `splits` ranges of whole BN-key tiles (at least kMinSplitKeys keys each, so
// short sequences use fewer splits and the partial results stay small next to the KV read). Each
// split writes its normalised fp32 output and its log-sum-exp; combine_kernel merges them.
//
// Memory. K and V tiles of BN keys are gathered through the page table with 16-byte cp.async,
// STAGES tiles deep (a decode CTA has about 130 KB of KV in flight). Only keys some row of the CTA
// sees are addressed, so pages out of the window (-1) are never read; a visible key on a missing
// page is reported through ops/device_checks.h and reads as zeros. When k_pages and v_pages are one
// tensor (K=V layers), each tile is loaded once and serves as both.
//
// Two configurations per head-dim class, chosen from shapes: BM = 16 rows with the warps (8 for
// head dim 256, 4 for 512, where the K/V ring leaves no room for larger tiles) splitting the keys of
// S and the columns of O (decode: T <= 2N), or BM = 64 rows, 8 warps (prefill-heavy steps, fewer
// re-reads of the keys per query row). Both are correct for any mix of rows per sequence. The page
// table is read one tile ahead into shared memory, so the copy loop has no dependent global load.
// docs/performance.md has the measured rates.
#include "ops/cuda/paged_attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/index_errors.h"
#include "ops/cuda/vec_io.cuh"

namespace g4::ops::cuda {

namespace {

using attn::bf16;
using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using g4::cuda::launch_pdl;
using g4::cuda::pdl_begin;

constexpr int kMaxSplits = 64;
constexpr int kMinSplitKeys = 128;

struct PagedArgs {
  const bf16 *q, *k, *v;  // [T, nH, d]; pools [P, page, nKV, d] and [P, page, nKV, dv]
  bf16* out;              // [T, nH, dv], written directly when splits == 1
  float* part_o;          // [splits, T, nH, dv]: each split's normalised output (splits > 1)
  float* part_lse;        // [splits, T, nH]: its log2-sum-exp, -inf when it saw no key
  const int32_t *cu_q, *kv_len, *table, *kv_start;  // kv_start may be null
  const int32_t* q_last;  // per query row, the last key it sees (null: its own position)
  int n_seq, max_pages, page_size, num_pages;
  int rows_total, heads, kv_heads, group, d, dv;
  long long window;
  int splits, min_split_tiles;
  int kv_same;  // k and v are one pool: load each tile once
  float scale_log2;
  IndexErrorSink sink;
};

template <int HD_, int BN_, int WM_, int WN_, int STAGES_>
struct Cfg {
  static constexpr int HD = HD_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_;
  static constexpr int BM = 16 * WM;
  static constexpr int kThreads = 32 * WM * WN;
  static constexpr int LD = HD + 8;   // padded smem rows: ldmatrix rows fall in different banks
  static constexpr int LDP = BN + 8;  // P rows
  static constexpr int NT_S = BN / WN / 8;
  static constexpr int NT_O = HD / WN / 8;
  static_assert(NT_S >= 1 && NT_O % 2 == 0 && BN % 16 == 0, "tile shape");
  static constexpr size_t kSmemQ = size_t(BM) * LD * 2, kSmemTile = size_t(BN) * LD * 2;
  static constexpr size_t kSmemP = size_t(BM) * LDP * 2, kSmemRed = size_t(WN) * BM * 4;
  static constexpr size_t kSmemRows = size_t(STAGES) * BN * 8;
  static constexpr size_t kSmem = kSmemQ + 2 * STAGES * kSmemTile + kSmemP + kSmemRed + kSmemRows;
};

// First slot of sequence i (see the file comment).
__device__ __forceinline__ long long first_slot(const int32_t* cu_q, int i, int group, int bm) {
  return i + static_cast<long long>(cu_q[i]) * group / bm;
}

// The page of key j as the page table gives it: -1 when j is past j_hi (not needed), else the
// table entry (-1 for a key past the table).
__device__ __forceinline__ int lookup_page(const PagedArgs& a, const int32_t* table_row, int j, int j_hi, int* p) {
  if (j > j_hi) return -1;
  *p = j / a.page_size;
  return *p < a.max_pages ? table_row[*p] : -1;
}

// Pool row of key j of kv head kvh from its page, or -1 (read as zeros); a needed key on a missing
// page is reported.
__device__ __forceinline__ long long key_row(const PagedArgs& a, int seq, int kvh, int j, int j_hi, int p, int phys) {
  if (j > j_hi) return -1;
  if (phys < 0 || phys >= a.num_pages) {
    report_index_error(a.sink, phys, seq, a.num_pages);
    return -1;
  }
  return (static_cast<long long>(phys) * a.page_size + (j - p * a.page_size)) * a.kv_heads + kvh;
}

// cp.async of 16 bytes (zero-filled when !valid) that asks L2 to fetch the whole 256-byte sector
// group: a key row is 512 or 1024 contiguous bytes, read by neighbouring threads.
__device__ __forceinline__ void cp_async16_l2(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(attn::smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}

// Gathers the BN keys whose pool rows are rows[0 .. BN) (-1: zero-filled) into sK / sV.
template <class C>
__device__ __forceinline__ void load_kv_tile(const PagedArgs& a, const long long* rows, bf16* sK, bf16* sV) {
  constexpr int CH = C::HD / 8;
  constexpr int kIters = (C::BN * CH + C::kThreads - 1) / C::kThreads;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int idx = threadIdx.x + it * C::kThreads;
    if ((C::BN * CH) % C::kThreads != 0 && idx >= C::BN * CH) break;
    const int r = idx / CH, c = (idx % CH) * 8;
    const long long row = rows[r];
    const bool k_ok = row >= 0 && c < a.d;
    cp_async16_l2(sK + r * C::LD + c, k_ok ? a.k + row * a.d + c : a.k, k_ok);
    if (!a.kv_same) {
      const bool v_ok = row >= 0 && c < a.dv;
      cp_async16_l2(sV + r * C::LD + c, v_ok ? a.v + row * a.dv + c : a.v, v_ok);
    }
  }
}

// The B fragment (ldmatrix x2) of key n-tile n0 + 8·nt, k columns [kk, kk + 16), for qk_gemm_x2.
__device__ __forceinline__ void load_k_x2(uint32_t& b0, uint32_t& b1, const bf16* sK, int ld, int n0, int kk) {
  const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
  const bf16* p = sK + (n0 + r) * ld + kk + 8 * (i & 1);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(attn::smem_u32(p)));
}

// S (16 rows x 8·NT keys) += Q[m0.., :] K[n0.., :]ᵀ over HD; for an odd number of key n-tiles.
// With one n-tile and head dim 512 (8 keys a warp at decode) the 32 k-steps would be one chain of
// dependent mma, each also waiting for its own fragments' shared-memory loads. There the fragments of
// step k + 1 are loaded before step k's mma is issued, and kChains accumulators take the steps in
// turn, added at the end in a fixed order (docs/performance.md: the d 512 decode read at 65% of a
// copy against d 256's 85%, half of its stalls on dependencies).
template <int NT, int HD>
__device__ __forceinline__ void qk_gemm_x2(float (&acc)[1][NT][4], const bf16* sQ, int ld, int m0, const bf16* sK,
                                           int n0) {
  if constexpr (NT == 1 && HD >= 512) {
    constexpr int kChains = 4, kSteps = HD / 16;
    float part[kChains][4];
#pragma unroll
    for (int c = 0; c < kChains; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[c][e] = c == 0 ? acc[0][0][e] : 0.f;
    uint32_t af[2][4], bf[2][2];
    attn::load_a<false>(af[0], sQ, ld, m0, 0);
    load_k_x2(bf[0][0], bf[0][1], sK, ld, n0, 0);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      if (k + 1 < kSteps) {
        attn::load_a<false>(af[(k + 1) % 2], sQ, ld, m0, 16 * (k + 1));
        load_k_x2(bf[(k + 1) % 2][0], bf[(k + 1) % 2][1], sK, ld, n0, 16 * (k + 1));
      }
      attn::mma_bf16(part[k % kChains], af[k % 2], bf[k % 2][0], bf[k % 2][1]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[0][0][e] = (part[0][e] + part[1][e]) + (part[2][e] + part[3][e]);
  } else {
#pragma unroll
    for (int kk = 0; kk < HD; kk += 16) {
      uint32_t af[4];
      attn::load_a<false>(af, sQ, ld, m0, kk);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        uint32_t b0, b1;
        load_k_x2(b0, b1, sK, ld, n0 + nt * 8, kk);
        attn::mma_bf16(acc[0][nt], af, b0, b1);
      }
    }
  }
}

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) paged_kernel(PagedArgs a) {
  pdl_begin();
  constexpr int HD = C::HD, BM = C::BM, BN = C::BN, WN = C::WN, LD = C::LD, LDP = C::LDP, S = C::STAGES;
  constexpr int NT_S = C::NT_S, NT_O = C::NT_O;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sKV = sQ + BM * LD;  // stage s: K at sKV + 2s·BN·LD, V after it
  bf16* sP = sKV + 2 * S * BN * LD;
  float* sRed = reinterpret_cast<float*>(sP + BM * LDP);
  long long* sRows = reinterpret_cast<long long*>(sRed + WN * BM);  // [S][BN]: pool rows of a stage's keys
  __shared__ int s_seq;

  const int tid = threadIdx.x;
  // The kv heads of one tile are neighbours in the grid: running together, they read the
  // neighbouring pieces of the same pages.
  const int slot = blockIdx.x / a.kv_heads, kvh = blockIdx.x % a.kv_heads, split = blockIdx.y;

  // The sequence that owns this slot: the one i with first_slot(i) <= slot < first_slot(i + 1).
  if (tid == 0) s_seq = -1;
  __syncthreads();
  for (int i = tid; i < a.n_seq; i += C::kThreads)
    if (first_slot(a.cu_q, i, a.group, BM) <= slot && slot < first_slot(a.cu_q, i + 1, a.group, BM)) s_seq = i;
  __syncthreads();
  const int seq = s_seq;
  if (seq < 0) return;
  const int q_begin = a.cu_q[seq], q_len = a.cu_q[seq + 1] - q_begin;
  const long long seq_rows = static_cast<long long>(q_len) * a.group;
  const long long r0 = (slot - first_slot(a.cu_q, seq, a.group, BM)) * static_cast<long long>(BM);
  if (r0 >= seq_rows) return;
  const int tile_rows = static_cast<int>(min(static_cast<long long>(BM), seq_rows - r0));
  const int kv_len = a.kv_len[seq], kv_start = a.kv_start != nullptr ? max(a.kv_start[seq], 0) : 0;
  const int first_pos = kv_len - q_len;  // position of the sequence's first query row
  auto lowest_seen = [&](int pos) {
    return a.window > 0 ? max(kv_start, static_cast<int>(max(0LL, pos - a.window + 1))) : kv_start;
  };

  // Keys the tile's rows see, then this split's share of them in whole BN-key tiles.
  const int pos_lo = first_pos + static_cast<int>(r0 / a.group);
  const int pos_hi = first_pos + static_cast<int>((r0 + tile_rows - 1) / a.group);
  // A row's reach: its own position, or its q_last (non-decreasing, so the tile's last row reaches furthest).
  auto last_seen = [&](long long R, int pos) {
    return a.q_last != nullptr ? static_cast<int>(a.q_last[q_begin + R / a.group]) : pos;
  };
  const int lo = lowest_seen(pos_lo), hi = min(last_seen(r0 + tile_rows - 1, pos_hi), kv_len - 1);
  const int key_tiles = hi >= lo ? (hi - lo) / BN + 1 : 0;
  const int per_split = max((key_tiles + a.splits - 1) / a.splits, a.min_split_tiles);
  const int t_begin = min(split * per_split, key_tiles), t_end = min(t_begin + per_split, key_tiles);
  const int n_tiles = t_end - t_begin;
  const int split_lo = lo + t_begin * BN, split_hi = min(hi, lo + t_end * BN - 1);

  // Q rows of the tile: row r is query row q_begin + (r0 + r) / group, head kvh·group + (r0 + r) % group.
  {
    constexpr int CH = HD / 8;
    for (int idx = tid; idx < BM * CH; idx += C::kThreads) {
      const int r = idx / CH, c = (idx % CH) * 8;
      const long long R = r0 + r;
      const bool ok = r < tile_rows && c < a.d;
      const bf16* src = a.q;
      if (ok) {
        const long long qrow = q_begin + R / a.group;
        src = a.q + (qrow * a.heads + static_cast<long long>(kvh) * a.group + R % a.group) * a.d + c;
      }
      cp_async16(sQ + r * LD + c, src, ok);
    }
  }
  const int32_t* table_row = a.table + static_cast<long long>(seq) * a.max_pages;
  auto stage_k = [&](int t) { return sKV + 2 * (t % S) * BN * LD; };
  auto stage_v = [&](int t) { return a.kv_same ? stage_k(t) : stage_k(t) + BN * LD; };
  // Pool rows of the first S tiles; later ones are looked up one iteration before their loads.
  for (int idx = tid; idx < S * BN; idx += C::kThreads) {
    const int j = split_lo + idx, u = idx / BN;
    int p = 0;
    const int phys = u < n_tiles ? lookup_page(a, table_row, j, split_hi, &p) : -1;
    if (u < n_tiles) sRows[idx] = key_row(a, seq, kvh, j, split_hi, p, phys);
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < S - 1; ++t) {
    if (t < n_tiles) load_kv_tile<C>(a, sRows + t * BN, stage_k(t), stage_v(t));
    cp_async_commit();
  }

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, cq = lane % 4;
  const int wm = warp % C::WM, wn = warp / C::WM;
  const int r_local = wm * 16 + g;  // CTA row of this thread's first accumulator row (the other is + 8)
  const int s_col0 = wn * (BN / WN), o_col0 = wn * (HD / WN);
  // Visible keys of this thread's two rows within the split: [row_lo, row_hi].
  int row_lo[2], row_hi[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rr = r_local + 8 * r;
    const int pos = first_pos + static_cast<int>((r0 + rr) / a.group);
    row_lo[r] = max(lowest_seen(pos), split_lo);
    row_hi[r] = rr < tile_rows ? min(last_seen(r0 + rr, pos), split_hi) : -1;
  }

  float o[1][NT_O][4];
  attn::zero_acc(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // log2 units

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait<S - 2>();
    __syncthreads();  // tile t (and Q) visible to all; every warp is done with tile t - 1's stage
    if (t + S - 1 < n_tiles) load_kv_tile<C>(a, sRows + ((t + S - 1) % S) * BN, stage_k(t + S - 1), stage_v(t + S - 1));
    cp_async_commit();
    // Page lookup for tile t + S: issued now, its latency hidden behind this tile's arithmetic; the
    // row is stored at the end of the iteration into the slot of tile t, whose loads went out long ago.
    const int u = t + S, j_u = split_lo + u * BN + tid;
    const bool look = tid < BN && u < n_tiles;
    int p_u = 0;
    const int phys_u = look ? lookup_page(a, table_row, j_u, split_hi, &p_u) : -1;
    const bf16* sK = stage_k(t);
    const bf16* sV = stage_v(t);
    const int k0 = split_lo + t * BN;

    float s[1][NT_S][4];
    attn::zero_acc(s);
    if constexpr (NT_S % 2 == 0) {
      attn::warp_gemm<1, NT_S, HD, false, false>(s, sQ, LD, wm * 16, sK, LD, s_col0, 0);
    } else {
      qk_gemm_x2<NT_S, HD>(s, sQ, LD, wm * 16, sK, s_col0);
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + s_col0 + nt * 8 + 2 * cq + (e & 1), r = e >> 1;
        const float x = j >= row_lo[r] && j <= row_hi[r] ? s[0][nt][e] * a.scale_log2 : -INFINITY;
        s[0][nt][e] = x;
        tile_max[r] = attn::KeepNaN{}(tile_max[r], x);
      }
    }
    float m_use[2];
    attn::online_softmax_step<WN, BM>(tile_max, row_max, row_sum, o, m_use, sRed, wn, r_local, cq, attn::KeepNaN{});
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
      const float p0 = exp2f(s[0][nt][0] - m_use[0]), p1 = exp2f(s[0][nt][1] - m_use[0]);
      const float p2 = exp2f(s[0][nt][2] - m_use[1]), p3 = exp2f(s[0][nt][3] - m_use[1]);
      row_sum[0] += p0 + p1;  // this thread's columns only, reduced at the end
      row_sum[1] += p2 + p3;
      const int col = s_col0 + nt * 8 + 2 * cq;
      *reinterpret_cast<uint32_t*>(sP + r_local * LDP + col) = attn::pack_bf16(p0, p1);
      *reinterpret_cast<uint32_t*>(sP + (r_local + 8) * LDP + col) = attn::pack_bf16(p2, p3);
    }
    __syncthreads();  // P complete
    attn::warp_gemm<1, NT_O, BN, false, true>(o, sP, LDP, wm * 16, sV, LD, o_col0, 0);
    if (look) sRows[(u % S) * BN + tid] = key_row(a, seq, kvh, j_u, split_hi, p_u, phys_u);
  }
  cp_async_wait<0>();

  attn::total_row_sums<WN, BM>(row_sum, sRed, wn, r_local, cq);

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rr = r_local + 8 * r;
    if (rr >= tile_rows) continue;
    const long long R = r0 + rr;
    const long long t_row = q_begin + R / a.group;
    if (t_row >= a.rows_total) continue;
    const long long oh = t_row * a.heads + static_cast<long long>(kvh) * a.group + R % a.group;  // (row, head)
    const bool empty = row_sum[r] == 0.f;  // no visible key in this split
    const float inv = empty ? 0.f : 1.f / row_sum[r];
    if (a.splits == 1) {
      bf16* orow = a.out + oh * a.dv;
#pragma unroll
      for (int nt = 0; nt < NT_O; ++nt) {
        const int col = o_col0 + nt * 8 + 2 * cq;
        if (col < a.dv)
          *reinterpret_cast<__nv_bfloat162*>(orow + col) =
              __floats2bfloat162_rn(o[0][nt][2 * r] * inv, o[0][nt][2 * r + 1] * inv);
      }
    } else {
      const long long part = static_cast<long long>(split) * a.rows_total * a.heads + oh;
      if (!empty) {
        float* orow = a.part_o + part * a.dv;
#pragma unroll
        for (int nt = 0; nt < NT_O; ++nt) {
          const int col = o_col0 + nt * 8 + 2 * cq;
          if (col < a.dv)
            *reinterpret_cast<float2*>(orow + col) = make_float2(o[0][nt][2 * r] * inv, o[0][nt][2 * r + 1] * inv);
        }
      }
      if (wn == 0 && cq == 0) a.part_lse[part] = empty ? -INFINITY : row_max[r] + log2f(row_sum[r]);
    }
  }
}

// out[row] = the splits' outputs weighted by their share of the softmax sum; one CTA per (row, head).
__global__ void __launch_bounds__(128) combine_kernel(const float* __restrict__ part_o,
                                                      const float* __restrict__ part_lse, bf16* __restrict__ out,
                                                      long long row_heads, int dv, int splits) {
  pdl_begin();
  const long long rh = blockIdx.x;
  float m = -INFINITY;  // a NaN split makes the row NaN
  for (int s = 0; s < splits; ++s) m = attn::KeepNaN{}(m, part_lse[s * row_heads + rh]);
  for (int c = threadIdx.x * 4; c < dv; c += blockDim.x * 4) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, wsum = 0.f;
    if (m != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float l = part_lse[s * row_heads + rh];
        if (l == -INFINITY) continue;  // that split wrote no output
        const float w = exp2f(l - m);
        const float4 v = *reinterpret_cast<const float4*>(part_o + (s * row_heads + rh) * dv + c);
        wsum += w;
        acc[0] += w * v.x;
        acc[1] += w * v.y;
        acc[2] += w * v.z;
        acc[3] += w * v.w;
      }
    }
    const float inv = wsum == 0.f ? 0.f : 1.f / wsum;  // a NaN weight keeps NaN
    bf16* o = out + rh * dv + c;
    *reinterpret_cast<__nv_bfloat162*>(o) = __floats2bfloat162_rn(acc[0] * inv, acc[1] * inv);
    *reinterpret_cast<__nv_bfloat162*>(o + 2) = __floats2bfloat162_rn(acc[2] * inv, acc[3] * inv);
  }
}

// The fewest key splits that keep at least 80% of the GPU busy over a whole number of waves
// (`wave` CTAs run at once); the tiles alone when they do.
int choose_splits(int64_t tiles, int64_t wave) {
  for (int s = 1; s < kMaxSplits; ++s) {
    const int64_t ctas = tiles * s, waves = (ctas + wave - 1) / wave;
    if (ctas * 5 >= waves * wave * 4) return s;
  }
  return kMaxSplits;
}

// Launches configuration C over `slots` tile slots per kv head (`tiles` of them used, at most),
// splitting the keys when the tiles do not fill the GPU, then merges the splits into a.out.
template <class C>
void launch_paged(PagedArgs a, int64_t slots, int64_t tiles) {
  g4::cuda::allow_dynamic_smem<paged_kernel<C>>(C::kSmem);
  static const int per_sm = [] {  // CTAs of this kernel per multiprocessor
    int n = 0;
    G4_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, paged_kernel<C>, C::kThreads, C::kSmem));
    return std::max(n, 1);
  }();
  a.min_split_tiles = (kMinSplitKeys + C::BN - 1) / C::BN;
  a.splits = choose_splits(tiles * a.kv_heads, int64_t{per_sm} * g4::cuda::device_sm_count());
  const int64_t row_heads = int64_t{a.rows_total} * a.heads;
  Tensor part_o, part_lse;  // freed after the launches are queued: the caching allocator is stream-ordered
  if (a.splits > 1) {
    part_o = Tensor::empty({a.splits, row_heads, a.dv}, DType::F32, Device::CUDA);
    part_lse = Tensor::empty({a.splits, row_heads}, DType::F32, Device::CUDA);
    a.part_o = part_o.data<float>();
    a.part_lse = part_lse.data<float>();
  }
  const dim3 grid(static_cast<unsigned>(slots * a.kv_heads), static_cast<unsigned>(a.splits));
  launch_pdl(paged_kernel<C>, grid, C::kThreads, C::kSmem, a);
  if (a.splits > 1) {
    launch_pdl(combine_kernel, static_cast<unsigned>(row_heads), 128, 0, a.part_o, a.part_lse, a.out, row_heads, a.dv,
               a.splits);
  }
}

// The configuration of head-dim class hd: 16 rows per CTA for decode steps, else 64. A head-dim-256
// decode step of many CTAs (`narrow`) takes 32-key tiles and 4 warps: half the shared memory, so two
// CTAs share a multiprocessor and one streams its keys while the other starts or ends. With one CTA
// a multiprocessor (64-key tiles, 203 KB of K/V ring), a short sequence's CTA (a few tiles) spends
// much of its life filling its ring and draining it, with nothing else in flight there. On an H200
// the narrow tiles read 5-20% faster from 8 sequences up and 12% slower at one (4K keys, whose
// splits fill the GPU either way); forced on, E4B's 2-kv-head steps of 32-64 sequences lost 4-6% end
// to end, which the two-wave rule leaves wide (docs/performance.md, session 29).
template <bool Decode>
void launch_class(const PagedArgs& a, int hd, int64_t slots, int64_t tiles, bool narrow) {
  if constexpr (Decode) {
    if (hd <= 64) return launch_paged<Cfg<64, 64, 1, 4, 3>>(a, slots, tiles);
    if (hd <= 128) return launch_paged<Cfg<128, 64, 1, 4, 3>>(a, slots, tiles);
    if (hd <= 256 && narrow) return launch_paged<Cfg<256, 32, 1, 4, 3>>(a, slots, tiles);
    if (hd <= 256) return launch_paged<Cfg<256, 64, 1, 8, 3>>(a, slots, tiles);
    return launch_paged<Cfg<512, 32, 1, 4, 3>>(a, slots, tiles);
  } else {
    if (hd <= 64) return launch_paged<Cfg<64, 64, 4, 2, 2>>(a, slots, tiles);
    if (hd <= 128) return launch_paged<Cfg<128, 64, 4, 2, 2>>(a, slots, tiles);
    if (hd <= 256) return launch_paged<Cfg<256, 64, 4, 2, 2>>(a, slots, tiles);
    return launch_paged<Cfg<512, 32, 4, 2, 2>>(a, slots, tiles);
  }
}

int checked_int(const char* what, int64_t x) {
  G4_CHECK(x >= 0 && x <= std::numeric_limits<int>::max(), "paged_attention: ", what, " = ", x,
           " does not fit the kernels' 32-bit indices");
  return static_cast<int>(x);
}

// An index tensor of the layout as i32 on the GPU (converted on the device when it is i64).
Tensor as_i32(const Tensor& t) { return t.dtype() == DType::I32 ? t : t.to(DType::I32); }

}  // namespace

Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale) {
  raise_index_errors(/*wait=*/false);
  const int64_t rows = q.size(0), heads = q.size(1), dv = v_pages.size(3);
  Tensor out = Tensor::empty({rows, heads, dv}, DType::BF16, Device::CUDA);
  const int64_t n = layout.page_table.size(0);
  if (out.numel() == 0 || n == 0) return out;
  G4_CHECK(aligned16(q.raw()) && aligned16(k_pages.raw()) && aligned16(v_pages.raw()),
           "paged_attention: the CUDA kernels read q ", q.describe(), ", k_pages ", k_pages.describe(), " and v_pages ",
           v_pages.describe(), " in 16-byte units, but one of them starts at an address that is not 16-byte aligned");
  const Tensor cu_q = as_i32(layout.cu_q), kv_len = as_i32(layout.kv_len), table = as_i32(layout.page_table);
  const Tensor kv_start = layout.kv_start.defined() ? as_i32(layout.kv_start) : Tensor();
  const Tensor q_last = layout.q_last.defined() ? as_i32(layout.q_last) : Tensor();

  PagedArgs a{};
  a.q = static_cast<const bf16*>(q.raw());
  a.k = static_cast<const bf16*>(k_pages.raw());
  a.v = static_cast<const bf16*>(v_pages.raw());
  a.out = static_cast<bf16*>(out.raw());
  a.cu_q = cu_q.data<int32_t>();
  a.kv_len = kv_len.data<int32_t>();
  a.table = table.data<int32_t>();
  a.kv_start = kv_start.defined() ? kv_start.data<int32_t>() : nullptr;
  a.q_last = q_last.defined() ? q_last.data<int32_t>() : nullptr;
  a.n_seq = checked_int("sequences", n);
  a.max_pages = checked_int("max_pages", layout.page_table.size(1));
  a.page_size = checked_int("page_size", k_pages.size(1));
  a.num_pages = checked_int("pages", k_pages.size(0));
  a.rows_total = checked_int("query rows", rows);
  a.heads = checked_int("query heads", heads);
  a.kv_heads = checked_int("kv heads", k_pages.size(2));
  a.group = a.heads / a.kv_heads;
  a.d = static_cast<int>(q.size(2));
  a.dv = static_cast<int>(dv);
  a.window = layout.window;
  a.kv_same = k_pages.raw() == v_pages.raw() && a.d == a.dv ? 1 : 0;
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  a.sink = index_error_sink(IndexOp::PagedAttentionPage);

  // Decode-like steps (about one row per sequence) take the 16-row tiles.
  const bool decode = rows <= 2 * n;
  const int bm = decode ? 16 : 64;
  const int64_t slots = n + rows * a.group / bm;
  checked_int("tile slots x kv heads", slots * a.kv_heads);
  // Used slots, at most; in a decode step counted as if the batch were padded to a power of two
  // (the engine's CUDA graph buckets), so that a sequence's splits, and with them its rounding,
  // are the same in a padded graph replay and in an eager step of the live rows alone.
  const int64_t tile_n = decode ? static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(n))) : n;
  const int64_t tiles = std::max<int64_t>(tile_n, ((rows + tile_n - n) * a.group + bm - 1) / bm);
  const int hd = std::max(a.d, a.dv);
  if (decode) {
    // Narrow tiles once the step's CTAs fill two waves of the wide ones (from the padded count, as
    // the splits: a graph replay and an eager step take the same tiles). G4_PAGED_DECODE_NARROW=0 or
    // 1 forces them off or on.
    static const int narrow_mode = env_int("G4_PAGED_DECODE_NARROW", -1, 0, 1, "from the step's CTAs");
    const bool narrow = narrow_mode == -1 ? tiles * a.kv_heads >= 2 * int64_t{g4::cuda::device_sm_count()}
                                          : narrow_mode == 1;
    launch_class<true>(a, hd, slots, tiles, narrow);
  } else {
    launch_class<false>(a, hd, slots, tiles, false);
  }
  return out;
}

namespace {

// One CTA per token: its k row and v row copied in units of U (16 bytes when aligned).
template <class U>
__global__ void __launch_bounds__(128)
    write_kv_kernel(const U* __restrict__ k, const U* __restrict__ v, U* __restrict__ k_pages, U* __restrict__ v_pages,
                    const int64_t* __restrict__ slots, int64_t pool_rows, int64_t k_units, int64_t v_units,
                    IndexErrorSink sink) {
  pdl_begin();
  const int64_t t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;  // a token this layer kind does not keep
  if (slot >= pool_rows) {
    if (threadIdx.x == 0) report_index_error(sink, slot, t, pool_rows);
    return;
  }
  for (int64_t u = threadIdx.x; u < k_units; u += blockDim.x) k_pages[slot * k_units + u] = k[t * k_units + u];
  for (int64_t u = threadIdx.x; u < v_units; u += blockDim.x) v_pages[slot * v_units + u] = v[t * v_units + u];
}

}  // namespace

void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots) {
  raise_index_errors(/*wait=*/false);
  const int64_t tokens = k.size(0);
  if (tokens == 0) return;
  G4_CHECK(tokens <= std::numeric_limits<int>::max(), "write_kv_pages: ", tokens, " tokens are too many for one grid");
  const Tensor slot64 = slots.dtype() == DType::I64 ? slots : slots.to(DType::I64);
  const int64_t k_row = k.numel() / tokens, v_row = v.numel() / tokens;
  const IndexErrorSink sink = index_error_sink(IndexOp::WriteKvSlot);
  const bool wide = aligned16(k.raw()) && aligned16(v.raw()) && aligned16(k_pages.raw()) && aligned16(v_pages.raw()) &&
                    k_row % 8 == 0 && v_row % 8 == 0;
  auto launch = [&](auto unit_tag, int per_unit) {
    using U = decltype(unit_tag);
    launch_pdl(write_kv_kernel<U>, static_cast<unsigned>(tokens), 128, 0, static_cast<const U*>(k.raw()),
               static_cast<const U*>(v.raw()), static_cast<U*>(k_pages.raw()), static_cast<U*>(v_pages.raw()),
               slot64.data<int64_t>(), k_pages.size(0) * k_pages.size(1), k_row / per_unit, v_row / per_unit, sink);
  };
  if (wide) {
    launch(uint4{}, 8);
  } else {
    launch(uint16_t{}, 1);
  }
}

}  // namespace g4::ops::cuda

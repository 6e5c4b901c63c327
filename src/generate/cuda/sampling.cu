// gen::sample_batch on the GPU: four kernels over logits [R, V] f32 and one copy of the results to
// the host (the only synchronisation).
//   1. stats    (chunks x rows): per chunk of tokens, the largest logit, its first id and
//                Σ exp(x - max), and whether a NaN or +inf was seen. Given the LM head's product
//                instead (bf16, before the final softcap: the engine's steps), it also widens and
//                caps each logit as ops::softcap_to_f32 does, into the f32 logits the others read,
//                which saves that op's pass and a second read of its output.
//   2. select   (one block per row): the row's max; for rows that need them, the cuts of top-k
//                (the k-th largest logit) and top-p (a most-significant-digit-first search over the
//                fp32 keys of z, with exact fixed-point masses), and the N-th largest logit for the
//                top-N alternatives. Radix steps of 8 bits over shared-memory histograms.
//   3. draw     (chunks x rows): per chunk, the exponential-race winner among the kept tokens and
//                Σ exp(z) over them (only for processed log-probs). The row's most likely token's
//                race score (from select) bounds the winner's from below, so a token whose z plus a
//                cheap bound of its noise (race_boost_bound) stays under it is passed over without
//                the noise's two logarithms: on a 262 144-token row nearly every token is.
//   4. finalize (one block per row): merges the chunks, computes the log-probs and gathers the
//                top-N (ties by lower id, by an ordered compaction), into one result buffer.
// Every decision uses generate/sampling_math.h as the CPU reference does, so both pick the same
// tokens; the log-probs differ from the reference by fp32 summation order only.
#include "generate/cuda/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "core/cuda/pdl.cuh"
#include "core/cuda/runtime.h"
#include "generate/sampling_math.h"
#include "ops/cuda/common.cuh"

namespace g4::gen::cuda {

namespace {

using gen::detail::det_mass;
using gen::detail::key_float;
using gen::detail::order_key;
using gen::detail::race_boost_bound;
using gen::detail::race_log_e;
using gen::detail::race_words;
using g4::cuda::launch_pdl;
using g4::ops::cuda::bf16_t;
using g4::ops::cuda::softcap_value;
using g4::ops::cuda::to_f32;
using g4::cuda::pdl_begin;

constexpr int kStreamThreads = 256;
// Groups of 4 tokens per thread of the streaming kernels, all loaded before any is used so that
// they are in flight together. Chunks of 16 groups a thread (16 384 tokens) were slower on an H100,
// at 64 rows 227 us a call against 130 (T 1): fewer, heavier blocks.
constexpr int kThreadGroups = 4;
constexpr int64_t kChunk = int64_t{4} * kStreamThreads * kThreadGroups;  // tokens per block
constexpr int kSelectThreads = 1024;
constexpr int kFinalThreads = 1024;
constexpr unsigned kFull = 0xffffffffu;
// Bound on a race score's noise -ln(E): E >= -ln(1 - 2^-33) > 1.1e-10, so -ln(E) < 22.9.
constexpr float kMaxRaceBoost = 23.0f;

struct RowParams {
  uint64_t seed, draw;
  double top_p;     // 1: no cut
  float temperature;  // 0: greedy
  float min_p_log;  // ln(min_p) in fp32; -inf: no cut
  int32_t top_k;    // 0: no cut
  int32_t top_n;    // alternatives to gather (already min(top_logprobs, V))
  int32_t processed;
  int32_t pad;
};

struct Stat {  // a running (max, Σ exp(x - max)) with the first id of the max
  float max, sum;
  int32_t argmax, bad;
};

struct Draw {  // the best race score so far, its token and Σ exp(z) over kept tokens
  float score;
  int32_t token;
  float kept_sum;
  int32_t pad;
};

struct RowInfo {
  float max;
  float floor;       // keep z >= floor
  uint32_t top_key;  // order key of the N-th largest logit
  float race_floor;  // the race score of the row's first most likely token: the winner's is at least this
};

struct RowResult {
  int32_t token;
  float logprob;
  int32_t status;  // 0 ok, 1 a NaN or +inf logit, 2 no finite logit
  int32_t top_n;
};

struct TopEntry {
  int32_t token;
  float logprob;
};

__device__ inline float neg_inf() { return -INFINITY; }

__device__ inline Stat stat_identity() { return Stat{neg_inf(), 0.f, -1, 0}; }
__device__ inline Draw draw_identity() { return Draw{neg_inf(), INT32_MAX, 0.f, 0}; }

struct StatMerge {
  __device__ Stat operator()(const Stat& p, const Stat& q) const;
};
struct DrawMerge {
  __device__ Draw operator()(const Draw& p, const Draw& q) const;
};

__device__ inline Stat StatMerge::operator()(const Stat& p, const Stat& q) const {
  Stat r;
  r.max = fmaxf(p.max, q.max);
  const float a = p.max == neg_inf() ? 0.f : p.sum * expf(p.max - r.max);
  const float b = q.max == neg_inf() ? 0.f : q.sum * expf(q.max - r.max);
  r.sum = a + b;
  r.argmax = p.max > q.max ? p.argmax : (q.max > p.max ? q.argmax : min(p.argmax, q.argmax));
  r.bad = p.bad | q.bad;
  return r;
}

__device__ inline Draw DrawMerge::operator()(const Draw& p, const Draw& q) const {
  Draw r = (q.score > p.score || (q.score == p.score && q.token < p.token)) ? q : p;
  r.kept_sum = p.kept_sum + q.kept_sum;
  return r;
}

__device__ inline Stat shfl(const Stat& v, int o) {
  return Stat{__shfl_xor_sync(kFull, v.max, o), __shfl_xor_sync(kFull, v.sum, o), __shfl_xor_sync(kFull, v.argmax, o),
              __shfl_xor_sync(kFull, v.bad, o)};
}
__device__ inline Draw shfl(const Draw& v, int o) {
  return Draw{__shfl_xor_sync(kFull, v.score, o), __shfl_xor_sync(kFull, v.token, o),
              __shfl_xor_sync(kFull, v.kept_sum, o), 0};
}

// Merges every thread's value; the result is valid in thread 0. `smem` holds 32 values.
template <class T, class Merge>
__device__ T block_reduce(T v, Merge merge, T identity, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl(v, o));
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? smem[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl(v, o));
  }
  __syncthreads();
  return v;
}

// Four consecutive values as f32: one 16-byte (f32) or 8-byte (bf16) load.
__device__ inline void load_vec4(const float* p, float v[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}
__device__ inline void load_vec4(const bf16_t* p, float v[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

// The 4 values of tokens 4g .. 4g+3 of a row as f32 (-inf past the end); returns how many exist.
// vec: V % 4 == 0 and the row aligned for load_vec4.
template <class T>
__device__ inline int load4(const T* x, int64_t V, int64_t g, bool vec, float v[4]) {
  const int64_t i = g * 4;
  if (vec) {
    load_vec4(x + i, v);
    return 4;
  }
  const int n = V - i < 4 ? static_cast<int>(V - i) : 4;
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = j < n ? to_f32(x[i + j]) : neg_inf();
  return n;
}

// One past the last group of 4 tokens of the chunk starting at group g0.
__device__ inline int64_t chunk_end(int64_t g0, int64_t V) {
  const int64_t end = g0 + kChunk / 4, groups = (V + 3) / 4;
  return end < groups ? end : groups;
}

// This thread's groups of the block's chunk [g0, g1): group g0 + threadIdx.x + i kStreamThreads
// into v[i], n[i] of its tokens (0 past the chunk), every load issued before any value is used.
template <class T>
__device__ inline void load_thread_groups(const T* x, int64_t V, bool vec, int64_t g0, int64_t g1,
                                          float (&v)[kThreadGroups][4], int (&n)[kThreadGroups]) {
#pragma unroll
  for (int i = 0; i < kThreadGroups; ++i) {
    const int64_t g = g0 + threadIdx.x + i * kStreamThreads;
    n[i] = g < g1 ? load4(x, V, g, vec, v[i]) : 0;
  }
}

// The row's stats from its chunks' (any thread count).
__device__ Stat row_stat(const Stat* chunks, int C, Stat* smem) {
  Stat s = stat_identity();
  for (int c = threadIdx.x; c < C; c += blockDim.x) s = StatMerge{}(s, chunks[c]);
  return block_reduce(s, StatMerge{}, stat_identity(), smem);
}

// `in` is the logits [R, V] (T = float, cap 0, widened null) or the LM head's product (f32 or bf16)
// to cap by `cap` (0: none) and store as f32 into `widened`.
template <class T>
__global__ void __launch_bounds__(kStreamThreads)
    stats_kernel(const T* __restrict__ in, int64_t V, bool vec, float cap, float* __restrict__ widened,
                 Stat* __restrict__ stats) {
  pdl_begin();
  __shared__ Stat smem[32];
  const int64_t r = blockIdx.y;
  const T* x = in + r * V;
  const int64_t g0 = int64_t{blockIdx.x} * (kChunk / 4), g1 = chunk_end(g0, V);
  float v[kThreadGroups][4];
  int n[kThreadGroups];
  load_thread_groups(x, V, vec, g0, g1, v, n);
  if (widened != nullptr) {
    float* out = widened + r * V;
#pragma unroll
    for (int i = 0; i < kThreadGroups; ++i) {
      if (n[i] == 0) continue;
      const int64_t g = g0 + threadIdx.x + i * kStreamThreads;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (cap > 0.f) v[i][j] = softcap_value(v[i][j], cap);
      if (vec) {
        *reinterpret_cast<float4*>(out + g * 4) = make_float4(v[i][0], v[i][1], v[i][2], v[i][3]);
      } else {
        for (int j = 0; j < n[i]; ++j) out[g * 4 + j] = v[i][j];
      }
    }
  }
  // The thread's largest value and its first id, then Σ exp(x - max) in a second sweep, with no
  // running rescale: this kernel is bound by its arithmetic (with the cap's), not its bytes.
  const int32_t id0 = static_cast<int32_t>((g0 + threadIdx.x) * 4);  // v[i][j] is token id0 + 4 i kStreamThreads + j
  Stat s = stat_identity();
#pragma unroll
  for (int i = 0; i < kThreadGroups; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j >= n[i]) continue;
      const float x = v[i][j];
      s.bad |= (isnan(x) || x == INFINITY) ? 1 : 0;
      if (x > s.max) {
        s.max = x;
        s.argmax = id0 + 4 * kStreamThreads * i + j;
      }
    }
  if (s.max > neg_inf()) {
#pragma unroll
    for (int i = 0; i < kThreadGroups; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < n[i] && v[i][j] > neg_inf()) s.sum += expf(v[i][j] - s.max);
  }
  s = block_reduce(s, StatMerge{}, stat_identity(), smem);
  if (threadIdx.x == 0) stats[r * gridDim.x + blockIdx.x] = s;
}

// Logits a top-k cut keeps (and maybe a few more), gathered after two radix passes over the row
// so that the rest of the selection reads them from shared memory instead of the whole row.
constexpr int kCandidates = 4096;

struct SelectSmem {
  uint32_t count[256];
  unsigned long long mass[256];
  uint32_t digit;
  uint32_t remaining;
  unsigned long long above;
  double target;
  Stat stat[32];
  float candidate[kCandidates];
  int n_candidates;
};

// Adds 1 to count[bin] for every lane of the warp with bin < 256 (all 32 lanes call it). Lanes with
// the same bin add once together: logits crowd into a few top-digit bins, and one atomic per lane
// would serialise on them.
__device__ inline void count_bin(uint32_t* count, uint32_t bin) {
  const unsigned peers = __match_any_sync(kFull, bin);
  if (bin < 256u && static_cast<int>(threadIdx.x & 31) == __ffs(static_cast<int>(peers)) - 1)
    atomicAdd(&count[bin], static_cast<uint32_t>(__popc(peers)));
}

// What the radix passes read: a whole row in global memory, or the candidates gathered into shared
// memory. each(fn) calls fn(value, present) for every value, every thread of the block the same
// number of times (count_bin needs whole warps); the order does not matter to the passes, which
// only count and add integer masses.
struct RowValues {
  const float* x;
  int64_t V;
  bool vec;
  template <class Fn>
  __device__ void each(Fn fn) const {
    const int64_t groups = (V + 3) / 4;
    const int64_t span = (groups + blockDim.x - 1) / blockDim.x * blockDim.x;
    for (int64_t g = threadIdx.x; g < span; g += blockDim.x) {
      float v[4] = {neg_inf(), neg_inf(), neg_inf(), neg_inf()};
      const int n = g < groups ? load4(x, V, g, vec, v) : 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) fn(v[j], j < n);
    }
  }
};
struct CandidateValues {
  const float* v;
  int n;
  template <class Fn>
  __device__ void each(Fn fn) const {
    const int span = (n + static_cast<int>(blockDim.x) - 1) / static_cast<int>(blockDim.x) * static_cast<int>(blockDim.x);
    for (int i = static_cast<int>(threadIdx.x); i < span; i += static_cast<int>(blockDim.x))
      fn(i < n ? v[i] : neg_inf(), i < n);
  }
};

// A most-significant-digit-first radix select of the k-th largest logit's order key, 8 bits a pass:
// the passes from bit `shift` down continue from `prefix` (the digits chosen so far, above shift)
// with sm.remaining the rank sought among the values under that prefix.
template <class Values>
__device__ uint32_t select_key_digits(const Values& values, uint32_t prefix, int shift_from, int shift_to,
                                      SelectSmem& sm) {
  uint32_t mask = shift_from == 24 ? 0u : ~0u << (shift_from + 8);
  for (int shift = shift_from; shift >= shift_to; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sm.count[b] = 0;
    __syncthreads();
    values.each([&](float v, bool present) {
      const uint32_t key = order_key(v);
      count_bin(sm.count, present && (key & mask) == prefix ? (key >> shift) & 255u : 256u);
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t rem = sm.remaining, b = 255;
      for (;; --b) {
        if (rem <= sm.count[b] || b == 0) break;
        rem -= sm.count[b];
      }
      sm.digit = b;
      sm.remaining = rem;
    }
    __syncthreads();
    prefix |= sm.digit << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// Gathers into sm.candidate every value v of the row with (v - m) / t >= z_min; false (and nothing
// to use) when there are more than kCandidates.
__device__ bool gather_candidates(const RowValues& row, float m, float t, float z_min, SelectSmem& sm) {
  if (threadIdx.x == 0) sm.n_candidates = 0;
  __syncthreads();
  row.each([&](float v, bool present) {
    if (!present || !((v - m) / t >= z_min)) return;
    const int at = atomicAdd(&sm.n_candidates, 1);
    if (at < kCandidates) sm.candidate[at] = v;
  });
  __syncthreads();
  return sm.n_candidates <= kCandidates;
}

// The order key of the k-th largest logit of the row (1 <= k <= V). Two passes over the row fix
// its top 16 bits; every logit at or above it then has z = (v - m) / t at least that 16-bit bin's
// lowest z (z rises with the logit), so when those logits are few they are gathered into
// sm.candidate (*gathered, if asked) and the last two passes read only them.
__device__ uint32_t kth_largest_key(const RowValues& row, int64_t k, float m, float t, SelectSmem& sm,
                                    bool* gathered) {
  if (threadIdx.x == 0) sm.remaining = static_cast<uint32_t>(k);
  const uint32_t high = select_key_digits(row, 0u, 24, 16, sm);
  const float lowest = key_float(high);  // NaN for the bin of -inf: no gathering then
  const bool have = !isnan(lowest) && gather_candidates(row, m, t, (lowest - m) / t, sm);
  if (gathered != nullptr) *gathered = have;
  return have ? select_key_digits(CandidateValues{sm.candidate, sm.n_candidates}, high, 8, 0, sm)
              : select_key_digits(row, high, 8, 0, sm);
}

// The smallest z that top-p keeps among the tokens with z >= floor (see top_p_cut in
// sampling.cpp): the lowest key whose strictly larger kept keys hold less than top_p of the mass,
// found digit by digit. The first pass's bins hold every kept token, so their masses also give the
// total.
template <class Values>
__device__ float top_p_cut(const Values& values, float m, float t, float floor, double top_p, SelectSmem& sm) {
  if (threadIdx.x == 0) sm.above = 0;
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sm.count[b] = 0;
      sm.mass[b] = 0;
    }
    __syncthreads();
    values.each([&](float v, bool present) {
      const float z = (v - m) / t;
      const uint32_t key = order_key(z);
      const bool in = present && z >= floor && (key & mask) == prefix;
      const uint32_t bin = in ? (key >> shift) & 255u : 256u;
      count_bin(sm.count, bin);
      const uint64_t w = in ? det_mass(z) : 0;
      if (w != 0) atomicAdd(&sm.mass[bin], static_cast<unsigned long long>(w));
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      if (shift == 24) {
        unsigned long long total = 0;
        for (int b = 0; b < 256; ++b) total += sm.mass[b];
        sm.target = top_p * static_cast<double>(total);
      }
      const double target = sm.target;
      unsigned long long run = sm.above, chosen_above = sm.above;
      uint32_t chosen = 255;
      for (int b = 255; b >= 0; --b) {
        if (sm.count[b] == 0) continue;
        if (!(static_cast<double>(run) < target)) break;
        chosen = static_cast<uint32_t>(b);
        chosen_above = run;
        run += sm.mass[b];
      }
      sm.digit = chosen;
      sm.above = chosen_above;
    }
    __syncthreads();
    prefix |= sm.digit << shift;
    mask |= 255u << shift;
  }
  return key_float(prefix);
}

__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const float* __restrict__ logits, int64_t V, int C, bool vec, const RowParams* __restrict__ params,
                  const Stat* __restrict__ stats, RowInfo* __restrict__ info) {
  pdl_begin();
  __shared__ SelectSmem sm;
  __shared__ float s_max;
  __shared__ int s_skip;
  const int64_t r = blockIdx.x;
  const RowParams p = params[r];
  const Stat st = row_stat(stats + r * C, C, sm.stat);
  if (threadIdx.x == 0) {
    s_max = st.max;
    s_skip = st.bad || st.argmax < 0;
  }
  __syncthreads();
  RowInfo out{s_max, neg_inf(), 0u, neg_inf()};
  if (!s_skip) {
    const RowValues row{logits + r * V, V, vec};
    const float m = s_max;
    if (p.temperature > 0.f) {
      const float t = p.temperature;
      float floor = neg_inf();
      // Every token top-p can keep after a top-k cut has z >= the cut, so it reads the candidates
      // the cut gathered, if it did.
      bool gathered = false;
      if (p.top_k > 0 && p.top_k < V) floor = (key_float(kth_largest_key(row, p.top_k, m, t, sm, &gathered)) - m) / t;
      if (p.top_p < 1.0)
        floor = fmaxf(floor, gathered ? top_p_cut(CandidateValues{sm.candidate, sm.n_candidates}, m, t, floor,
                                                  p.top_p, sm)
                                      : top_p_cut(row, m, t, floor, p.top_p, sm));
      out.floor = fmaxf(floor, p.min_p_log);
      // The most likely token has z = (m - m) / t = 0, kept by every cut; its score is one the
      // race reaches, so no token scoring below it can win. (st is whole in thread 0 only, which
      // alone writes `out`.)
      if (threadIdx.x == 0 && out.floor <= 0.f) {
        const int32_t a = st.argmax;
        out.race_floor = 0.f - race_log_e(race_words(p.seed, p.draw, static_cast<uint64_t>(a / 4)).v[a % 4]);
      }
    }
    if (p.top_n > 0) out.top_key = kth_largest_key(row, p.top_n, m, 1.f, sm, nullptr);
  }
  if (threadIdx.x == 0) info[r] = out;
}

// Whether a sampled row's log-probs need Σ exp(z) over its kept tokens: processed log-probs of a row
// that cuts tokens or scales by a temperature. At temperature 1 with nothing cut, z = x - max and
// every token is kept, so that sum is the row's Σ exp(x - max) from stats (the same value; its
// fp32 rounding from another order).
__device__ inline bool needs_kept_mass(const RowParams& p, const RowInfo& ri) {
  return p.processed && (p.temperature != 1.f || ri.floor > neg_inf());
}

__global__ void __launch_bounds__(kStreamThreads)
    draw_kernel(const float* __restrict__ logits, int64_t V, bool vec, const RowParams* __restrict__ params,
                const RowInfo* __restrict__ info, Draw* __restrict__ draws) {
  pdl_begin();
  __shared__ Draw smem[32];
  const int64_t r = blockIdx.y;
  const RowParams p = params[r];
  if (!(p.temperature > 0.f)) return;  // greedy: finalize needs no draw
  const RowInfo ri = info[r];
  const float* x = logits + r * V;
  const int64_t g0 = int64_t{blockIdx.x} * (kChunk / 4), g1 = chunk_end(g0, V);
  float v[kThreadGroups][4];
  int n[kThreadGroups];
  load_thread_groups(x, V, vec, g0, g1, v, n);
  const bool kept_mass = needs_kept_mass(p, ri);  // otherwise the row's Σ exp from stats serves
  const bool unit_t = p.temperature == 1.f;  // (x - m) / 1 is x - m: the same bits without a division
  Draw d = draw_identity();
  float bar = ri.race_floor;  // a score some token reaches: max(race_floor, d.score)
#pragma unroll
  for (int i = 0; i < kThreadGroups; ++i) {
    const int64_t g = g0 + threadIdx.x + i * kStreamThreads;
    float z[4];
    float top = neg_inf();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      z[j] = unit_t ? v[i][j] - ri.max : (v[i][j] - ri.max) / p.temperature;
      if (j >= n[i] || !(z[j] >= ri.floor)) {
        z[j] = neg_inf();  // not kept
        continue;
      }
      if (kept_mass) d.kept_sum += expf(z[j]);
      top = fmaxf(top, z[j]);
    }
    // -ln(E) <= kMaxRaceBoost: a group whose best z is further than that below the bar cannot win.
    if (top == neg_inf() || top + kMaxRaceBoost < bar) continue;
    const Philox4 w = race_words(p.seed, p.draw, static_cast<uint64_t>(g));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (z[j] == neg_inf() || z[j] + race_boost_bound(w.v[j]) < bar) continue;
      const float score = z[j] - race_log_e(w.v[j]);
      const int32_t id = static_cast<int32_t>(g * 4 + j);
      if (score > d.score || (score == d.score && id < d.token)) {
        d.score = score;
        d.token = id;
        bar = fmaxf(bar, score);
      }
    }
  }
  d = block_reduce(d, DrawMerge{}, draw_identity(), smem);
  if (threadIdx.x == 0) draws[r * gridDim.x + blockIdx.x] = d;
}

struct FinalSmem {
  Stat stat[32];
  Draw draw[32];
  int32_t gt[kMaxTopLogprobs];  // ids with a key above the N-th largest (fewer than N)
  int32_t eq[kMaxTopLogprobs];  // the first N ids whose key equals it, in id order
  int32_t warp_eq[kFinalThreads / 32];
  int32_t n_gt, n_eq;
  float max, log_sum, log_kept;
  int32_t argmax, status, token;
};

__global__ void __launch_bounds__(kFinalThreads)
    finalize_kernel(const float* __restrict__ logits, int64_t V, int C, bool vec, const RowParams* __restrict__ params,
                    const Stat* __restrict__ stats, const RowInfo* __restrict__ info, const Draw* __restrict__ draws,
                    RowResult* __restrict__ results, TopEntry* __restrict__ tops, int top_stride) {
  pdl_begin();
  __shared__ FinalSmem sm;
  const int64_t r = blockIdx.x;
  const RowParams p = params[r];
  const bool greedy = !(p.temperature > 0.f);
  const Stat st = row_stat(stats + r * C, C, sm.stat);
  Draw d = draw_identity();
  if (!greedy) {
    for (int c = threadIdx.x; c < C; c += blockDim.x) d = DrawMerge{}(d, draws[r * C + c]);
  }
  d = block_reduce(d, DrawMerge{}, draw_identity(), sm.draw);
  if (threadIdx.x == 0) {
    sm.max = st.max;
    sm.status = st.bad ? 1 : (st.argmax < 0 ? 2 : 0);
    sm.log_sum = logf(st.sum);
    sm.log_kept = logf(d.kept_sum);
    sm.token = greedy ? st.argmax : d.token;
    sm.n_gt = 0;
    sm.n_eq = 0;
  }
  __syncthreads();
  const float* x = logits + r * V;
  const float m = sm.max, floor = info[r].floor;
  const bool raw_mode = greedy || !needs_kept_mass(p, info[r]);
  auto logprob = [&](int32_t id) {
    if (raw_mode) return (x[id] - m) - sm.log_sum;
    const float z = (x[id] - m) / p.temperature;
    return z >= floor ? z - sm.log_kept : neg_inf();
  };
  const int n_top = sm.status == 0 ? p.top_n : 0;
  if (n_top > 0) {
    // Ids above the N-th largest go anywhere (they are sorted below); ties with it keep id order:
    // each thread takes 4 consecutive ids and the block counts ties before it.
    const uint32_t kn = info[r].top_key;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t g0 = 0; g0 * 4 < V; g0 += blockDim.x) {
      const int64_t g = g0 + threadIdx.x;
      float v[4];
      const int n = g * 4 < V ? load4(x, V, g, vec, v) : 0;
      int ties = 0;
      for (int j = 0; j < n; ++j) {
        const uint32_t key = order_key(v[j]);
        if (key > kn) sm.gt[atomicAdd(&sm.n_gt, 1)] = static_cast<int32_t>(g * 4 + j);
        ties += key == kn;
      }
      int before = ties;  // inclusive scan over the warp
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFull, before, o);
        if (lane >= o) before += y;
      }
      if (lane == 31) sm.warp_eq[warp] = before;
      __syncthreads();
      before += sm.n_eq - ties;
      for (int w = 0; w < warp; ++w) before += sm.warp_eq[w];
      for (int j = 0; j < n; ++j) {
        if (order_key(v[j]) != kn) continue;
        if (before < n_top) sm.eq[before] = static_cast<int32_t>(g * 4 + j);
        ++before;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int total = 0;
        for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += sm.warp_eq[w];
        sm.n_eq += total;
      }
      __syncthreads();
    }
  }
  if (threadIdx.x != 0) return;
  RowResult res{sm.token, 0.f, sm.status, n_top};
  if (sm.status == 0) res.logprob = logprob(sm.token);
  results[r] = res;
  if (n_top == 0) return;
  // Largest first, lower id on ties: insertion sort of the few ids above the N-th largest.
  const int n_gt = sm.n_gt;
  for (int i = 1; i < n_gt; ++i) {
    const int32_t id = sm.gt[i];
    const uint32_t key = order_key(x[id]);
    int j = i - 1;
    for (; j >= 0; --j) {
      const uint32_t kj = order_key(x[sm.gt[j]]);
      if (kj > key || (kj == key && sm.gt[j] < id)) break;
      sm.gt[j + 1] = sm.gt[j];
    }
    sm.gt[j + 1] = id;
  }
  TopEntry* out = tops + r * top_stride;
  for (int i = 0; i < n_top; ++i) {
    const int32_t id = i < n_gt ? sm.gt[i] : sm.eq[i - n_gt];
    out[i] = TopEntry{id, logprob(id)};
  }
}

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Page-locked result buffers and their events, kept for the next call: allocating pinned memory
// takes longer than a whole sampling call.
struct ResultSlot {
  void* host = nullptr;
  size_t bytes = 0;
  cudaEvent_t copied = nullptr;
};
std::mutex spare_mutex;
std::vector<ResultSlot>& spare_slots() {
  static std::vector<ResultSlot> spare;
  return spare;
}
ResultSlot take_slot(size_t bytes) {
  std::lock_guard<std::mutex> lock(spare_mutex);
  auto& spare = spare_slots();
  for (size_t i = 0; i < spare.size(); ++i)
    if (spare[i].bytes >= bytes) {
      const ResultSlot s = spare[i];
      spare.erase(spare.begin() + static_cast<std::ptrdiff_t>(i));
      return s;
    }
  ResultSlot s;
  s.bytes = std::max<size_t>(bytes, 4096);
  G4_CUDA_CHECK(cudaHostAlloc(&s.host, s.bytes, cudaHostAllocDefault));
  G4_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
  return s;
}

__global__ void write_ids_kernel(const RowResult* __restrict__ results, const int64_t* __restrict__ src,
                                 int64_t* __restrict__ ids, int n, int64_t p0, int64_t p1, int64_t p2, int64_t pad) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t r = src[j];
  int64_t id = r < 0 ? 0 : results[r].token;
  if (id == p0 || id == p1 || id == p2) id = pad;
  ids[j] = id;
}

}  // namespace

struct PendingSamples::State {
  int64_t rows = 0;
  int top_stride = 1;
  size_t results_at = 0;  // of the results within the page-locked buffer
  size_t tops_at = 0;     // of the top-N entries within the results
  Tensor work;         // on the GPU: parameters, intermediates and results
  Tensor widened;      // the f32 logits when the input was the LM head's product
  const RowResult* device_results = nullptr;
  ResultSlot slot;
  bool waited = false;
};

PendingSamples::PendingSamples() = default;

PendingSamples::PendingSamples(PendingSamples&& o) noexcept : state_(std::move(o.state_)) {}

PendingSamples& PendingSamples::operator=(PendingSamples&& o) noexcept {
  if (this != &o) {
    PendingSamples dropped(std::move(*this));
    state_ = std::move(o.state_);
  }
  return *this;
}

PendingSamples::~PendingSamples() {
  if (!state_) return;
  // The copy may still be on its way into the buffer: it goes back to the spares only once it is
  // done. (A destructor does not throw: an error here reappears at the next CUDA call.)
  if (!state_->waited) (void)cudaEventSynchronize(state_->slot.copied);
  std::lock_guard<std::mutex> lock(spare_mutex);
  spare_slots().push_back(state_->slot);
}

std::vector<SampledToken> PendingSamples::wait() {
  G4_CHECK(state_ && !state_->waited, "PendingSamples::wait: nothing to wait for");
  G4_CUDA_CHECK(cudaEventSynchronize(state_->slot.copied));
  state_->waited = true;
  const auto* host = static_cast<const char*>(state_->slot.host) + state_->results_at;
  const int64_t R = state_->rows;
  std::vector<SampledToken> out(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    RowResult res;
    std::memcpy(&res, host + sizeof(RowResult) * r, sizeof res);
    G4_CHECK(res.status != 1, "sample_batch: row ", r, " has a NaN or +inf logit");
    G4_CHECK(res.status != 2, "sample_batch: row ", r, " has no finite logit");
    out[r].token = res.token;
    out[r].logprob = res.logprob;
    for (int i = 0; i < res.top_n; ++i) {
      TopEntry e;
      std::memcpy(&e, host + state_->tops_at + sizeof(TopEntry) * (r * state_->top_stride + i), sizeof e);
      out[r].top_ids.push_back(e.token);
      out[r].top_logprobs.push_back(e.logprob);
    }
  }
  return out;
}

PendingSamples sample_batch_async(const Tensor& logits, const std::vector<RowSampling>& rows, double softcap) {
  const int64_t R = logits.size(0), V = logits.size(1);
  G4_CHECK(logits.dtype() == DType::F32 || logits.dtype() == DType::BF16, "sample_batch: logits must be f32 or bf16, got ",
           logits.describe());
  G4_CHECK(R <= 65535, "sample_batch: at most 65535 rows on the GPU, got logits ", logits.describe());
  const int C = static_cast<int>((V + kChunk - 1) / kChunk);
  std::vector<RowParams> params(static_cast<size_t>(R));
  int top_stride = 1;
  for (int64_t r = 0; r < R; ++r) {
    const SamplingParams& sp = rows[r].params;
    RowParams& p = params[r];
    std::memset(&p, 0, sizeof p);
    p.seed = sp.seed;
    p.draw = rows[r].draw;
    p.top_p = sp.top_p;
    p.temperature = static_cast<float>(sp.temperature);
    p.min_p_log = sp.min_p > 0.0 ? static_cast<float>(std::log(sp.min_p)) : -INFINITY;
    p.top_k = static_cast<int32_t>(std::min<int64_t>(sp.top_k, V));
    p.top_n = static_cast<int32_t>(std::min(rows[r].top_logprobs, V));
    p.processed = rows[r].logprob_mode == LogprobMode::kProcessed;
    top_stride = std::max(top_stride, p.top_n);
  }

  // One workspace: parameters, per-chunk and per-row intermediates, then the results (copied back
  // in one piece).
  const size_t params_at = 0;
  const size_t stats_at = params_at + align16(sizeof(RowParams) * R);
  const size_t info_at = stats_at + align16(sizeof(Stat) * R * C);
  const size_t draws_at = info_at + align16(sizeof(RowInfo) * R);
  const size_t results_at = draws_at + align16(sizeof(Draw) * R * C);
  const size_t tops_at = results_at + align16(sizeof(RowResult) * R);
  const size_t result_bytes = tops_at - results_at + sizeof(TopEntry) * R * top_stride;
  auto state = std::make_unique<PendingSamples::State>();
  state->rows = R;
  state->top_stride = top_stride;
  state->tops_at = tops_at - results_at;
  state->work = Tensor::empty({static_cast<int64_t>(results_at + result_bytes)}, DType::U8, Device::CUDA);
  // The f32 logits the kernels after stats read: the input itself, or its widened, capped copy.
  const bool widen = logits.dtype() != DType::F32 || softcap > 0;
  if (widen) state->widened = Tensor::empty({R, V}, DType::F32, Device::CUDA);
  char* base = static_cast<char*>(state->work.raw());
  auto at = [&](size_t off) { return base + off; };
  // The parameters go up and the results come back through one page-locked buffer: [parameters |
  // results], both copies truly asynchronous.
  const size_t params_bytes = align16(sizeof(RowParams) * R);
  state->slot = take_slot(params_bytes + result_bytes);
  state->results_at = params_bytes;
  std::memcpy(state->slot.host, params.data(), sizeof(RowParams) * R);
  G4_CUDA_CHECK(cudaMemcpyAsync(at(params_at), state->slot.host, sizeof(RowParams) * R, cudaMemcpyHostToDevice,
                                g4::cuda::stream()));

  const float* x = widen ? state->widened.data<float>() : logits.data<float>();
  const bool vec = V % 4 == 0 && (reinterpret_cast<uintptr_t>(logits.raw()) & 15u) == 0;
  const auto* dp = reinterpret_cast<const RowParams*>(at(params_at));
  auto* stats = reinterpret_cast<Stat*>(at(stats_at));
  auto* info = reinterpret_cast<RowInfo*>(at(info_at));
  auto* draws = reinterpret_cast<Draw*>(at(draws_at));
  auto* results = reinterpret_cast<RowResult*>(at(results_at));
  auto* tops = reinterpret_cast<TopEntry*>(at(tops_at));
  const dim3 chunks(static_cast<unsigned>(C), static_cast<unsigned>(R));
  const float cap = static_cast<float>(softcap);
  if (logits.dtype() == DType::BF16)
    launch_pdl(stats_kernel<bf16_t>, chunks, kStreamThreads, 0, static_cast<const bf16_t*>(logits.raw()), V, vec, cap,
               state->widened.data<float>(), stats);
  else
    launch_pdl(stats_kernel<float>, chunks, kStreamThreads, 0, logits.data<float>(), V, vec, cap,
               widen ? state->widened.data<float>() : nullptr, stats);
  launch_pdl(select_kernel, static_cast<unsigned>(R), kSelectThreads, 0, x, V, C, vec, dp, stats, info);
  launch_pdl(draw_kernel, chunks, kStreamThreads, 0, x, V, vec, dp, info, draws);
  launch_pdl(finalize_kernel, static_cast<unsigned>(R), kFinalThreads, 0, x, V, C, vec, dp, stats, info, draws, results,
             tops, top_stride);

  state->device_results = results;
  G4_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(state->slot.host) + params_bytes, results, result_bytes,
                                cudaMemcpyDeviceToHost, g4::cuda::stream()));
  G4_CUDA_CHECK(cudaEventRecord(state->slot.copied, g4::cuda::stream()));
  PendingSamples out;
  out.state_ = std::move(state);
  return out;
}

std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows) {
  return sample_batch_async(logits, rows, 0).wait();
}

void write_sampled_ids(const PendingSamples& samples, const Tensor& src_rows, Tensor ids,
                       const std::vector<int64_t>& placeholders, int64_t pad) {
  G4_CHECK(samples.state_ && src_rows.dtype() == DType::I64 && ids.dtype() == DType::I64 &&
               src_rows.numel() == ids.numel() && src_rows.device() == Device::CUDA && ids.device() == Device::CUDA &&
               placeholders.size() <= 3,
           "write_sampled_ids: I64 GPU tensors of one length, at most 3 placeholders");
  int64_t p[3] = {-1, -1, -1};
  for (size_t i = 0; i < placeholders.size(); ++i) p[i] = placeholders[i];
  const int n = static_cast<int>(ids.numel());
  write_ids_kernel<<<(n + 127) / 128, 128, 0, g4::cuda::stream()>>>(samples.state_->device_results,
                                                                      src_rows.data<int64_t>(), ids.data<int64_t>(), n,
                                                                      p[0], p[1], p[2], pad);
  G4_CUDA_CHECK_LAUNCH();
}

}  // namespace g4::gen::cuda

// The ring-attention cases shared by the CPU ranks' test (context_parallel_test.cpp) and the GPU
// ranks' (tests/gpu): masks of a [B, S] batch with grouped KV heads -- causal, sliding windows
// narrower and wider than a shard, bidirectional, packed documents crossing the shard boundaries of
// 2 and 4 ranks, padded keys -- and each rank's slice of them.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "ops/attention.h"
#include "parallel/context_parallel.h"

namespace g4::parallel::testing::ring_cases {

inline constexpr int64_t B = 2, S = 16, kHeads = 4, kKvHeads = 2, kDim = 8;

struct Case {
  const char* name;
  bool causal = true;
  int64_t window = 0;
  bool docs = false;     // packed documents crossing the shard boundaries
  bool padding = false;  // key_valid with padded keys
};

inline const Case kCases[] = {
    {"causal"},
    {"causal window 3", true, 3},
    {"causal window 11", true, 11},
    {"bidirectional", false},
    {"bidirectional window 3", false, 3},
    {"packed documents", true, 0, true},
    {"packed documents, window 6, padding", true, 6, true, true},
};

// Document ids [B, S]: row 0 starts documents at 5 and 13, row 1 at 3 and 9 (each crosses a
// boundary of 2 and of 4 shards of 16 positions).
inline Tensor doc_ids() {
  Tensor t = Tensor::empty({B, S}, DType::I32);
  for (int64_t s = 0; s < S; ++s) {
    t.data<int32_t>()[s] = (s >= 5) + (s >= 13);
    t.data<int32_t>()[S + s] = (s >= 3) + (s >= 9);
  }
  return t;
}
inline Tensor key_valid() {
  Tensor t = Tensor::full({B, S}, 1, DType::U8);
  for (int64_t s : {2, 7, 8, 15}) t.data<uint8_t>()[s] = 0;
  t.data<uint8_t>()[S + 10] = 0;
  return t;
}

inline ops::AttentionMask full_mask(const Case& c) {
  ops::AttentionMask m;
  m.causal = c.causal;
  m.window = c.window;
  if (c.docs) m.q_doc = m.k_doc = doc_ids();
  if (c.padding) m.key_valid = key_valid();
  return m;
}

// This rank's part of the full mask.
inline ops::AttentionMask shard_mask(const Case& c, int rank, int cp) {
  ops::AttentionMask full = full_mask(c), m;
  m.causal = c.causal;
  m.window = c.window;
  m.q_start = m.k_start = rank * (S / cp);
  if (c.docs) m.q_doc = m.k_doc = sequence_shard(full.q_doc, rank, cp);
  if (c.padding) m.key_valid = sequence_shard(full.key_valid, rank, cp);
  return m;
}

}  // namespace g4::parallel::testing::ring_cases

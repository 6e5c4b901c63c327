// The ring-attention cases shared by the CPU ranks' test (context_parallel_test.cpp) and the GPU
// ranks' (tests/gpu): masks of a [B, S] batch with grouped KV heads -- causal, sliding windows
// narrower and wider than a shard, bidirectional, packed documents crossing the shard boundaries of
// 2 and 4 ranks, padded keys, Gemma 4's image blocks (bidirectional within an image on a causal
// mask, images crossing those boundaries, a window shorter than an image) -- and each rank's slice
// of them.
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
  bool blocks = false;   // image blocks (q_block / k_block)
};

inline const Case kCases[] = {
    {"causal"},
    {"causal window 3", true, 3},
    {"causal window 11", true, 11},
    {"bidirectional", false},
    {"bidirectional window 3", false, 3},
    {"packed documents", true, 0, true},
    {"packed documents, window 6, padding", true, 6, true, true},
    {"image blocks", true, 0, false, false, true},
    {"image blocks, window 3", true, 3, false, false, true},
    {"image blocks, packed documents, window 6, padding", true, 6, true, true, true},
    {"image blocks on a bidirectional mask (ignored)", false, 0, false, false, true},
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

// Image block ids [B, S] (-1 = text), numbered per row as vision_block_ids numbers them: row 0 has
// images at 1..2 (inside the first of 4 shards) and 6..10 (across the boundary at 8 of 2 shards,
// and of 4); row 1 one image at 3..13, longer than a shard of 4 and of 8, crossing every boundary
// but the last of 4 shards (a query at 3 sees keys up to 13, three shards later).
inline Tensor block_ids() {
  Tensor t = Tensor::full({B, S}, -1, DType::I32);
  for (int64_t s = 1; s <= 2; ++s) t.data<int32_t>()[s] = 0;
  for (int64_t s = 6; s <= 10; ++s) t.data<int32_t>()[s] = 1;
  for (int64_t s = 3; s <= 13; ++s) t.data<int32_t>()[S + s] = 0;
  return t;
}

inline ops::AttentionMask full_mask(const Case& c) {
  ops::AttentionMask m;
  m.causal = c.causal;
  m.window = c.window;
  if (c.docs) m.q_doc = m.k_doc = doc_ids();
  if (c.padding) m.key_valid = key_valid();
  if (c.blocks) m.q_block = m.k_block = block_ids();
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
  if (c.blocks) m.q_block = m.k_block = sequence_shard(full.q_block, rank, cp);
  return m;
}

}  // namespace g4::parallel::testing::ring_cases

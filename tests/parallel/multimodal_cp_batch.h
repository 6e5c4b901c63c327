// A multimodal batch cut over context-parallel ranks, shared by the CPU ranks' test
// (context_parallel_test.cpp) and the GPU ranks' (tests/gpu/ep_cp_test.cpp): the multimodal
// fixtures' batch (images and audio clips in two padded rows, as transformers ran it) and each
// rank's part of it, as g4 train makes it (train/sft.cpp): ids, positions, targets, attention mask
// and token types cut into slices, the media whole.
#pragma once
#include <cstdint>
#include <string>

#include "io/safetensors.h"
#include "model/gemma4.h"
#include "model/vision_tower.h"
#include "parallel/context_parallel.h"
#include "support/hf_fixtures.h"
#include "support/test_paths.h"

namespace g4::parallel::testing::mm_cp {

inline std::string fixture_dir(const std::string& name) { return test::data_dir() + "/hf-gemma4-mm/" + name; }

// The whole batch of a fixture (tiny-mm-bidir or tiny-mm-e), with its labels.
inline model::ForwardInputs whole_batch(const std::string& name) {
  return test::hf_multimodal_inputs(io::SafetensorsReader::open(fixture_dir(name) + "/reference.safetensors"));
}

// Whether an image block of `types` (whole rows) crosses a boundary between slices of `slice` tokens.
inline bool image_crosses_a_slice(const Tensor& types, int64_t slice) {
  const Tensor blocks = model::vision_block_ids(types);
  const int64_t B = blocks.size(0), S = blocks.size(1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = slice; s < S; s += slice) {
      const int32_t* row = blocks.data<int32_t>() + b * S;
      if (row[s] >= 0 && row[s] == row[s - 1]) return true;
    }
  return false;
}

// Rank `rank` of `cp`'s inputs: the rows right-padded to a multiple of `pad_multiple` (a multiple
// of cp; padding moves the slice boundaries), its slice of ids, global positions, shifted targets,
// attention mask and token types; the media of the whole batch. *types_out: the padded whole rows'
// token types.
inline model::ForwardInputs rank_slice(const model::ForwardInputs& whole, int rank, int cp, int64_t pad_multiple,
                                       int64_t pad_id, Tensor* types_out = nullptr) {
  const PaddedRows rows =
      pad_to_multiple(whole.input_ids, Tensor(), whole.labels, static_cast<int>(pad_multiple), pad_id);
  const int64_t P = rows.input_ids.size(1);
  const Tensor types = pad_columns(whole.mm_token_type_ids, P, 0);
  if (types_out) *types_out = types;
  const ContextShard shard = shard_batch(rows.input_ids, rows.position_ids, rows.labels, rank, cp);
  model::ForwardInputs in = whole;  // the media stay whole
  in.input_ids = shard.input_ids;
  in.position_ids = shard.position_ids;
  in.labels = Tensor();
  in.targets = shard.targets;
  in.attention_mask = sequence_shard(pad_columns(whole.attention_mask, P, 0), rank, cp);
  in.mm_token_type_ids = sequence_shard(types, rank, cp);
  return in;
}

}  // namespace g4::parallel::testing::mm_cp

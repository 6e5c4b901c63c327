// Keys and values kept between decoding steps. Full-attention layers keep every position;
// sliding layers keep only the last window - 1 positions (all a future query can see).
// KV-shared layers own no entry: they read their source layer's keys and values.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace g4::model {

struct LayerKV {
  Tensor k, v;        // [B, held, nKV, d] (undefined before the first step)
  int64_t start = 0;  // absolute position of the first held key
};

struct KVCache {
  std::vector<LayerKV> layers;  // one per decoder layer (empty for KV-shared layers)
  int64_t length = 0;           // positions processed so far
};

}  // namespace g4::model

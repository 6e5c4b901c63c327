// Inverse RoPE frequencies of one layer, computed as transformers does (float32):
// default: theta^(-2i/d) for i < d/2; proportional: the first floor(partial*d/2) pairs rotate with
// theta^(-2i/d) (denominator the FULL head dim) and the rest stay at 0; linear: default / factor.
#pragma once
#include "core/tensor.h"
#include "io/hf_config.h"

namespace g4::model {

Tensor rope_inv_freq(const io::RopeSpec& rope, int64_t head_dim);  // [head_dim / 2] f32

}  // namespace g4::model

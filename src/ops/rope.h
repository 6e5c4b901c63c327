// Rotary position embedding, rotate_half convention: the pair (x[i], x[i + d/2]) is rotated by
// the angle pos * inv_freq[i]. Angles and cos/sin are computed in fp32 (as Hugging Face does),
// whatever the tensor dtype. inv_freq entries that are 0 leave their pair unchanged.
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// x [B, S, nH, d]; positions [B, S] (i64); inv_freq [d/2] f32. Returns the rotated copy.
Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq);
// Gradient: rotation by the opposite angle.
Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq);

}  // namespace g4::ops

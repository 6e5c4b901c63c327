// The Gemma 4 vision tower (transformers' Gemma4VisionModel) and embed_vision, computed from the
// model's ParamStore through ag:: ops (so the backward comes from the tape), and the merge of the
// soft tokens into the text sequence; see docs/multimodal.md and MULTIMODAL.md §3-4.
#pragma once
#include <vector>

#include "autograd/variable.h"
#include "io/hf_config.h"
#include "model/params.h"

namespace g4::model {

// The image processor's output, under transformers' names.
struct VisionInputs {
  Tensor pixel_values;        // [N, P, 3·patch²] floats in [0, 1]: N images, P patches each (padded)
  Tensor image_position_ids;  // [N, P, 2] integers: (x, y) of each patch, (-1, -1) on padding
};

struct VisionOutputs {
  // Per image, the encoder's output over its valid patches [n_i, Hv] (padding patches are not
  // computed: they are masked as keys and dropped by the pooler, so valid rows are unchanged).
  std::vector<ag::Var> encoder;
  ag::Var soft_tokens;  // [Σ m_i, Hv]: pooled, scaled by √Hv, standardised where configured
  ag::Var projected;    // [Σ m_i, H]: embed_vision's output, what replaces the image placeholders
  std::vector<int64_t> tokens_per_image;  // m_i = n_i / k²
};

// Default buffers of a fresh tower: clip bounds ±inf (no clipping) and std bias 0 / scale 1.
void set_default_vision_buffers(ParamStore& params, const io::VisionConfig& v, Device device);

VisionOutputs vision_forward(const ParamStore& params, const io::VisionConfig& v, const VisionInputs& in,
                             DType dtype, Device device);

// Block ids [B, S] i32 for the image rule of the decoder's sliding layers: each maximal run of
// tokens of type 1 (image) or 2 (video) in mm_token_type_ids is one block, numbered from 0 per
// row; other tokens -1 (get_block_sequence_ids_for_mask).
Tensor vision_block_ids(const Tensor& mm_token_type_ids);

// Replaces the rows of embeds [B, S, H] whose id is token_id by the rows of features [n, H], in
// row-major (batch, position) order (transformers' masked_scatter). The counts must agree.
ag::Var merge_soft_tokens(const ag::Var& embeds, const Tensor& input_ids, int64_t token_id, const ag::Var& features);

// Context parallelism: the rows of features [n, H] (the soft tokens of the placeholders token_id
// of the whole rows `ids` [B, S], in row-major order; n must be their count) whose placeholders
// lie in columns [start, start + len) of each row, in order: what merge_soft_tokens places into
// that slice. Undefined when the slice holds none.
ag::Var slice_soft_tokens(const ag::Var& features, const Tensor& ids, int64_t token_id, int64_t start, int64_t len);

}  // namespace g4::model

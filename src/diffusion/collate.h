// NeMo Automodel 0.7.0's block-diffusion batch, built on the host exactly as Automodel builds it
// (docs/diffusion.md "Training", DIFFUSION.md §D.2-D.5): the collated rows, the uniform-token
// corruption, the response window with its one scored block per example, and the block-causal
// attention of the denoiser as run_stack blocks.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "core/torch_generator.h"
#include "model/gemma4.h"

namespace g4::diffusion {

// One single-turn example: `ids` = prompt then response; the loss covers ids[prompt, end) (the
// response and its end-of-turn token). A response of length 0 has no supervised token.
struct DllmExample {
  std::vector<int64_t> ids;
  int64_t prompt = 0;
};

// Automodel's DLLMCollator(response_window=True) settings (dllm.* and dataset.seq_length).
struct CollateOptions {
  int64_t pad_block_size = 256;         // responses are filled with EOS up to whole blocks of this
  int64_t pad_seq_len_divisible = 256;  // rows are padded to a multiple of lcm(this, pad_block_size); <= 1: not
  int64_t max_seq_len = 1024;           // content is cut here, and so is the padded length
  bool supervise_padding = false;       // the pad tail counts in loss_mask too
  int64_t eos_id = 1, pad_id = 0;
};

// The collated rows [B, S] (i64): content, then EOS fill (attended and supervised), then pad.
struct DllmBatch {
  Tensor input_ids, loss_mask, attention_mask;
  int64_t rows() const { return input_ids.size(0); }
  int64_t length() const { return input_ids.size(1); }
};

DllmBatch collate(const std::vector<DllmExample>& examples, const CollateOptions& opt);

// Where a micro-batch sits in Automodel's global sample order, which seeds its corruption.
struct SamplePlace {
  int64_t step = 0, dp_rank = 0, dp_size = 1, local_batch_size = 1, grad_acc_steps = 1, microbatch = 0;
  // Automodel's global index of row `row`: a permutation of [step·gbs, (step + 1)·gbs).
  int64_t global_index(int64_t row) const;
};

// The corruption draws of every row (automodel_corruption_draws from each row's seed).
std::vector<AutomodelCorruptionDraws> corruption_draws(uint64_t base_seed, const SamplePlace& place, int64_t rows,
                                                       int64_t seq_len, int64_t vocab_size, double eps);
// noisy [B, S] i64: where u < t on a supervised position, the replacement token; else the clean one.
Tensor corrupt(const DllmBatch& batch, const std::vector<AutomodelCorruptionDraws>& draws);

// The denoiser's window over each row's response (§D.4): R = the longest response (with its
// fill), position j of row b is absolute position prefix_b + j (clamped to S - 1).
struct ResponseWindow {
  int64_t block_size = 0;
  std::vector<int64_t> prefix, response, selected;  // per row: prompt length, response length, scored block
  Tensor canvas_ids, target_ids, positions;         // [B, R] i64: noisy and clean tokens, absolute positions
  Tensor valid;                                     // [B, R] i64: 1 on the row's response
  Tensor loss_sel;                                  // [B, R] i64: supervised and in the selected block
  int64_t length() const { return canvas_ids.size(1); }
  int64_t scored() const;  // tokens of loss_sel
};

// sel_u [B] f32: the block-selection uniforms; row b scores block floor(sel_u[b] · blocks_b).
ResponseWindow response_window(const DllmBatch& batch, const Tensor& noisy, int64_t block_size, const Tensor& sel_u);
// The same window with each row's scored block given: selected [B] integers in [0, blocks of the row).
ResponseWindow response_window_at(const DllmBatch& batch, const Tensor& noisy, int64_t block_size,
                                  const Tensor& selected);

// Next-token pairs (t, t + 1) with both attended: the encoder's AR loss terms (§D.7).
int64_t ar_count(const DllmBatch& batch);
// [B, S] i64: input_ids[t + 1] where the pair (t, t + 1) is attended, else -100.
Tensor ar_targets(const DllmBatch& batch);

// The denoiser's block-causal attention (§D.5) over [encoder keys of all S positions ; canvas]:
// one run_stack block per block_size rows of the window, whose queries see the prompt and the
// clean response blocks before theirs (full layers; sliding layers only the last
// sliding_window - 1 of those) and their own block's valid canvas keys. A block with no valid
// row of an example (its outputs are never scored) sees all its canvas keys, so no query attends
// over nothing.
std::vector<model::StackAttention::Block> training_blocks(const ResponseWindow& w, int64_t seq_len,
                                                          int64_t sliding_window);

}  // namespace g4::diffusion

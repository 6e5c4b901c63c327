// Context parallelism: the ranks of a cp group each hold one contiguous, equal slice of every
// sequence (rank r holds positions [r*S/cp, (r+1)*S/cp)). Everything per-token runs on the local
// slice; attention is a ring over the group (ring_attention below).
#pragma once
#include <cstdint>

#include "autograd/variable.h"
#include "model/gemma4.h"
#include "ops/attention.h"
#include "parallel/communicator.h"

namespace g4::parallel {

// Attention of this rank's queries over the keys of every rank of `cp`.
// q [B, Sl, nH, d], k [B, Sl, nKV, d], v [B, Sl, nKV, dv] are this rank's slices (Sl = S/cp on
// every rank). `mask` describes this rank's slice: q_start == k_start is the absolute index of its
// first token (rank * Sl for a whole sequence), and q_doc, k_doc, key_valid (optional) are [B, Sl]
// for its own tokens; the other ranks' document ids and key_valid are all-gathered once. So are
// the image blocks (q_block, k_block [B, Sl], ids of the whole sequence, as vision_block_ids
// numbers them over whole rows): a query sees the later keys of its image on any rank, and a
// block of keys after every local query is computed when it shares an image with them.
//
// Forward: cp - 1 send_recv steps pass the K/V blocks around the ring (rank r sends to r+1 and
// receives from r-1). Each block is attended with its owner's absolute offset, and the partial
// results are merged by log-sum-exp. Blocks no query can see (causal future, outside the window)
// are not computed, but every rank still takes part in every step.
// Backward: a second ring. Each K/V block travels again with its dK/dV accumulators; every rank
// adds its queries' share (against the merged output and lse) and accumulates dQ, and a last step
// hands the summed dK/dV to the block's owner. A rank holds at most its current block and the one
// arriving, forward and backward, whatever the size of the group.
// Equals ops::attention on the full sequence up to summation order. Collective: every rank of
// `cp` calls it, and its backward, in the same order.
// q, k, v live where `cp` moves tensors: f32 or f64 on the CPU; bf16 on the GPU, where the blocks
// run on the CUDA flash attention, merge in fp32 (ops::attention_merge_) and the output is rounded
// to bf16 once; the backward's dQ and travelling dK/dV accumulators are fp32 there.
ag::Var ring_attention(Communicator& cp, const ag::Var& q, const ag::Var& k, const ag::Var& v,
                       const ops::AttentionMask& mask, double scale);

// Rank `rank`'s slice of a [B, S, ...] tensor along dim 1 (S must divide by cp).
Tensor sequence_shard(const Tensor& t, int rank, int cp);

// One cp rank's part of a batch. targets are the labels already shifted left over the whole
// sequence (model::shift_labels) before slicing, so the target of a slice's last token is the
// first label of the next slice. position_ids are the global ones.
struct ContextShard {
  Tensor input_ids;     // [B, S/cp]
  Tensor position_ids;  // [B, S/cp] (arange when the batch has none)
  Tensor targets;       // [B, S/cp], -100 = not counted (undefined without labels)
};
ContextShard shard_batch(const Tensor& input_ids, const Tensor& position_ids, const Tensor& labels, int rank, int cp);

// Rows [B, S] padded on the right to the next multiple of cp, so they split into cp equal
// slices: input ids with pad_id, labels -100, and positions that start one more document at 0,
// so no real token attends to a padded one and none is a target. Rows without position ids are
// one document each (an arange). Unchanged (but with positions) when S already divides. i64.
struct PaddedRows {
  Tensor input_ids, position_ids, labels;  // labels undefined when none were given
};
PaddedRows pad_to_multiple(const Tensor& input_ids, const Tensor& position_ids, const Tensor& labels, int cp,
                           int64_t pad_id);
// Integer rows [B, S] padded on the right to P >= S columns with `value`, as i64 (the token types
// of a multimodal batch are padded as pad_to_multiple pads its ids).
Tensor pad_columns(const Tensor& rows, int64_t P, int64_t value);
// The sequence length after pad_to_multiple: S rounded up to a multiple of cp.
int64_t padded_length(int64_t S, int cp);

// Connects the model to its context-parallel group (mesh.cp_group()): its forward then takes one
// shard_batch slice of each sequence, with targets and global position ids, and its attention
// layers run ring_attention over `cp`. `cp` must outlive the model's use of it. A group of one
// rank is allowed (the ring is then the ordinary attention).
void enable_context_parallel(model::Gemma4& model, Communicator& cp);

// Counted targets (!= -100) in this rank's pre-shifted targets [B, S_local], summed over `group`
// (collective; use the mesh's world). The N of global_loss_share under context parallelism.
int64_t global_target_count(const Tensor& targets, Communicator& group);

}  // namespace g4::parallel

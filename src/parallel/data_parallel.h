// Data-parallel training over a DeviceMesh: every rank trains on its own rows of the global batch,
// and after backward the ranks sum their gradients so each holds the gradient of one global loss.
//
// The global loss is the mean cross-entropy over every counted token (label != -100 after the
// shift) of every rank: L = (1/N) sum_i loss_i, N counted over all ranks. Rank r trains on its
// share L_r = (1/N) sum_{i on r} loss_i = (its local mean) * n_r / N, so the shares add up to L and
// the gradient is the single-rank gradient of the concatenated batch, however unevenly the counted
// tokens fall. (A router aux loss in the model's loss is weighted by n_r / N too: the global aux
// term is the token-weighted mean of the ranks' own.)
//
// Because each share is already divided by the global N, gradients are summed, not averaged:
//   - replicated parameters (everything but the routed experts) over every rank of the mesh
//     (dp x ep: every rank saw different tokens, and EP ranks differ in their tokens too);
//   - expert weights over the ranks with the same ep coordinate (dp x cp): within an EP group each
//     rank holds different experts, and their gradients already include every EP peer's tokens
//     (they came by all-to-all); cp ranks hold the same experts but different sequence slices.
// Context-parallel ranks (different slices of the same rows) count as ranks with different tokens.
#pragma once
#include <cstddef>
#include <cstdint>

#include "model/gemma4.h"
#include "parallel/device_mesh.h"

namespace g4::parallel {

// Counted tokens (label != -100 after the left shift) in this rank's labels [B, S], summed over
// the ranks of `group` (collective; use the mesh's world).
int64_t global_token_count(const Tensor& labels, Communicator& group);

// This rank's share of the global loss: out.loss * out.counted_tokens / global_tokens. Backward
// from it, then reduce_gradients. A rank with no counted tokens contributes 0 (and still takes
// part in its peers' exchanges).
ag::Var global_loss_share(const model::ForwardOutputs& out, int64_t global_tokens);

// Sums gradients as described above (collective over the mesh's world and dp group; every rank
// calls it with the same parameter names). A parameter without a gradient counts as zeros and
// has one afterwards. Gradients travel in buckets of up to bucket_bytes.
void reduce_gradients(model::ParamStore& params, DeviceMesh& mesh, size_t bucket_bytes = size_t(32) << 20);

// The expert half of reduce_gradients alone: sums the routed experts' gradients over the ranks
// holding the same slice (dp, then cp). Sharded data parallelism (fsdp.h) reduce-scatters the
// replicated gradients itself and calls this for the experts.
void reduce_expert_gradients(model::ParamStore& params, DeviceMesh& mesh, size_t bucket_bytes = size_t(32) << 20);

}  // namespace g4::parallel

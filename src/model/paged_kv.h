// What Gemma4::forward_paged reads and writes: one step of many sequences packed as one row, and
// the paged K/V pools of the layers (generate/page_pool.h keeps the page bookkeeping).
//
// Layers are of two kinds: full attention and sliding attention (sliding layers of a config with
// sliding_window 0 see everything and count as full). Each kind has its own pages, so a sliding
// page can be given back once it fell out of the window while the full pages stay. Every layer
// that owns K/V holds one k and one v pool [pages, page_size, nKV, d] of its kind's page count;
// a KV-shared layer reads its source layer's pools. K=V layers store k and v as two pools too
// (v is the unroped, unscaled-norm copy of the same projection); one pool for both is a possible
// saving, not done yet.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "ops/paged_attention.h"

namespace g4::model {

enum class AttnKind { kFull = 0, kSliding = 1 };
constexpr int kAttnKinds = 2;

// The kind whose pages layer l reads (a KV-shared layer: its source's kind, checked equal).
AttnKind layer_kind(const io::ModelConfig& cfg, int64_t l);

// One step: T tokens of N sequences, one sequence after another. All tensors are on the model's
// device (the engine builds them on the host and uploads each once per step).
struct PagedStep {
  Tensor ids;        // [T] i64
  Tensor positions;  // [T] i64: each token's position in its sequence
  // Per kind (index AttnKind): where each sequence's keys are (window is set by the model) and
  // the pool row each token's k/v goes to (page * page_size + offset).
  std::array<ops::PagedLayout, kAttnKinds> layout;
  std::array<Tensor, kAttnKinds> slots;  // [T] i64
  Tensor logit_rows;                     // [R] i64: the tokens whose next-token logits are returned
  // Return the LM head's product of those rows (model dtype) without the final softcap: the GPU
  // sampler caps and widens it as it reads it (gen::cuda::sample_batch_async), one pass fewer.
  bool head_product_only = false;
  // Multimodal prefill (undefined otherwise): the soft tokens [M, H] (model dtype) of the step's
  // image/audio placeholders and, per token, the row of [embeddings ; soft_tokens] it takes
  // (merge_rows [T] i64: t for a text token, T + m for the one that takes soft token m), so the
  // merge is Gemma4::forward's (PLE's token half from the pad-mapped ids, its projection from the
  // merged embeddings).
  Tensor soft_tokens, merge_rows;
  // Optional [T] i32: the last key position each token sees on sliding layers
  // (ops::PagedLayout::q_last; image blocks of a bidirectional-vision model); undefined: causal.
  Tensor q_last;
  // Set for prefill steps the paged kernel is slow at: after writing the pages the model reads the
  // keys back from the pools (rows, per kind) and attends with ops::attention, the training
  // forward's kernel. Not with q_last. Two cases, both built by the engine:
  //   - every sequence starts at its first token (prompts with nothing cached): the keys are the
  //     step's own rows (rows = slots), the sequences documents of one packed row (docs [T] i32,
  //     each token's sequence), positions from 0;
  //   - one sequence's prompt chunk after keys already held: rows are its keys from position
  //     k_start[kind] (0, or the first one a sliding window still shows) up to its last query, the
  //     queries from position q_start; no docs.
  struct DenseKeys {
    std::array<Tensor, kAttnKinds> rows;  // [K] i64 pool rows
    std::array<int64_t, kAttnKinds> k_start{};
    int64_t q_start = 0;
    Tensor docs;
  };
  std::optional<DenseKeys> dense;
};

// The pools of every layer that owns K/V (undefined tensors for KV-shared layers).
struct PagedKV {
  int64_t page_size = 0;
  std::array<int64_t, kAttnKinds> pages{};  // per kind
  std::vector<Tensor> k, v;                 // per layer
  // Copies page `src` to page `dst` in every pool of `kind` (copy on write of a shared page).
  void copy_page(AttnKind kind, int64_t src, int64_t dst, const io::ModelConfig& cfg);
};

// Bytes one page of `kind` takes over all layers owning K/V of that kind (0 when none).
int64_t page_bytes(const io::ModelConfig& cfg, DType dtype, AttnKind kind, int64_t page_size);
// Pools of pages[kind] pages each (a kind with no layer gets none), uninitialised.
PagedKV allocate_paged_kv(const io::ModelConfig& cfg, DType dtype, Device device, std::array<int64_t, kAttnKinds> pages,
                          int64_t page_size);

}  // namespace g4::model

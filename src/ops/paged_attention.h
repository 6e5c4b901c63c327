// Attention over a paged KV cache, for generation: the keys and values of many sequences live in
// fixed-size pages of one pool, and each step's query rows (a whole prompt, a prompt's remainder,
// or one decode token per sequence) are packed one sequence after another with no padding.
//
// Pages: k_pages [P, page_size, nKV, d] and v_pages [P, page_size, nKV, dv]. Key j (absolute
// position j of its sequence) of sequence i is row j % page_size of page page_table[i][j / page_size].
#pragma once
#include "core/tensor.h"

namespace g4::ops {

// Where each sequence of a step sits. Integer tensors on the device of q (i32).
struct PagedLayout {
  // [N + 1]: the query rows of sequence i are cu_q[i] .. cu_q[i + 1] - 1 of q (cu_q[0] = 0,
  // non-decreasing; a sequence may have no query row in a step).
  Tensor cu_q;
  // [N]: keys of sequence i held after this step's writes, i.e. positions 0 .. kv_len[i] - 1.
  // Query row r of sequence i sits at position kv_len[i] - q_len_i + (r - cu_q[i]).
  Tensor kv_len;
  // [N, max_pages]: logical page p of sequence i is physical page page_table[i][p]. Pages no query
  // of the step can see (out of a sliding window) may be -1; a visible key on page -1 is an error
  // of the caller (the CPU reference checks it).
  Tensor page_table;
  // Optional [N]: first visible key position of each sequence (a document start); absent = 0.
  Tensor kv_start;
  // > 0: causal sliding window, a query at position p sees keys p - window < j <= p.
  int64_t window = 0;
  // Optional [T] (one per query row): the last key position each query sees, at least its own
  // position (absent: its own position, causal). An image block of a bidirectional-vision model lets
  // its queries see the later keys of their block on sliding layers (MULTIMODAL.md 4.4); the window
  // still counts back from the query's own position. Non-decreasing within a sequence (the CUDA
  // kernel takes a tile's last row as the tile's reach) and below kv_len.
  Tensor q_last;
};

// q [T, nH, d] (nH a multiple of nKV; query head h reads kv head h / (nH / nKV)). Causal: a
// query sees keys kv_start <= j <= its position (within the window), or up to its q_last.
// Returns [T, nH, dv] in q's dtype; softmax in fp32 (f64 for f64 inputs). A query that sees no key gets 0.
Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale);

// Writes token t's k [T, nKV, d] and v [T, nKV, dv] into pool row slots[t] (= page * page_size +
// offset; slots [T] i64 on the pages' device); slot -1 writes nothing (a token whose key a layer
// kind does not keep).
void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots);
// The checks of write_kv_pages' arguments, for the ops that write pages too (ops::norm_rope_write_kv),
// naming `op` in their errors.
void check_write_kv_pages_args(const char* op, const Tensor& k, const Tensor& v, const Tensor& k_pages,
                               const Tensor& v_pages, const Tensor& slots);

}  // namespace g4::ops

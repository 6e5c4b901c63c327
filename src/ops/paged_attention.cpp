// The one entry point of the ops in ops/paged_attention.h: arguments are checked here, then the
// call goes to the backend of the device the tensors live on.
#include "ops/paged_attention.h"

#include "ops/cpu/paged_attention.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/paged_attention.h"
#endif

namespace g4::ops {

namespace {
// Pools [P, page_size, nKV, d] / [P, page_size, nKV, dv] of one dtype and device, agreeing on
// everything but the head dim.
void check_pools(const char* op, const Tensor& k_pages, const Tensor& v_pages) {
  check_rank(op, "k_pages", k_pages, 4, "[pages, page_size, nKV, d]");
  check_rank(op, "v_pages", v_pages, 4, "[pages, page_size, nKV, dv]");
  check_same_dtype(op, "k_pages", k_pages, "v_pages", v_pages);
  G4_CHECK(k_pages.size(0) == v_pages.size(0) && k_pages.size(1) == v_pages.size(1) &&
               k_pages.size(2) == v_pages.size(2),
           op, ": v_pages ", v_pages.describe(), " does not match k_pages ", k_pages.describe(),
           " (pages, page size and kv heads must agree)");
  G4_CHECK(k_pages.size(1) > 0 && k_pages.size(2) > 0, op, ": empty pages ", k_pages.describe());
  if (on_gpu(k_pages)) {
    G4_CHECK(k_pages.dtype() == DType::BF16, op, ": the CUDA pages are bf16, got ", k_pages.describe());
    const int64_t d = k_pages.size(3), dv = v_pages.size(3);
    G4_CHECK(d % 8 == 0 && dv % 8 == 0 && d <= 512 && dv <= 512, op,
             ": the CUDA kernels need head dims that are multiples of 8 and at most 512, got k_pages ",
             k_pages.describe(), " and v_pages ", v_pages.describe());
  }
}

void check_index_vector(const char* op, const char* name, const Tensor& t, int64_t n, Device device) {
  check_indices(op, name, t, device);
  G4_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " ", t.describe(), " must be [", n, "]");
}
}  // namespace

Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale) {
  const char* op = "paged_attention";
  check_rank(op, "q", q, 3, "[T, nH, d]");
  check_pools(op, k_pages, v_pages);
  check_same_dtype(op, "q", q, "k_pages", k_pages);
  G4_CHECK(q.size(2) == k_pages.size(3), op, ": q ", q.describe(), " and k_pages ", k_pages.describe(),
           " have different head dims");
  G4_CHECK(q.size(1) % k_pages.size(2) == 0, op, ": query heads of q ", q.describe(),
           " are not a multiple of the kv heads of k_pages ", k_pages.describe());
  G4_CHECK(layout.window >= 0, op, ": window must be >= 0, got ", layout.window);
  check_rank(op, "layout.page_table", layout.page_table, 2, "[N, max_pages]");
  const Device dev = q.device();
  const int64_t n = layout.page_table.size(0);
  check_index_vector(op, "layout.cu_q", layout.cu_q, n + 1, dev);
  check_index_vector(op, "layout.kv_len", layout.kv_len, n, dev);
  check_indices(op, "layout.page_table", layout.page_table, dev);
  if (layout.kv_start.defined()) check_index_vector(op, "layout.kv_start", layout.kv_start, n, dev);
  if (layout.q_last.defined()) check_index_vector(op, "layout.q_last", layout.q_last, q.size(0), dev);
  return G4_DISPATCH(q, paged_attention(q, k_pages, v_pages, layout, scale));
}

void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots) {
  check_write_kv_pages_args("write_kv_pages", k, v, k_pages, v_pages, slots);
  G4_DISPATCH(k, write_kv_pages(k, v, k_pages, v_pages, slots));
}

void check_write_kv_pages_args(const char* op, const Tensor& k, const Tensor& v, const Tensor& k_pages,
                               const Tensor& v_pages, const Tensor& slots) {
  check_pools(op, k_pages, v_pages);
  check_rank(op, "k", k, 3, "[T, nKV, d]");
  check_rank(op, "v", v, 3, "[T, nKV, dv]");
  check_same_dtype(op, "k", k, "k_pages", k_pages);
  check_same_dtype(op, "v", v, "v_pages", v_pages);
  G4_CHECK(k.size(1) == k_pages.size(2) && k.size(2) == k_pages.size(3), op, ": k ", k.describe(),
           " does not fit k_pages ", k_pages.describe());
  G4_CHECK(v.size(0) == k.size(0) && v.size(1) == v_pages.size(2) && v.size(2) == v_pages.size(3), op, ": v ",
           v.describe(), " does not fit v_pages ", v_pages.describe(), " or k ", k.describe());
  check_index_vector(op, "slots", slots, k.size(0), k.device());
}

}  // namespace g4::ops

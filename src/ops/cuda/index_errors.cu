// The mapped record behind ops/device_checks.h and its host-side check.
#include "ops/cuda/index_errors.h"

#include <atomic>
#include <mutex>

#include "core/cuda/runtime.h"
#include "core/error.h"

namespace g4::ops::cuda {

namespace {
struct Slot {
  int* claim = nullptr;
  IndexErrorRecord* host = nullptr;    // as the host sees it
  IndexErrorRecord* device = nullptr;  // as kernels see it
};

std::mutex slot_mutex;
Slot* slot = nullptr;  // created on first use, never freed (see core/cuda/runtime.cpp)

const char* describe_op(int op) {
  switch (static_cast<IndexOp>(op)) {
    case IndexOp::Embedding: return "embedding: id";
    case IndexOp::EmbeddingBackward: return "embedding_backward: id";
    case IndexOp::CrossEntropyRows: return "cross_entropy_rows: target";
    case IndexOp::CrossEntropyRowsBackward: return "cross_entropy_rows_backward: target";
    case IndexOp::PagedAttentionPage: return "paged_attention: page";
    case IndexOp::WriteKvSlot: return "write_kv_pages: slot";
  }
  return "unknown op: index";
}
}  // namespace

IndexErrorSink index_error_sink(IndexOp op) {
  std::lock_guard<std::mutex> lock(slot_mutex);
  if (!slot) {
    auto* s = new Slot;
    G4_CUDA_CHECK(cudaMalloc(&s->claim, sizeof(int)));
    G4_CUDA_CHECK(cudaMemsetAsync(s->claim, 0, sizeof(int), g4::cuda::stream()));
    G4_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&s->host), sizeof(IndexErrorRecord), cudaHostAllocMapped));
    *s->host = IndexErrorRecord{};
    G4_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&s->device), s->host, 0));
    slot = s;
  }
  return IndexErrorSink{slot->claim, slot->device, static_cast<int>(op)};
}

void raise_index_errors(bool wait) {
  Slot* s = nullptr;
  {
    std::lock_guard<std::mutex> lock(slot_mutex);
    s = slot;
  }
  if (!s) return;  // no kernel that reports has ever run
  if (wait) G4_CUDA_CHECK(cudaStreamSynchronize(g4::cuda::stream()));
  volatile IndexErrorRecord* r = s->host;
  if (r->set == 0) return;
  std::atomic_thread_fence(std::memory_order_acquire);
  const IndexErrorRecord rec{1, r->op, r->value, r->position, r->limit};
  // Clear: the host field now, the claim in stream order (no kernel can claim before it runs).
  r->set = 0;
  G4_CUDA_CHECK(cudaMemsetAsync(s->claim, 0, sizeof(int), g4::cuda::stream()));
  if (rec.op == static_cast<int>(IndexOp::PagedAttentionPage))
    G4_FAIL("paged_attention: sequence ", rec.position, " sees keys on page ", rec.value, ", outside the pool [0, ",
            rec.limit, ") (a page of -1, or kv_len beyond its page table; found on the GPU, reported at a later "
            "synchronisation point)");
  if (rec.op == static_cast<int>(IndexOp::WriteKvSlot))
    G4_FAIL("write_kv_pages: token ", rec.position, " goes to slot ", rec.value, " of a pool of ", rec.limit,
            " rows (found on the GPU; reported at a later synchronisation point)");
  const bool row = rec.op == static_cast<int>(IndexOp::CrossEntropyRows) ||
                   rec.op == static_cast<int>(IndexOp::CrossEntropyRowsBackward);
  G4_FAIL(describe_op(rec.op), " ", rec.value, row ? " of row " : " at flat position ", rec.position,
          row ? " is outside [0, " : " is outside the vocabulary [0, ", rec.limit, ")",
          row ? " and is not ignore_index" : "", " (found on the GPU; reported at a later synchronisation point)");
}

}  // namespace g4::ops::cuda

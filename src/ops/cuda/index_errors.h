// The device side of ops/device_checks.h. A kernel that finds an index outside its range claims a
// device word with atomicCAS (so exactly one thread writes the record, never a torn mix of two),
// writes the record into mapped pinned host memory and publishes it with a system fence; the host
// reads it without a copy. The claim stays taken until the host has raised the error.
//
// The host functions are plain declarations (this header is also included by host-compiled .cpp
// files); the device function is only visible to nvcc.
#pragma once
#include <cstdint>

namespace g4::ops::cuda {

// Which op and which kind of index; the host turns it into the message.
enum class IndexOp : int {
  Embedding = 1,
  EmbeddingBackward,
  CrossEntropyRows,
  CrossEntropyRowsBackward,
  PagedAttentionPage,  // value: the page (-1 when missing), position: the sequence, limit: the pool's pages
  WriteKvSlot,         // value: the slot, position: the token, limit: the pool's rows
};

struct IndexErrorRecord {
  int set;  // written last, after a system fence
  int op;
  long long value;
  long long position;
  long long limit;
};

// What a kernel needs to report: passed by value as a kernel argument.
struct IndexErrorSink {
  int* claim;                // device memory, 0 = free
  IndexErrorRecord* record;  // mapped pinned host memory (device pointer)
  int op;
};

// Allocates the record on first use.
IndexErrorSink index_error_sink(IndexOp op);
// Raises the recorded error, if any, and clears the record. wait = true synchronises the stream
// first; wait = false reports only what finished kernels (or the running one) already wrote.
void raise_index_errors(bool wait);

#ifdef __CUDACC__
__device__ inline void report_index_error(const IndexErrorSink& sink, long long value, long long position,
                                          long long limit) {
  if (atomicCAS(sink.claim, 0, 1) != 0) return;
  volatile IndexErrorRecord* r = sink.record;
  r->op = sink.op;
  r->value = value;
  r->position = position;
  r->limit = limit;
  __threadfence_system();
  r->set = 1;
}
#endif

}  // namespace g4::ops::cuda

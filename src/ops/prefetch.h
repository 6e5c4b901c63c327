// Warming the GPU's L2 cache with weights a decode step is about to read. At batch 1 a decode step
// alternates big weight reads (the projections' GEMVs) with chains of small kernels that wait on
// latency (norms, RoPE, attention over a short context, the router), during which memory sits idle.
// A prefetch forked beside such a chain (model/gemma4.cpp) loads the next projection's weights into
// L2 meanwhile, so that projection reads them from L2. A hint only: it changes no value anything
// reads, and costs nothing on the CPU.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace g4::ops {

// Asks L2 for the tensors' bytes in order, the first max_bytes of them in all (a tensor that does
// not fit whole contributes its first bytes: the rows a GEMV's first blocks read). Tensors on the
// CPU, undefined ones and max_bytes <= 0 ask for nothing. Queued on the compute stream.
void prefetch_to_l2(const std::vector<Tensor>& tensors, int64_t max_bytes);

}  // namespace g4::ops

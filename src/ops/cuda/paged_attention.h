// CUDA paged attention (bf16 pages, fp32 softmax): the GPU definitions of ops/paged_attention.h,
// called by ops/paged_attention.cpp (which checks the arguments) when q lives on the GPU.
#pragma once
#include "ops/paged_attention.h"

namespace g4::ops::cuda {

Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale);
void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots);

}  // namespace g4::ops::cuda

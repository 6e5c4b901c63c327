// The CPU reference of ops/paged_attention.h (one (query row, head) at a time in f32 or f64),
// called by ops/paged_attention.cpp once it has checked the arguments.
#pragma once
#include "ops/paged_attention.h"

namespace g4::ops::cpu {

Tensor paged_attention(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages, const PagedLayout& layout,
                       double scale);
void write_kv_pages(const Tensor& k, const Tensor& v, Tensor& k_pages, Tensor& v_pages, const Tensor& slots);

}  // namespace g4::ops::cpu

// narrow / concat (declared in ops/elementwise.h). They only move bytes, so they work for every
// dtype: a tensor is viewed as [outer, dim, inner] and whole [inner] blocks are copied.
#include <cstring>

#include "ops/cpu/common.h"
#include "ops/cpu/shape_ops.h"

namespace g4::ops::cpu {

namespace {

// Copies the [outer, len, inner] block between a tensor with `src_len` rows along the dimension
// (starting at src_start) and one with `dst_len` rows (starting at dst_start).
void copy_blocks(const char* src, int64_t src_len, int64_t src_start, char* dst, int64_t dst_len, int64_t dst_start,
                 int64_t outer, int64_t len, int64_t inner_bytes) {
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(dst + (o * dst_len + dst_start) * inner_bytes, src + (o * src_len + src_start) * inner_bytes,
                static_cast<size_t>(len * inner_bytes));
  }
}
}  // namespace

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len) {
  const int64_t d = normalize_dim("narrow", x.shape(), dim);
  Shape out_shape = x.shape();
  out_shape[d] = len;
  Tensor y = Tensor::empty(out_shape, x.dtype());
  const int64_t inner_bytes = inner_size(x.shape(), d) * static_cast<int64_t>(dtype_size(x.dtype()));
  copy_blocks(static_cast<const char*>(x.raw()), x.size(d), start, static_cast<char*>(y.raw()), len, 0,
              outer_size(x.shape(), d), len, inner_bytes);
  return y;
}

Tensor narrow_backward(const Tensor& dy, const Shape& input_shape, int64_t dim, int64_t start) {
  const int64_t d = normalize_dim("narrow_backward", input_shape, dim);
  Tensor dx = Tensor::zeros(input_shape, dy.dtype());
  const int64_t inner_bytes = inner_size(input_shape, d) * static_cast<int64_t>(dtype_size(dy.dtype()));
  copy_blocks(static_cast<const char*>(dy.raw()), dy.size(d), 0, static_cast<char*>(dx.raw()), input_shape[d], start,
              outer_size(input_shape, d), dy.size(d), inner_bytes);
  return dx;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  const int64_t d = normalize_dim("concat", xs[0].shape(), dim);
  Shape out_shape = xs[0].shape();
  out_shape[d] = 0;
  for (const Tensor& x : xs) out_shape[d] += x.size(d);
  Tensor y = Tensor::empty(out_shape, xs[0].dtype());
  const int64_t inner_bytes = inner_size(out_shape, d) * static_cast<int64_t>(dtype_size(y.dtype()));
  const int64_t outer = outer_size(out_shape, d);
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    copy_blocks(static_cast<const char*>(x.raw()), x.size(d), 0, static_cast<char*>(y.raw()), out_shape[d], offset,
                outer, x.size(d), inner_bytes);
    offset += x.size(d);
  }
  return y;
}

}  // namespace g4::ops::cpu

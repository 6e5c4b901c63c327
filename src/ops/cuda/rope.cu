// Rotary embedding on the GPU, rotate_half convention. A thread owns V consecutive pairs
// (x[i], x[i + d/2]) of one token and a share of its heads: it computes the V angles once,
// angle = float(pos) * inv_freq[i] in fp32 with precise sincosf (as Hugging Face's fp32 table),
// rounds cos/sin to the tensor's dtype (HF casts the table to the activation dtype), and rotates
// those pairs in each of its heads in fp32, rounding once on the store.
#include "ops/cuda/common.cuh"
#include "ops/cuda/rope.h"

namespace g4::ops::cuda {

namespace {

constexpr int kThreads = 256;

template <class T, class I, int V>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ y, const I* __restrict__ pos,
                            const float* __restrict__ inv_freq, int64_t tokens, int heads, int half, int head_split,
                            float sign) {
  pdl_begin();
  const int hpack = half / V;  // packs of pairs per head
  const int heads_per = (heads + head_split - 1) / head_split;
  const int64_t work = tokens * hpack * head_split;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t d = 2 * int64_t{half};
  for (int64_t w = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; w < work; w += stride) {
    // Pack index fastest, so neighbouring threads touch neighbouring addresses.
    const int ip = static_cast<int>(w % hpack);
    const int64_t rest = w / hpack;
    const int hs = static_cast<int>(rest % head_split);
    const int64_t t = rest / head_split;
    const float p = static_cast<float>(pos[t]);
    float c[V], s[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float sn, cs;
      sincosf(p * inv_freq[ip * V + e], &sn, &cs);
      c[e] = to_f32(from_f32<T>(cs));
      s[e] = to_f32(from_f32<T>(sign * sn));
    }
    const int h_end = min(heads, (hs + 1) * heads_per);
    for (int h = hs * heads_per; h < h_end; ++h) {
      const int64_t base = (t * heads + h) * d + int64_t{ip} * V;
      const Pack<T, V> a = load_pack<T, V>(x + base);
      const Pack<T, V> b = load_pack<T, V>(x + base + half);
      Pack<T, V> ya, yb;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float x1 = to_f32(a.v[e]), x2 = to_f32(b.v[e]);
        ya.v[e] = from_f32<T>(x1 * c[e] - x2 * s[e]);
        yb.v[e] = from_f32<T>(x2 * c[e] + x1 * s[e]);
      }
      store_pack<T, V>(y + base, ya);
      store_pack<T, V>(y + base + half, yb);
    }
  }
}

Tensor rotate(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float sign) {
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(2), d = x.size(3), half = d / 2;
  G4_CHECK(heads < (int64_t{1} << 31) && half < (int64_t{1} << 30), op, ": x ", x.describe(), " too large");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t tokens = batch * seq;
  if (x.numel() == 0) return y;
  dispatch_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* px = static_cast<const T*>(x.raw());
    T* py = static_cast<T*>(y.raw());
    const float* pf = static_cast<const float*>(inv_freq.raw());
    const bool vec = half % V == 0 && aligned16(px) && aligned16(py);
    const int v = vec ? V : 1;
    // Split the heads over more threads when there are few tokens (decoding), so that at least
    // ~64K threads run; each split recomputes its tokens' angles.
    const int64_t items = tokens * (half / v);
    int64_t split = (int64_t{1} << 16) / (items < 1 ? 1 : items);
    split = split < 1 ? 1 : (split > heads ? heads : split);
    const int64_t work = items * split;
    const unsigned grid = grid_for(work, kThreads);
    const int ih = static_cast<int>(heads), hh = static_cast<int>(half), sp = static_cast<int>(split);
    auto launch = [&](auto itag) {
      using I = decltype(itag);
      const I* pp = static_cast<const I*>(positions.raw());
      if (vec) {
        launch_pdl(rope_kernel<T, I, V>, grid, kThreads, 0, px, py, pp, pf, tokens, ih, hh, sp, sign);
      } else {
        launch_pdl(rope_kernel<T, I, 1>, grid, kThreads, 0, px, py, pp, pf, tokens, ih, hh, sp, sign);
      }
    };
    if (positions.dtype() == DType::I32) {
      launch(int32_t{});
    } else {
      launch(int64_t{});
    }
  });
  return y;
}

}  // namespace

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  return rotate("rope", x, positions, inv_freq, 1.f);
}

Tensor rope_backward(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq) {
  return rotate("rope_backward", dy, positions, inv_freq, -1.f);
}

}  // namespace g4::ops::cuda

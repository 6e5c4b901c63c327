// Host side of the CUDA attention (arguments checked by ops/attention.cpp): the mask description turned into device
// pointers, output allocation and the kernel launches (attention_fwd.cu, attention_bwd.cu). No
// host synchronisation: everything is queued on g4::cuda::stream().
#include "ops/cuda/attention.h"

#include <cmath>
#include <limits>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/common.cuh"

namespace g4::ops::cuda {

namespace {

int to_int(const char* op, const char* what, int64_t x) {
  G4_CHECK(x >= 0 && x <= std::numeric_limits<int>::max(), op, ": ", what, " = ", x, " is out of range");
  return static_cast<int>(x);
}

// The kernels' int dimensions (the sizes the kernels index with must fit an int).
attn::Dims dims_of(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  attn::Dims dm{};
  dm.batch = to_int(op, "batch", q.size(0));
  dm.sq = to_int(op, "Sq", q.size(1));
  dm.sk = to_int(op, "Sk", k.size(1));
  dm.heads = to_int(op, "nH", q.size(2));
  dm.kv_heads = to_int(op, "nKV", k.size(2));
  dm.d = static_cast<int>(q.size(3));
  dm.dv = static_cast<int>(v.size(3));
  dm.group = dm.heads / dm.kv_heads;
  return dm;
}

// An optional integer mask tensor as i32 on the GPU (copied or converted only when needed).
Tensor mask_tensor(const Tensor& t) {
  Tensor g = t.device() == Device::CUDA ? t : t.to(Device::CUDA);
  return g.dtype() == DType::I32 ? g : g.to(DType::I32);
}

// sorted[b] = 1 when q_doc[b, :] and k_doc[b, :] are both non-decreasing (MaskDev::docs_sorted).
__global__ void docs_sorted_kernel(const int32_t* __restrict__ q_doc, const int32_t* __restrict__ k_doc, int sq, int sk,
                                   int32_t* __restrict__ sorted) {
  const int b = blockIdx.x;
  const int32_t* qd = q_doc + static_cast<long long>(b) * sq;
  const int32_t* kd = k_doc + static_cast<long long>(b) * sk;
  int out_of_order = 0;
  for (int i = threadIdx.x; i + 1 < sq; i += blockDim.x) out_of_order |= qd[i] > qd[i + 1];
  for (int j = threadIdx.x; j + 1 < sk; j += blockDim.x) out_of_order |= kd[j] > kd[j + 1];
  out_of_order = __syncthreads_or(out_of_order);
  if (threadIdx.x == 0) sorted[b] = out_of_order ? 0 : 1;
}

// The device view of `m`; `keep` holds the converted tensors alive until the launches are queued.
attn::MaskDev make_mask(const AttentionMask& m, const attn::Dims& dm, Tensor (&keep)[6]) {
  attn::MaskDev md{};
  md.causal = m.causal ? 1 : 0;
  md.window = m.window;
  md.q_start = m.q_start;
  md.k_start = m.k_start;
  if (m.key_valid.defined()) {
    keep[0] = mask_tensor(m.key_valid);
    md.key_valid = keep[0].data<int32_t>();
  }
  if (m.q_doc.defined()) {
    keep[1] = mask_tensor(m.q_doc);
    keep[2] = mask_tensor(m.k_doc);
    md.q_doc = keep[1].data<int32_t>();
    md.k_doc = keep[2].data<int32_t>();
    keep[3] = Tensor::empty({dm.batch}, DType::I32, Device::CUDA);
    md.docs_sorted = keep[3].data<int32_t>();
    if (dm.batch > 0) {
      docs_sorted_kernel<<<static_cast<unsigned>(dm.batch), 256, 0, g4::cuda::stream()>>>(md.q_doc, md.k_doc, dm.sq,
                                                                                           dm.sk, keep[3].data<int32_t>());
      G4_CUDA_CHECK_LAUNCH();
    }
  }
  // The CPU reference applies block ids on causal masks only; so do the kernels.
  if (m.q_block.defined() && m.causal) {
    keep[4] = mask_tensor(m.q_block);
    keep[5] = mask_tensor(m.k_block);
    md.q_block = keep[4].data<int32_t>();
    md.k_block = keep[5].data<int32_t>();
  }
  return md;
}

// One warp per (batch, query, head) row of attention_merge_: every lane reads the row's two lse
// values before lane 0 replaces the running one, and the lanes share the row's dv outputs.
template <class Tb>
__global__ void attention_merge_kernel(float* __restrict__ out, float* __restrict__ lse, const Tb* __restrict__ out_b,
                                       const float* __restrict__ lse_b, long long rows, int sq, int heads, int dv) {
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  const int lane = threadIdx.x % 32;
  for (long long row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < rows; row += warps) {
    // row = (b * sq + i) * heads + h, out's layout; lse is [B, nH, Sq].
    const int h = static_cast<int>(row % heads);
    const long long bi = row / heads;
    const int i = static_cast<int>(bi % sq);
    const long long b = bi / sq;
    const long long li = (b * heads + h) * sq + i;
    const float lo = lse[li], lb = lse_b[li];
    __syncwarp();
    if (lb == -INFINITY) continue;  // the block shows this query nothing (uniform over the warp)
    const float mx = fmaxf(lo, lb);
    const float l = mx + logf(expf(lo - mx) + expf(lb - mx));
    const float wo = expf(lo - l), wb = expf(lb - l);  // wo = 0 when lo = -inf
    float* o = out + row * dv;
    const Tb* ob = out_b + row * dv;
    for (int j = lane; j < dv; j += 32) o[j] = wo * o[j] + wb * to_f32(ob[j]);
    if (lane == 0) lse[li] = l;
  }
}

template <class T>
T* ptr(Tensor& t) {
  return static_cast<T*>(t.raw());
}
template <class T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}

// A forward's arguments for q, k and v under mask (its device tensors held in keep), writing into
// out and, if set, l.
attn::FwdArgs forward_args(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                           double scale, const attn::Dims& dm, Tensor (&keep)[6], Tensor& out, Tensor* l) {
  attn::FwdArgs a{};
  a.mask = make_mask(mask, dm, keep);
  a.dims = dm;
  a.q = cptr<attn::bf16>(q);
  a.k = cptr<attn::bf16>(k);
  a.v = cptr<attn::bf16>(v);
  a.out = ptr<attn::bf16>(out);
  a.lse = l != nullptr ? ptr<float>(*l) : nullptr;
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  return a;
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse, ForwardKernel kernel) {
  const attn::Dims dm = dims_of("attention", q, k, v);
  Tensor keep[6];
  Tensor out = Tensor::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, DType::BF16, Device::CUDA);
  Tensor l;
  if (lse != nullptr) l = Tensor::empty({q.size(0), q.size(2), q.size(1)}, DType::F32, Device::CUDA);
  if (out.numel() == 0) {
    if (lse != nullptr) *lse = l;
    return out;
  }
  const attn::FwdArgs a = forward_args(q, k, v, mask, scale, dm, keep, out, lse != nullptr ? &l : nullptr);
  const bool wgmma_fits = attn::wgmma_forward_fits(a);
  const bool wgmma_asked = kernel == ForwardKernel::wgmma || kernel == ForwardKernel::wgmma_pipelined ||
                           kernel == ForwardKernel::wgmma_loads_only;
  G4_CHECK(!wgmma_asked || wgmma_fits, "attention: the wgmma forward takes head dims 256 and 512 with d = dv only (q ",
           q.describe(), ", v ", v.describe(), ")");
  const bool pipelined =
      kernel == ForwardKernel::wgmma_pipelined || (kernel == ForwardKernel::automatic && a.dims.d == 256);
  if (kernel == ForwardKernel::wgmma_loads_only)
    attn::forward_wgmma_loads_only(a);
  else if (wgmma_asked || (kernel == ForwardKernel::automatic && wgmma_fits))
    attn::forward_wgmma(a, pipelined);
  else
    attn::forward(a);
  if (lse != nullptr) *lse = l;
  return out;
}

Tensor attention_trace(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale) {
  const attn::Dims dm = dims_of("attention_trace", q, k, v);
  Tensor keep[6];
  Tensor out = Tensor::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, DType::BF16, Device::CUDA);
  attn::FwdArgs a = forward_args(q, k, v, mask, scale, dm, keep, out, nullptr);
  G4_CHECK(dm.d == 512 && attn::wgmma_forward_fits(a) && out.numel() > 0,
           "attention_trace: the softmax group takes head dim 512 with d = dv and some rows (q ", q.describe(), ", v ",
           v.describe(), ")");
  Tensor trace = Tensor::zeros({3, attn::kTraceTiles, attn::kTraceEvents}, DType::I64, Device::CUDA);
  a.trace = ptr<long long>(trace);
  attn::forward_wgmma_trace(a);
  return trace;
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv, BackwardKernel kernel, int key_chunk) {
  const attn::Dims dm = dims_of("attention_backward", q, k, v);
  const Shape lse_shape{q.size(0), q.size(2), q.size(1)};
  Tensor keep[6];
  attn::BwdArgs a{};
  a.mask = make_mask(mask, dm, keep);
  a.dims = dm;
  Tensor dq_new = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
  Tensor dk_new = Tensor::empty(k.shape(), DType::BF16, Device::CUDA);
  Tensor dv_new = Tensor::empty(v.shape(), DType::BF16, Device::CUDA);
  if (k.numel() > 0 && q.numel() == 0) {  // keys but no queries: zero gradients
    dk_new = Tensor::zeros(k.shape(), DType::BF16, Device::CUDA);
    dv_new = Tensor::zeros(v.shape(), DType::BF16, Device::CUDA);
  }
  if (q.numel() > 0 && k.numel() > 0) {
    Tensor dsum = Tensor::empty(lse_shape, DType::F32, Device::CUDA);
    Tensor dq_accum = Tensor::zeros(q.shape(), DType::F32, Device::CUDA);
    attn::backward_dsum(cptr<attn::bf16>(dout), cptr<attn::bf16>(out), ptr<float>(dsum), dm);
    a.q = cptr<attn::bf16>(q);
    a.k = cptr<attn::bf16>(k);
    a.v = cptr<attn::bf16>(v);
    a.dout = cptr<attn::bf16>(dout);
    a.lse = cptr<float>(lse);
    a.dsum = ptr<float>(dsum);
    a.dq_accum = ptr<float>(dq_accum);
    a.dk = ptr<attn::bf16>(dk_new);
    a.dv = ptr<attn::bf16>(dv_new);
    a.scale = static_cast<float>(scale);
    a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
    attn::backward(a, kernel, key_chunk);
    attn::backward_dq_convert(ptr<float>(dq_accum), ptr<attn::bf16>(dq_new), dq_accum.numel(), a.scale);
  } else if (q.numel() > 0) {  // queries but no keys
    dq_new = Tensor::zeros(q.shape(), DType::BF16, Device::CUDA);
  }
  dq = dq_new;
  dk = dk_new;
  dv = dv_new;
}

void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b) {
  const long long rows = out.size(0) * out.size(1) * out.size(2);
  if (rows == 0 || out.size(3) == 0) return;
  const int sq = to_int("attention_merge_", "Sq", out.size(1)), heads = to_int("attention_merge_", "nH", out.size(2)),
            dv = to_int("attention_merge_", "dv", out.size(3));
  constexpr int kThreads = 256;
  const unsigned grid = grid_for(rows * 32, kThreads);
  dispatch_float("attention_merge_", out_b, [&](auto tag) {
    using Tb = decltype(tag);
    attention_merge_kernel<Tb><<<grid, kThreads, 0, g4::cuda::stream()>>>(
        ptr<float>(out), ptr<float>(lse), cptr<Tb>(out_b), cptr<float>(lse_b), rows, sq, heads, dv);
    G4_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace g4::ops::cuda

// Host side of the CUDA attention: argument checks, the mask description turned into device
// pointers, output allocation and the kernel launches (attention_fwd.cu, attention_bwd.cu). No
// host synchronisation: everything is queued on g4::cuda::stream().
#include "ops/cuda/attention.h"

#include <cmath>
#include <limits>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "ops/cuda/attention_kernels.h"

namespace g4::ops::cuda {

namespace {

void check_gpu(const char* op, const char* name, const Tensor& t, DType want) {
  G4_CHECK(t.defined(), op, ": ", name, " is undefined");
  G4_CHECK(t.device() == Device::CUDA, op, ": ", name, " ", t.describe(), " is not on the GPU");
  G4_CHECK(t.dtype() == want, op, ": ", name, " ", t.describe(), " must be ", dtype_name(want),
           " (the CUDA attention takes bf16 q/k/v/out/dout and f32 lse)");
}

int to_int(const char* op, const char* what, int64_t x) {
  G4_CHECK(x >= 0 && x <= std::numeric_limits<int>::max(), op, ": ", what, " = ", x, " is out of range");
  return static_cast<int>(x);
}

attn::Dims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  check_gpu(op, "q", q, DType::BF16);
  check_gpu(op, "k", k, DType::BF16);
  check_gpu(op, "v", v, DType::BF16);
  G4_CHECK(q.dim() == 4, op, ": q must be [B, Sq, nH, d], got ", q.describe());
  G4_CHECK(k.dim() == 4, op, ": k must be [B, Sk, nKV, d], got ", k.describe());
  G4_CHECK(v.dim() == 4, op, ": v must be [B, Sk, nKV, dv], got ", v.describe());
  G4_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), op, ": k ", k.describe(), " does not match q ",
           q.describe(), " (batch and head dim must agree)");
  G4_CHECK(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2), op, ": v ", v.describe(),
           " does not match k ", k.describe(), " (batch, keys and kv heads must agree)");
  G4_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, op, ": query heads of q ", q.describe(),
           " are not a multiple of the kv heads of k ", k.describe());
  const int64_t d = q.size(3), dv = v.size(3);
  G4_CHECK(d > 0 && dv > 0 && d % 8 == 0 && dv % 8 == 0 && d <= 512 && dv <= 512, op,
           ": the CUDA attention needs head dims that are multiples of 8 and at most 512, got q ", q.describe(),
           " and v ", v.describe());
  attn::Dims dm{};
  dm.batch = to_int(op, "batch", q.size(0));
  dm.sq = to_int(op, "Sq", q.size(1));
  dm.sk = to_int(op, "Sk", k.size(1));
  dm.heads = to_int(op, "nH", q.size(2));
  dm.kv_heads = to_int(op, "nKV", k.size(2));
  dm.d = static_cast<int>(d);
  dm.dv = static_cast<int>(dv);
  dm.group = dm.heads / dm.kv_heads;
  return dm;
}

// An optional integer mask tensor as i32 on the GPU (copied or converted only when needed).
Tensor mask_tensor(const char* op, const char* name, const Tensor& t, const Shape& want) {
  G4_CHECK(t.shape() == want, op, ": mask.", name, " ", t.describe(), " must be ", shape_str(want));
  G4_CHECK(!is_floating(t.dtype()), op, ": mask.", name, " must be an integer or bool tensor, got ", t.describe());
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
attn::MaskDev make_mask(const char* op, const AttentionMask& m, const attn::Dims& dm, Tensor (&keep)[4]) {
  G4_CHECK(m.window >= 0, op, ": mask.window must be >= 0, got ", m.window);
  attn::MaskDev md{};
  md.causal = m.causal ? 1 : 0;
  md.window = m.window;
  md.q_start = m.q_start;
  md.k_start = m.k_start;
  if (m.key_valid.defined()) {
    keep[0] = mask_tensor(op, "key_valid", m.key_valid, {dm.batch, dm.sk});
    md.key_valid = keep[0].data<int32_t>();
  }
  G4_CHECK(m.q_doc.defined() == m.k_doc.defined(), op, ": mask.q_doc and mask.k_doc must be given together (q_doc ",
           m.q_doc.describe(), ", k_doc ", m.k_doc.describe(), ")");
  if (m.q_doc.defined()) {
    keep[1] = mask_tensor(op, "q_doc", m.q_doc, {dm.batch, dm.sq});
    keep[2] = mask_tensor(op, "k_doc", m.k_doc, {dm.batch, dm.sk});
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
  return md;
}

template <class T>
T* ptr(Tensor& t) {
  return static_cast<T*>(t.raw());
}
template <class T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse) {
  const char* op = "attention";
  const attn::Dims dm = check_qkv(op, q, k, v);
  Tensor keep[4];
  attn::FwdArgs a{};
  a.mask = make_mask(op, mask, dm, keep);
  a.dims = dm;
  Tensor out = Tensor::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, DType::BF16, Device::CUDA);
  Tensor l;
  if (lse != nullptr) l = Tensor::empty({q.size(0), q.size(2), q.size(1)}, DType::F32, Device::CUDA);
  if (out.numel() == 0) {
    if (lse != nullptr) *lse = l;
    return out;
  }
  a.q = cptr<attn::bf16>(q);
  a.k = cptr<attn::bf16>(k);
  a.v = cptr<attn::bf16>(v);
  a.out = ptr<attn::bf16>(out);
  a.lse = lse != nullptr ? ptr<float>(l) : nullptr;
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  attn::forward(a);
  if (lse != nullptr) *lse = l;
  return out;
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv, BackwardKernel kernel, int key_chunk) {
  const char* op = "attention_backward";
  const attn::Dims dm = check_qkv(op, q, k, v);
  check_gpu(op, "dout", dout, DType::BF16);
  check_gpu(op, "out", out, DType::BF16);
  check_gpu(op, "lse", lse, DType::F32);
  const Shape out_shape{q.size(0), q.size(1), q.size(2), v.size(3)}, lse_shape{q.size(0), q.size(2), q.size(1)};
  G4_CHECK(out.shape() == out_shape, op, ": out ", out.describe(), " must be ", shape_str(out_shape), " for q ",
           q.describe(), " and v ", v.describe());
  G4_CHECK(dout.shape() == out_shape, op, ": dout ", dout.describe(), " must have out's shape ", shape_str(out_shape));
  G4_CHECK(lse.shape() == lse_shape, op, ": lse ", lse.describe(), " must be [B, nH, Sq] = ", shape_str(lse_shape));
  Tensor keep[4];
  attn::BwdArgs a{};
  a.mask = make_mask(op, mask, dm, keep);
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

}  // namespace g4::ops::cuda

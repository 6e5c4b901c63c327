// The one entry point of every op in ops/attention.h: arguments are checked here,
// then the call goes to the backend of the device the tensors live on.
#include "ops/attention.h"

#include "ops/cpu/attention.h"
#include "ops/dispatch.h"
#ifdef G4_WITH_CUDA
#include "ops/cuda/attention.h"
#endif

namespace g4::ops {

namespace {
// q [B, Sq, nH, d], k [B, Sk, nKV, d], v [B, Sk, nKV, dv] of one dtype and device, nH a multiple of
// nKV. The GPU kernels take bf16 and head dims that are multiples of 8 up to 512.
void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  check_rank(op, "q", q, 4, "[B, Sq, nH, d]");
  check_rank(op, "k", k, 4, "[B, Sk, nKV, d]");
  check_rank(op, "v", v, 4, "[B, Sk, nKV, dv]");
  check_same_dtype(op, "q", q, "k", k);
  check_same_dtype(op, "q", q, "v", v);
  G4_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), op, ": k ", k.describe(), " does not match q ",
           q.describe(), " (batch and head dim must agree)");
  G4_CHECK(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2), op, ": v ", v.describe(),
           " does not match k ", k.describe(), " (batch, keys and kv heads must agree)");
  G4_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, op, ": query heads of q ", q.describe(),
           " are not a multiple of the kv heads of k ", k.describe());
  if (on_gpu(q)) {
    G4_CHECK(q.dtype() == DType::BF16, op, ": q ", q.describe(),
             " must be bf16 (the CUDA attention takes bf16 q/k/v/out/dout and f32 lse)");
    const int64_t d = q.size(3), dv = v.size(3);
    G4_CHECK(d > 0 && dv > 0 && d % 8 == 0 && dv % 8 == 0 && d <= 512 && dv <= 512, op,
             ": the CUDA attention needs head dims that are multiples of 8 and at most 512, got q ", q.describe(),
             " and v ", v.describe());
  }
}

// An optional integer mask tensor of the given shape (on the CPU for the CPU op; the GPU op
// uploads CPU ones).
void check_mask_tensor(const char* op, const char* name, const Tensor& t, const Tensor& q, const Shape& want) {
  if (!on_gpu(q)) check_on(op, name, t, Device::CPU);
  G4_CHECK(t.shape() == want, op, ": mask.", name, " ", t.describe(), " must be ", shape_str(want));
  G4_CHECK(!is_floating(t.dtype()), op, ": mask.", name, " must be an integer or bool tensor, got ", t.describe());
}

void check_mask(const char* op, const AttentionMask& m, const Tensor& q, const Tensor& k) {
  G4_CHECK(m.window >= 0, op, ": mask.window must be >= 0, got ", m.window);
  const int64_t batch = q.size(0), sq = q.size(1), sk = k.size(1);
  if (m.key_valid.defined()) check_mask_tensor(op, "key_valid", m.key_valid, q, {batch, sk});
  G4_CHECK(m.q_doc.defined() == m.k_doc.defined(), op, ": mask.q_doc and mask.k_doc must be given together (q_doc ",
           m.q_doc.describe(), ", k_doc ", m.k_doc.describe(), ")");
  if (m.q_doc.defined()) {
    check_mask_tensor(op, "q_doc", m.q_doc, q, {batch, sq});
    check_mask_tensor(op, "k_doc", m.k_doc, q, {batch, sk});
  }
  G4_CHECK(m.q_block.defined() == m.k_block.defined(), op,
           ": mask.q_block and mask.k_block must be given together (q_block ", m.q_block.describe(), ", k_block ",
           m.k_block.describe(), ")");
  if (m.q_block.defined()) {
    check_mask_tensor(op, "q_block", m.q_block, q, {batch, sq});
    check_mask_tensor(op, "k_block", m.k_block, q, {batch, sk});
  }
}
}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                 Tensor* lse) {
  check_qkv("attention", q, k, v);
  check_mask("attention", mask, q, k);
  return G4_DISPATCH(q, attention(q, k, v, mask, scale, lse));
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionMask& mask, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  const char* op = "attention_backward";
  check_qkv(op, q, k, v);
  check_mask(op, mask, q, k);
  const Shape out_shape{q.size(0), q.size(1), q.size(2), v.size(3)}, lse_shape{q.size(0), q.size(2), q.size(1)};
  check_same_dtype(op, "q", q, "out", out);
  check_same_shape(op, "dout", dout, "out", out);
  G4_CHECK(out.shape() == out_shape, op, ": out ", out.describe(), " must be ", shape_str(out_shape), " for q ",
           q.describe(), " and v ", v.describe());
  // lse is fp32 on the GPU, the input precision on the CPU.
  check_on(op, "lse", lse, q.device());
  G4_CHECK(lse.dtype() == (on_gpu(q) ? DType::F32 : q.dtype()), op, ": lse ", lse.describe(), " must be ",
           dtype_name(on_gpu(q) ? DType::F32 : q.dtype()), " for q ", q.describe());
  G4_CHECK(lse.shape() == lse_shape, op, ": lse ", lse.describe(), " must be [B, nH, Sq] = ", shape_str(lse_shape));
  return G4_DISPATCH(q, attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv));
}

void attention_merge_(Tensor& out, Tensor& lse, const Tensor& out_b, const Tensor& lse_b) {
  const char* op = "attention_merge_";
  check_rank(op, "out", out, 4, "[B, Sq, nH, dv]");
  const Device dev = out.device();
  check_on(op, "lse", lse, dev);
  check_on(op, "out_b", out_b, dev);
  check_on(op, "lse_b", lse_b, dev);
  const Shape lse_shape{out.size(0), out.size(2), out.size(1)};
  G4_CHECK(lse.shape() == lse_shape && lse_b.shape() == lse_shape, op, ": lse ", lse.describe(), " and lse_b ",
           lse_b.describe(), " must be [B, nH, Sq] = ", shape_str(lse_shape), " for out ", out.describe());
  // Shapes only: on the GPU out_b may be bf16 while out is f32 (the dtypes are checked below).
  G4_CHECK(out.shape() == out_b.shape(), op, ": shapes differ: out ", out.describe(), " vs out_b ", out_b.describe());
  if (dev == Device::CUDA) {
    for (const Tensor* t : {static_cast<const Tensor*>(&out), static_cast<const Tensor*>(&lse), &lse_b})
      G4_CHECK(t->dtype() == DType::F32, op, ": the GPU merges into f32 out and lse (f32 lse_b), got out ",
               out.describe(), ", lse ", lse.describe(), ", lse_b ", lse_b.describe());
    check_float(op, "out_b", out_b, dev);
  } else {
    check_float(op, "out", out, dev);
    for (const Tensor* t : {static_cast<const Tensor*>(&lse), &out_b, &lse_b})
      G4_CHECK(t->dtype() == out.dtype(), op, ": out, lse, out_b and lse_b must share one dtype on the CPU, got out ",
               out.describe(), ", lse ", lse.describe(), ", out_b ", out_b.describe(), ", lse_b ", lse_b.describe());
  }
  return G4_DISPATCH(out, attention_merge_(out, lse, out_b, lse_b));
}

}  // namespace g4::ops

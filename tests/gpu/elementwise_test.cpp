// GPU elementwise, activation, softmax, reduction and shape ops against the CPU reference (f32),
// on bf16 and f32 GPU tensors. Inputs are bf16-exact so both sides see the same numbers.
// Tolerances, relative to the reference's largest magnitude: bf16 outputs 1e-2 (one bf16 rounding
// is 2^-9 relative), f32 outputs 1e-5 (fp32 vs the CPU's fp32/double order of operations).
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "ops/elementwise.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::host_f32;
using test::gpu_f32;
using test::randn_bf16_exact;

constexpr double kBf16Rtol = 1e-2;
using test::kF32Rtol;

// Shapes with awkward tails (257 columns: no 16-byte packs), model widths, and a single element.
const std::vector<Shape> kShapes = {{3, 5, 257}, {4, 2816}, {2, 2560}, {1}, {7, 33}};

std::string name(const std::string& op, const Shape& s, const char* dtype) {
  return op + " " + dtype + shape_str(s);
}

// Runs a one-output op on bf16 and f32 GPU copies of the inputs and compares with the CPU.
template <class Op>
void check_both(const std::string& what, const std::vector<Tensor>& cpu_inputs, Op op, double atol_f32 = 1e-6) {
  const Tensor ref = op(cpu_inputs);
  std::vector<Tensor> b, f;
  for (const Tensor& t : cpu_inputs) {
    b.push_back(gpu_bf16(t));
    f.push_back(gpu_f32(t));
  }
  const Tensor yb = op(b);
  const Tensor yf = op(f);
  EXPECT_EQ(yb.dtype(), DType::BF16) << what;
  EXPECT_EQ(yf.dtype(), DType::F32) << what;
  EXPECT_EQ(yb.device(), Device::CUDA) << what;
  expect_close_scaled(yb, ref, 1e-6, kBf16Rtol, what + " bf16");
  expect_close_scaled(yf, ref, atol_f32, kF32Rtol, what + " f32");
}

TEST(GpuElementwise, BinaryAndScale) {
  G4_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    const Tensor a = randn_bf16_exact(s, ++seed), b = randn_bf16_exact(s, ++seed);
    check_both(name("add", s, ""), {a, b}, [](const std::vector<Tensor>& x) { return ops::add(x[0], x[1]); });
    check_both(name("sub", s, ""), {a, b}, [](const std::vector<Tensor>& x) { return ops::sub(x[0], x[1]); });
    check_both(name("mul", s, ""), {a, b}, [](const std::vector<Tensor>& x) { return ops::mul(x[0], x[1]); });
    check_both(name("scale", s, ""), {a}, [](const std::vector<Tensor>& x) { return ops::scale(x[0], -0.37); });
  }
}

TEST(GpuElementwise, InPlace) {
  G4_REQUIRE_GPU();
  uint64_t seed = 200;
  for (const Shape& s : kShapes) {
    const Tensor a = randn_bf16_exact(s, ++seed), x = randn_bf16_exact(s, ++seed);
    Tensor ref = a.clone();
    ops::add_(ref, x, 0.75);
    // f32 += f32, f32 += bf16 (gradient accumulation), bf16 += bf16.
    Tensor acc = gpu_f32(a);
    ops::add_(acc, gpu_f32(x), 0.75);
    expect_close_scaled(acc, ref, 1e-6, kF32Rtol, name("add_ f32+=f32", s, ""));
    acc = gpu_f32(a);
    ops::add_(acc, gpu_bf16(x), 0.75);
    EXPECT_EQ(acc.dtype(), DType::F32);
    expect_close_scaled(acc, ref, 1e-6, kF32Rtol, name("add_ f32+=bf16", s, ""));
    Tensor accb = gpu_bf16(a);
    ops::add_(accb, gpu_bf16(x), 0.75);
    expect_close_scaled(accb, ref, 1e-6, kBf16Rtol, name("add_ bf16+=bf16", s, ""));

    Tensor sref = a.clone();
    ops::scale_(sref, 1.5);
    Tensor sb = gpu_bf16(a), sf = gpu_f32(a);
    ops::scale_(sb, 1.5);
    ops::scale_(sf, 1.5);
    expect_close_scaled(sb, sref, 0, kBf16Rtol, name("scale_", s, "bf16"));
    expect_close_scaled(sf, sref, 0, kF32Rtol, name("scale_", s, "f32"));
  }
  // bf16 += f32 would silently lose the f32 precision: refused.
  Tensor accb = gpu_bf16(randn_bf16_exact({4}, 1));
  EXPECT_THROW(ops::add_(accb, gpu_f32(randn_bf16_exact({4}, 2))), Error);
}

// Views that start 2 elements into their storage: the 16-byte packs are not aligned, so the
// element-by-element kernels run.
TEST(GpuElementwise, UnalignedViews) {
  G4_REQUIRE_GPU();
  const Tensor a = randn_bf16_exact({9, 2}, 301), b = randn_bf16_exact({9, 2}, 302);
  const Tensor ref = ops::add(a.slice0(1, 8), b.slice0(1, 8));
  const Tensor ga = gpu_bf16(a).slice0(1, 8), gb = gpu_bf16(b).slice0(1, 8);
  expect_close_scaled(ops::add(ga, gb), ref, 0, kBf16Rtol, "add bf16 unaligned view");
  Tensor acc = gpu_f32(a).slice0(1, 8);  // f32 offset 8 bytes: unaligned too
  ops::add_(acc, gb, 1.0);
  expect_close_scaled(acc, ref, 1e-6, kF32Rtol, "add_ f32+=bf16 unaligned view");
  const Tensor v = randn_bf16_exact({2}, 303);
  expect_close_scaled(ops::mul_rowvec(ga, gpu_bf16(v)), ops::mul_rowvec(a.slice0(1, 8), v), 0, kBf16Rtol,
                      "mul_rowvec bf16 unaligned view");
}

TEST(GpuElementwise, Activations) {
  G4_REQUIRE_GPU();
  uint64_t seed = 400;
  for (const Shape& s : kShapes) {
    const Tensor x = randn_bf16_exact(s, ++seed, 2.0), dy = randn_bf16_exact(s, ++seed);
    const Tensor u = randn_bf16_exact(s, ++seed);
    check_both(name("gelu_tanh", s, ""), {x}, [](const std::vector<Tensor>& t) { return ops::gelu_tanh(t[0]); });
    check_both(name("gelu_tanh_backward", s, ""), {dy, x},
               [](const std::vector<Tensor>& t) { return ops::gelu_tanh_backward(t[0], t[1]); });
    check_both(name("gelu_gate", s, ""), {x, u}, [](const std::vector<Tensor>& t) { return ops::gelu_gate(t[0], t[1]); });
    for (int which = 0; which < 2; ++which) {
      check_both(name(which ? "gelu_gate_backward du" : "gelu_gate_backward dg", s, ""), {dy, x, u},
                 [which](const std::vector<Tensor>& t) {
                   Tensor dg, du;
                   ops::gelu_gate_backward(t[0], t[1], t[2], dg, du);
                   return which ? du : dg;
                 });
    }
    const Tensor big = randn_bf16_exact(s, ++seed, 40.0);
    check_both(name("softcap", s, ""), {big}, [](const std::vector<Tensor>& t) { return ops::softcap(t[0], 30.0); });
    // The LM head's path: bf16 logits widened and capped in one pass, the same bits as in two.
    const Tensor big_gpu = gpu_bf16(big);
    const Tensor one_pass = host_f32(ops::softcap_to_f32(big_gpu, 30.0));
    const Tensor two_passes = host_f32(ops::softcap(big_gpu.to(DType::F32), 30.0));
    ASSERT_EQ(one_pass.dtype(), DType::F32);
    EXPECT_EQ(std::memcmp(one_pass.data<float>(), two_passes.data<float>(), sizeof(float) * one_pass.numel()), 0)
        << name("softcap_to_f32", s, "");
    const Tensor y = ops::softcap(big, 30.0).to(DType::BF16).to(DType::F32);
    check_both(name("softcap_backward", s, ""), {dy, y},
               [](const std::vector<Tensor>& t) { return ops::softcap_backward(t[0], t[1], 30.0); });
  }
}

// The audio tower's activations and clip bounds (x up to ~25 reaches softplus's pass-through).
TEST(GpuElementwise, AudioActivationsAndClamp) {
  G4_REQUIRE_GPU();
  uint64_t seed = 450;
  for (const Shape& s : kShapes) {
    const Tensor x = randn_bf16_exact(s, ++seed, 8.0), dy = randn_bf16_exact(s, ++seed);
    for (const ops::Activation act : {ops::Activation::kRelu, ops::Activation::kSilu, ops::Activation::kSigmoid,
                                      ops::Activation::kSoftplus}) {
      const std::string a = std::to_string(static_cast<int>(act));
      check_both(name("activation " + a, s, ""), {x}, [act](const std::vector<Tensor>& t) { return ops::activation(t[0], act); });
      check_both(name("activation_backward " + a, s, ""), {dy, x},
                 [act](const std::vector<Tensor>& t) { return ops::activation_backward(t[0], t[1], act); });
    }
    check_both(name("clamp", s, ""), {x}, [](const std::vector<Tensor>& t) { return ops::clamp(t[0], -1.5, 2.0); });
    check_both(name("clamp_backward", s, ""), {dy, x},
               [](const std::vector<Tensor>& t) { return ops::clamp_backward(t[0], t[1], -1.5, 2.0); });
  }
}

TEST(GpuElementwise, GeluGateFused) {
  G4_REQUIRE_GPU();
  uint64_t seed = 500;
  for (const Shape& s : std::vector<Shape>{{3, 5, 2 * 257}, {4, 2 * 2816}, {2, 2 * 704}, {1, 2}}) {
    Shape half = s;
    half.back() /= 2;
    const Tensor gu = randn_bf16_exact(s, ++seed, 2.0), dy = randn_bf16_exact(half, ++seed);
    check_both(name("gelu_gate_fused", s, ""), {gu}, [](const std::vector<Tensor>& t) { return ops::gelu_gate_fused(t[0]); });
    check_both(name("gelu_gate_fused_backward", s, ""), {dy, gu},
               [](const std::vector<Tensor>& t) { return ops::gelu_gate_fused_backward(t[0], t[1]); });
  }
}

TEST(GpuElementwise, RowVectorAndSums) {
  G4_REQUIRE_GPU();
  uint64_t seed = 600;
  for (const Shape& s : std::vector<Shape>{{3, 5, 257}, {4, 2816}, {300, 2560}, {5000, 64}, {1, 1}}) {
    const Tensor x = randn_bf16_exact(s, ++seed), v = randn_bf16_exact({s.back()}, ++seed);
    check_both(name("mul_rowvec", s, ""), {x, v}, [](const std::vector<Tensor>& t) { return ops::mul_rowvec(t[0], t[1]); });
    // Sums of n standard normals: fp32 rounding grows with the number of terms.
    check_both(name("sum_rows", s, ""), {x}, [](const std::vector<Tensor>& t) { return ops::sum_rows(t[0]); }, 1e-4);
    check_both(name("sum_all", s, ""), {x}, [](const std::vector<Tensor>& t) { return ops::sum_all(t[0]); }, 1e-3);
    const Tensor g = ops::sum_all(gpu_bf16(x));
    EXPECT_EQ(g.dim(), 0);
    EXPECT_EQ(g.device(), Device::CUDA);
  }
  // sum_all of a large tensor (many blocks, 1024 partials).
  const Tensor big = randn_bf16_exact({1 << 22}, 650);
  check_both("sum_all f32[4194304]", {big}, [](const std::vector<Tensor>& t) { return ops::sum_all(t[0]); }, 2e-2);
}

// Rows of 128 (the router), odd widths, rows of 32768 (1024 threads a row), and rows too long for
// registers; masked (-inf) entries and a fully masked row, which gives zeros.
TEST(GpuElementwise, Softmax) {
  G4_REQUIRE_GPU();
  uint64_t seed = 700;
  for (const Shape& s : std::vector<Shape>{{64, 128}, {3, 5, 257}, {4, 2816}, {2, 40000}, {3, 1}, {2, 9000}, {2, 32768}}) {
    Tensor x = randn_bf16_exact(s, ++seed, 3.0);
    float* px = x.data<float>();
    const int64_t d = s.back(), rows = x.numel() / d;
    for (int64_t j = 0; j < d; j += 3) px[j] = -INFINITY;  // row 0 partly masked
    if (rows > 1)
      for (int64_t j = 0; j < d; ++j) px[d + j] = -INFINITY;  // row 1 fully masked
    check_both(name("softmax_lastdim", s, ""), {x}, [](const std::vector<Tensor>& t) { return ops::softmax_lastdim(t[0]); });
    const Tensor y = ops::softmax_lastdim(x).to(DType::BF16).to(DType::F32);
    const Tensor dy = randn_bf16_exact(s, ++seed);
    check_both(name("softmax_lastdim_backward", s, ""), {dy, y},
               [](const std::vector<Tensor>& t) { return ops::softmax_lastdim_backward(t[0], t[1]); });
  }
}

// Byte moves are exact for every dtype.
TEST(GpuElementwise, NarrowConcat) {
  G4_REQUIRE_GPU();
  const Tensor x = randn_bf16_exact({3, 5, 257}, 800);
  for (DType dt : {DType::F32, DType::BF16, DType::I64, DType::I32}) {
    const Tensor xc = x.to(dt);
    const Tensor xg = xc.to(Device::CUDA);
    const std::string tag = dtype_name(dt);
    struct Case {
      int64_t dim, start, len;
    };
    for (const Case& c : {Case{0, 1, 2}, Case{1, 1, 3}, Case{-1, 3, 200}, Case{2, 0, 1}, Case{-1, 256, 1}}) {
      const std::string what = "narrow " + tag + " dim " + std::to_string(c.dim) + " [" + std::to_string(c.start) +
                               ", +" + std::to_string(c.len) + ")";
      const Tensor ref = ops::narrow(xc, c.dim, c.start, c.len);
      const Tensor got = ops::narrow(xg, c.dim, c.start, c.len);
      expect_close_scaled(got.to(Device::CPU).to(DType::F32), ref.to(DType::F32), 0, 0, what);
      const Tensor back_ref = ops::narrow_backward(ref, xc.shape(), c.dim, c.start);
      const Tensor back = ops::narrow_backward(got, xc.shape(), c.dim, c.start);
      expect_close_scaled(back.to(Device::CPU).to(DType::F32), back_ref.to(DType::F32), 0, 0, what + " backward");
    }
    for (int64_t dim : {0, 1, 2}) {
      std::vector<Tensor> parts_c, parts_g;
      const int64_t sizes[3] = {1, 2, 1};
      int64_t start = 0;
      for (int64_t len : sizes) {
        const int64_t l = dim == 0 ? 1 : (dim == 2 ? len * 50 + 7 : len);  // x is [3, 5, 257]
        parts_c.push_back(ops::narrow(xc, dim, start, l));
        parts_g.push_back(parts_c.back().to(Device::CUDA));
        start += l;
      }
      const Tensor ref = ops::concat(parts_c, dim);
      const Tensor got = ops::concat(parts_g, dim);
      expect_close_scaled(got.to(Device::CPU).to(DType::F32), ref.to(DType::F32), 0, 0,
                          "concat " + tag + " dim " + std::to_string(dim));
    }
  }
}

TEST(GpuElementwise, BadArgumentsNameTheOp) {
  G4_REQUIRE_GPU();
  const Tensor a = gpu_bf16(randn_bf16_exact({2, 3}, 1));
  const Tensor b = gpu_f32(randn_bf16_exact({2, 3}, 2));
  const Tensor c = randn_bf16_exact({2, 3}, 3);  // on the CPU
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { ops::add(a, b); }, "add: dtypes differ");
  expect_error([&] { ops::mul(a, c); }, "is not on the GPU");
  expect_error([&] { ops::gelu_tanh(a.to(DType::F32).to(DType::I32)); }, "gelu_tanh");
  expect_error([&] { ops::mul_rowvec(a, gpu_bf16(randn_bf16_exact({4}, 4))); }, "mul_rowvec");
  expect_error([&] { ops::narrow(a, 1, 2, 2); }, "narrow");
  expect_error([&] { ops::concat({a, b}, 0); }, "concat");
}

}  // namespace
}  // namespace g4

#include "ops/optim.h"

#include <cmath>
#include <cstring>

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_error;

// torch.optim.AdamW written out in double, one element at a time.
struct RefAdamW {
  std::vector<double> p, m, v;
  void step(const std::vector<double>& g, const ops::AdamWHyper& h, bool decay) {
    const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(h.step));
    const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(h.step));
    for (size_t j = 0; j < p.size(); ++j) {
      const double gj = g[j] * h.grad_scale;
      if (decay) p[j] *= 1 - h.lr * h.weight_decay;
      m[j] = h.beta1 * m[j] + (1 - h.beta1) * gj;
      v[j] = h.beta2 * v[j] + (1 - h.beta2) * gj * gj;
      p[j] -= h.lr / bc1 * m[j] / (std::sqrt(v[j]) / std::sqrt(bc2) + h.eps);
    }
  }
};

std::vector<double> values(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = element_as_double(t, static_cast<int64_t>(i));
  return out;
}

// Step s (from 1) of a test's run: learning rate, weight decay, and the gradient scale `scale` at
// step `scaled_step` (as clipping would), 1 elsewhere.
ops::AdamWHyper hyper_at(int64_t s, double lr, double weight_decay, int64_t scaled_step, double scale) {
  ops::AdamWHyper h;
  h.lr = lr;
  h.weight_decay = weight_decay;
  h.step = s;
  h.grad_scale = s == scaled_step ? scale : 1.0;
  return h;
}

TEST(AdamW, MatchesTorchFormulaOverSteps) {
  for (bool decay : {true, false}) {
    Tensor p = randn({5, 7}, 1, DType::F64);
    Tensor m = Tensor::zeros({5, 7}, DType::F64), v = Tensor::zeros({5, 7}, DType::F64);
    RefAdamW ref{values(p), values(m), values(v)};
    ops::AdamWHyper h;
    h.lr = 1e-2;
    h.weight_decay = 0.1;
    h.grad_scale = 0.5;
    for (int64_t s = 1; s <= 4; ++s) {
      h.step = s;
      const Tensor g = randn({5, 7}, 10 + static_cast<uint64_t>(s), DType::F64);
      ops::adamw_step(p, g, m, v, h, decay);
      ref.step(values(g), h, decay);
    }
    test::expect_close(p, Tensor::from_vector<double>(ref.p, {5, 7}), 1e-12, "master");
    test::expect_close(m, Tensor::from_vector<double>(ref.m, {5, 7}), 1e-12, "exp_avg");
    test::expect_close(v, Tensor::from_vector<double>(ref.v, {5, 7}), 1e-12, "exp_avg_sq");
  }
}

// grad_scale, a device factor, a bf16 gradient and an undefined gradient are the same update as
// the equivalent f32 gradient; the bf16 copy is the master rounded.
TEST(AdamW, GradientFormsAndBf16Copy) {
  const Tensor p0 = randn({33}, 2);
  const Tensor g = randn({33}, 3).to(DType::BF16).to(DType::F32);
  ops::AdamWHyper h;
  h.lr = 3e-3;
  h.weight_decay = 0.01;
  h.step = 3;
  auto run = [&](const Tensor& grad, double scale, const Tensor& factor, Tensor* out) {
    Tensor p = p0.clone(), m = Tensor::full({33}, 0.01), v = Tensor::full({33}, 0.02);
    ops::AdamWHyper hh = h;
    hh.grad_scale = scale;
    ops::adamw_step(p, grad, m, v, hh, true, {}, factor, out);
    return p;
  };
  Tensor halved = g.clone();
  for (int64_t i = 0; i < 33; ++i) halved.data<float>()[i] *= 0.5f;
  const Tensor want = run(halved, 1, {}, nullptr);
  test::expect_equal(run(g, 0.5, {}, nullptr), want, "grad_scale");
  test::expect_equal(run(g, 1, Tensor::scalar(0.5), nullptr), want, "grad_scale_tensor");
  test::expect_equal(run(g.to(DType::BF16), 0.5, {}, nullptr), want, "bf16 gradient");
  Tensor copy = Tensor::empty({33}, DType::BF16);
  const Tensor p = run(g, 0.5, {}, &copy);
  test::expect_equal(copy, p.to(DType::BF16), "bf16 copy");
  test::expect_equal(run(Tensor(), 1, {}, nullptr), run(Tensor::zeros({33}, DType::F32), 1, {}, nullptr),
                     "undefined gradient = zero");
}

// A per-element mask: its 1s update as decay = true, its 0s as decay = false.
TEST(AdamW, DecayMaskPerElement) {
  const Tensor p0 = randn({20}, 5), g = randn({20}, 6);
  ops::AdamWHyper h;
  h.lr = 0.1;
  h.weight_decay = 0.5;
  auto run = [&](bool decay, const Tensor& mask) {
    Tensor p = p0.clone(), m = Tensor::zeros({20}, DType::F32), v = Tensor::zeros({20}, DType::F32);
    ops::adamw_step(p, g, m, v, h, decay, mask);
    return p;
  };
  Tensor mask = Tensor::zeros({20}, DType::U8);
  for (int64_t j = 0; j < 20; j += 3) mask.data<uint8_t>()[j] = 1;
  const Tensor with = run(true, {}), without = run(false, {}), mixed = run(true, mask);
  for (int64_t j = 0; j < 20; ++j)
    EXPECT_EQ(mixed.data<float>()[j], (j % 3 == 0 ? with : without).data<float>()[j]) << j;
}

TEST(AdamW, Errors) {
  Tensor p = randn({4}, 1), m = Tensor::zeros({4}, DType::F32), v = Tensor::zeros({3}, DType::F32);
  ops::AdamWHyper h;
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v, h); }, {"adamw_step", "exp_avg_sq", "f32[3]"});
  Tensor v4 = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::adamw_step(p, randn({5}, 2), m, v4, h); }, {"grad", "f32[5]"});
  h.step = 0;
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h); }, {"step", "0"});
  h.step = 1;
  Tensor out = Tensor::empty({4}, DType::F32);
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h, true, {}, {}, &out); }, {"param_bf16_out", "f32[4]"});
  expect_error([&] { ops::adamw_step(p, Tensor(), m, v4, h, true, Tensor::zeros({4}, DType::F32)); },
               {"decay_mask", "f32[4]"});
}

// bf16 moments (FusedAdam's exp_avg_dtype / exp_avg_sq_dtype): each step is the f32 update from the
// stored moments widened, the master stepping with the unrounded moments and the stored moments
// rounded to nearest even afterwards. Checked step by step against f32 moments reset to the stored
// values, for both moments in bf16 and for each alone, and over five steps against the double
// formula, which bf16 moments follow to their rounding.
TEST(AdamW, Bf16MomentsUpdateInF32AndStoreRounded) {
  const int64_t n = 257;
  for (auto [m16, v16] : {std::pair{true, true}, {true, false}, {false, true}}) {
    const std::string tag = std::string(m16 ? "exp_avg bf16" : "exp_avg f32") + (v16 ? ", exp_avg_sq bf16" : "");
    Tensor p = randn({n}, 1), m = Tensor::zeros({n}, m16 ? DType::BF16 : DType::F32),
           v = Tensor::zeros({n}, v16 ? DType::BF16 : DType::F32);
    RefAdamW ref{values(p), values(m), values(v)};
    for (int64_t s = 1; s <= 5; ++s) {
      const ops::AdamWHyper h = hyper_at(s, 1e-2, 0.1, 2, 0.5);
      const Tensor g = randn({n}, 20 + static_cast<uint64_t>(s));
      // The same step with f32 moments holding the stored values.
      Tensor pw = p.clone(), mw = m.to(DType::F32), vw = v.to(DType::F32);
      ops::adamw_step(pw, g, mw, vw, h);
      ops::adamw_step(p, g, m, v, h);
      test::expect_equal(p, pw, tag + " master");
      test::expect_equal(m, m16 ? mw.to(DType::BF16) : mw, tag + " exp_avg");
      test::expect_equal(v, v16 ? vw.to(DType::BF16) : vw, tag + " exp_avg_sq");
      ref.step(values(g), h, true);
    }
    // bf16 moments carry a relative error of about 2^-9; the master's steps stay within it.
    test::expect_close(p, Tensor::from_vector<double>(ref.p, {n}).to(DType::F32), 1e-4, tag + " master vs double");
    test::expect_close(m.to(DType::F32), Tensor::from_vector<double>(ref.m, {n}).to(DType::F32), 2e-2,
                       tag + " exp_avg vs double");
  }
}

// Split and join give every bit pattern back; the parameter is the master's bf16 rounding except on
// exact ties, which it rounds away from zero.
TEST(MasterBits, SplitJoinRoundTripsAndRoundsLikeBf16OffTies) {
  const int64_t n = 1 << 16;
  Tensor master = Tensor::empty({n + 4}, DType::F32);
  uint32_t* bits = static_cast<uint32_t*>(master.raw());
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    bits[i] = static_cast<uint32_t>(x >> 11);
  }
  // Ties: 1.5 ulp of bf16 above 1 and below -1, and the largest finite floats.
  bits[n] = 0x3f818000u, bits[n + 1] = 0xbf818000u, bits[n + 2] = 0x7f7fffffu, bits[n + 3] = 0x3f808000u;
  const auto [param, rem] = ops::split_master(master);
  const Tensor back = ops::join_master(param, rem);
  ASSERT_EQ(std::memcmp(back.raw(), master.raw(), master.nbytes()), 0);
  const Tensor rne = master.to(DType::BF16);
  int64_t ties = 0;
  for (int64_t i = 0; i < master.numel(); ++i) {
    float f;
    std::memcpy(&f, &bits[i], 4);
    if (std::isnan(f)) continue;
    const uint16_t got = param.data<bf16>()[i].bits, want = rne.data<bf16>()[i].bits;
    if ((bits[i] & 0xffffu) == 0x8000u) {  // a tie: away from zero, one bf16 step from an even result
      ++ties;
      EXPECT_EQ(got, static_cast<uint16_t>((bits[i] >> 16) + 1)) << i;
    } else {
      EXPECT_EQ(got, want) << i;
    }
  }
  EXPECT_EQ(param.data<bf16>()[n].bits, 0x3f82);      // an odd top half: both roundings go up
  EXPECT_EQ(param.data<bf16>()[n + 1].bits, 0xbf82);  // its negative: away from zero
  EXPECT_EQ(param.data<bf16>()[n + 3].bits, 0x3f81);  // an even top half: up, where ties to even stay
  EXPECT_EQ(rne.data<bf16>()[n + 3].bits, 0x3f80);
  EXPECT_GE(ties, 2);
}

// The remainder form keeps the master an f32 master has, bit for bit, over steps with every option
// (bf16 or f32 gradients and moments, scale, device factor, decay, a per-element decay mask), and
// its parameter is that master split.
TEST(AdamW, RemaindersTrainTheSameMasterAsAnF32Master) {
  const int64_t n = 301;
  for (DType moments : {DType::F32, DType::BF16}) {
    for (bool decay : {true, false}) {
      const std::string tag = std::string(moments == DType::BF16 ? "bf16 moments" : "f32 moments") +
                              (decay ? ", decay" : "");
      Tensor master = randn({n}, 7);
      auto [param, rem] = ops::split_master(master);
      Tensor m = Tensor::zeros({n}, moments), v = Tensor::zeros({n}, moments);
      Tensor m2 = m.clone(), v2 = v.clone();
      for (int64_t s = 1; s <= 6; ++s) {
        const ops::AdamWHyper h = hyper_at(s, 3e-2, 0.2, 3, 0.25);
        const Tensor g = randn({n}, 40 + static_cast<uint64_t>(s)).to(s % 2 ? DType::BF16 : DType::F32);
        const Tensor factor = Tensor::scalar(s == 4 ? 0.5 : 1.0);
        // With decay, every other step exempts a random half of the elements.
        Tensor mask;
        if (decay && s % 2 == 0) mask = randint({n}, 70 + static_cast<uint64_t>(s), 0, 2, DType::I64).to(DType::U8);
        ops::adamw_step(master, g, m, v, h, decay, mask, factor);
        ops::adamw_step_remainders(param, rem, g, m2, v2, h, decay, mask, factor);
        test::expect_equal(ops::join_master(param, rem), master, tag + " master, step " + std::to_string(s));
        test::expect_equal(m2, m, tag + " exp_avg");
        test::expect_equal(v2, v, tag + " exp_avg_sq");
      }
      test::expect_equal(param, ops::split_master(master).param, tag + " parameter");
      int64_t rounded = 0;
      for (int64_t i = 0; i < n; ++i) rounded += param.data<bf16>()[i].to_float() != master.data<float>()[i];
      EXPECT_GT(rounded, n / 2) << "the masters must carry bits their parameters lose, or this test proves nothing";
    }
  }
}

TEST(AdamW, StorageErrors) {
  ops::AdamWHyper h;
  Tensor p64 = randn({4}, 1, DType::F64), m16 = Tensor::zeros({4}, DType::BF16), v64 = Tensor::zeros({4}, DType::F64);
  expect_error([&] { ops::adamw_step(p64, Tensor(), m16, v64, h); }, {"exp_avg", "bf16 with an f32 master"});
  Tensor param = Tensor::zeros({4}, DType::BF16), rem = Tensor::zeros({4}, DType::I32);
  Tensor m = Tensor::zeros({4}, DType::F32), v = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::adamw_step_remainders(param, rem, Tensor(), m, v, h); }, {"remainder", "i16", "i32[4]"});
  Tensor rem16 = Tensor::zeros({4}, DType::I16), v3 = Tensor::zeros({3}, DType::F32);
  expect_error([&] { ops::adamw_step_remainders(param, rem16, Tensor(), m, v3, h); }, {"exp_avg_sq", "f32[3]"});
  Tensor f32_param = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::adamw_step_remainders(f32_param, rem16, Tensor(), m, v, h); }, {"param", "bf16"});
}

TEST(SquaredNorm, SumsSquaresInDouble) {
  const Tensor g = randn({1000, 3}, 4, DType::F64);
  double want = 0;
  for (int64_t i = 0; i < g.numel(); ++i) want += g.data<double>()[i] * g.data<double>()[i];
  const Tensor sq = ops::squared_norm(g);
  EXPECT_EQ(sq.dim(), 0);
  EXPECT_EQ(sq.dtype(), DType::F64);
  EXPECT_NEAR(sq.item(), want, 1e-9 * want);
  const Tensor sq32 = ops::squared_norm(g.to(DType::F32));
  EXPECT_EQ(sq32.dtype(), DType::F32);
  EXPECT_NEAR(sq32.item(), want, 1e-6 * want);
  EXPECT_NEAR(ops::squared_norm(g.to(DType::F32).to(DType::BF16)).item(), want, 1e-2 * want);
  EXPECT_EQ(ops::squared_norm(Tensor::zeros({0}, DType::F32)).item(), 0.0);
}

}  // namespace
}  // namespace g4

// AdamW with the clipping coefficient applied inside the update (grad_norm_and_scale + step's
// grad_scale, the GPU path) equals clipping the gradients first (clip_grad_norm + step).
#include <gtest/gtest.h>

#include <cmath>

#include "core/random.h"
#include "train/adamw.h"

namespace g4 {
namespace {

model::ParamStore make_params(uint64_t seed) {
  model::ParamStore p;
  p.add("a.weight", model::ParamKind::kMlp, randn({7, 5}, seed, DType::F64));
  p.add("b.weight", model::ParamKind::kNorm, randn({11}, seed + 1, DType::F64));
  return p;
}

void set_grads(model::ParamStore& p, uint64_t seed, double scale) {
  uint64_t s = seed;
  for (const auto& n : p.order) {
    Tensor g = randn(p.at(n).value().shape(), s++, DType::F64, scale);
    p.at(n).impl()->grad = g;
    p.at(n).impl()->grad_owned = true;
  }
}

TEST(AdamW, ClippingInsideTheUpdateEqualsClippingTheGradients) {
  for (double grad_size : {0.01, 10.0}) {  // below and above the clipping threshold
    model::ParamStore a = make_params(1), b = make_params(1);
    train::AdamWOptions o;
    o.weight_decay = 0.1;
    train::AdamW oa(a, a.order, {"b.weight"}, o), ob(b, b.order, {"b.weight"}, o);
    for (int step = 0; step < 3; ++step) {
      set_grads(a, 10 + step, grad_size);
      set_grads(b, 10 + step, grad_size);
      const double norm_a = train::clip_grad_norm(a, a.order, 1.0);
      oa.step(1e-2);
      const train::GradNorm gn = train::grad_norm_and_scale(b, b.order, 1.0);
      ob.step(1e-2, gn.scale);
      EXPECT_NEAR(gn.norm, norm_a, 1e-12 * norm_a);
      EXPECT_EQ(gn.scale < 1.0, grad_size > 1.0);
    }
    for (const auto& n : a.order)
      for (int64_t i = 0; i < a.at(n).value().numel(); ++i)
        EXPECT_NEAR(b.at(n).value().data<double>()[i], a.at(n).value().data<double>()[i], 1e-13) << n;
  }
}

}  // namespace
}  // namespace g4

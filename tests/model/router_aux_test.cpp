// The optional router load-balancing loss: its value and its gradient (finite differences, f64).
#include <gtest/gtest.h>

#include "autograd/variable.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

model::ForwardInputs batch() {
  model::ForwardInputs in;
  in.input_ids = Tensor::empty({2, 12}, DType::I64);
  for (int64_t i = 0; i < 24; ++i) in.input_ids.data<int64_t>()[i] = 3 + (i * 29) % 250;
  in.labels = in.input_ids.clone();
  return in;
}

TEST(RouterAux, AddsCoefficientTimesBalanceLossWithExactGradient) {
  auto m = model::load_hf_model(test::data_dir() + "/hf-gemma4/tiny-moe", {}, DType::F64);
  const double coef = 0.5;
  m->set_router_aux_loss(coef);
  model::ForwardOutputs out = m->forward(batch());
  // E * sum f_e P_e is 1 for perfectly balanced routing and at most E.
  EXPECT_GT(out.router_aux, 0.5);
  EXPECT_LT(out.router_aux, 8.0);
  EXPECT_NEAR(out.loss.value().item(), out.cross_entropy + coef * out.router_aux, 1e-12);
  ag::backward(out.loss);

  // d loss / d router weight against central differences (routing does not flip for tiny h).
  ag::Var& w = m->params().at("model.layers.2.moe.gate.proj.weight");
  const Tensor analytic = w.grad().clone();
  const double h = 1e-6;
  for (int64_t i : {0, 7, 100, 311}) {
    double* x = w.mutable_value().data<double>() + i;
    const double saved = *x;
    // The aux loss is a training-only term: evaluate with the tape on, then drop it.
    *x = saved + h;
    double up, down;
    {
      model::ForwardOutputs o = m->forward(batch());
      up = o.loss.value().item();
      ag::clear_tape();
    }
    *x = saved - h;
    {
      model::ForwardOutputs o = m->forward(batch());
      down = o.loss.value().item();
      ag::clear_tape();
    }
    *x = saved;
    EXPECT_NEAR(analytic.data<double>()[i], (up - down) / (2 * h), 1e-6) << "element " << i;
  }
}

}  // namespace
}  // namespace g4

// The MoE layer's seam: a model runs its routed experts through whatever TokenDispatcher it is
// given (one dispatch and one combine per MoE layer), the expert MLP refuses weights that are not
// the experts the model says it holds.
#include "model/moe.h"

#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "core/random.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

// The identity dispatcher, counting its calls and the layers it saw.
class CountingDispatcher final : public model::TokenDispatcher {
 public:
  Rows dispatch(const Inputs& in) override {
    layers.push_back(in.layer);
    return local.dispatch(in);
  }
  ag::Var combine(const Inputs& in, const Rows& rows, const ag::Var& out) override {
    ++combines;
    return local.combine(in, rows, out);
  }
  model::LocalDispatcher local;
  std::vector<int64_t> layers;
  int combines = 0;
};

TEST(Moe, ModelRunsEachMoeLayerThroughItsDispatcher) {
  auto m = model::load_hf_model(test::data_dir() + "/hf-gemma4/tiny-moe", {}, DType::F64);
  Tensor ids = Tensor::empty({2, 10}, DType::I64);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int64_t>()[i] = 5 + (i * 31) % 240;
  const model::ForwardInputs in{ids, Tensor(), Tensor(), ids};
  ag::NoGrad no_grad;
  const model::ForwardOutputs local = m->forward(in);
  auto counting = std::make_shared<CountingDispatcher>();
  m->set_token_dispatcher(counting);
  const model::ForwardOutputs through = m->forward(in);
  EXPECT_EQ(counting->layers, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(counting->combines, 6);
  EXPECT_EQ(through.loss.value().item(), local.loss.value().item());
  EXPECT_EQ(through.expert_tokens, local.expert_tokens);
}

TEST(Moe, ExpertWeightsMustBeTheHeldExperts) {
  const int64_t T = 3, H = 4, I = 2, E = 4;
  Tensor indices = Tensor::zeros({T, 1}, DType::I32);
  const model::TokenDispatcher::Inputs in{7, ag::Var(randn({T, H}, 1, DType::F64)),
                                          ag::Var(Tensor::full({T, 1}, 1.0).to(DType::F64)),
                                          ops::moe_plan(indices, E), model::ExpertRange{0, E}};
  const ag::Var gate_up(randn({E - 1, H, 2 * I}, 2, DType::F64)), down(randn({E - 1, I, H}, 3, DType::F64));
  model::LocalDispatcher local;
  const std::string e = test::error_of([&] { model::routed_experts(local, in, gate_up, down); });
  EXPECT_NE(e.find("MoE layer 7: the model holds experts [0, 4), but its expert weights are"), std::string::npos)
      << e;
}

}  // namespace
}  // namespace g4

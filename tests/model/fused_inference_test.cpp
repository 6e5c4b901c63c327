// Gemma4::set_fused_inference routes a forward without gradients through ops/fused.h. On the CPU
// those ops are the separate ones, so the logits must not move by a bit: this checks the layer's
// wiring (which weight each fused op gets, the layer scalar, per-layer inputs, MoE, K=V) on the
// fixtures; tests/gpu/fused_test.cpp checks the kernels. With gradients the flag changes nothing.
#include <gtest/gtest.h>

#include "autograd/variable.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

class FusedInference : public ::testing::TestWithParam<std::string> {};

TEST_P(FusedInference, SameLogitsBitForBit) {
  auto m = model::load_hf_model(test::data_dir() + "/" + GetParam());
  model::ForwardInputs in;
  in.input_ids = Tensor::empty({2, 40}, DType::I64);
  for (int64_t i = 0; i < in.input_ids.numel(); ++i) in.input_ids.data<int64_t>()[i] = 3 + (i * 131) % 200;
  const auto logits = [&](bool fused) {
    m->set_fused_inference(fused);
    ag::NoGrad no_grad;
    return m->forward(in).logits.value();
  };
  const Tensor plain = logits(false), fused = logits(true);
  ASSERT_EQ(plain.shape(), fused.shape());
  for (int64_t i = 0; i < plain.numel(); ++i) ASSERT_EQ(plain.data<float>()[i], fused.data<float>()[i]) << i;

  // With gradients the layer runs the separate ops whatever the flag.
  in.labels = in.input_ids.clone();
  m->set_fused_inference(false);
  const double plain_loss = m->forward(in).loss.value().item();
  m->set_fused_inference(true);
  EXPECT_EQ(m->forward(in).loss.value().item(), plain_loss);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FusedInference,
                         ::testing::Values("hf-gemma4/tiny-moe", "hf-gemma4/tiny-dense-ple", "hf-gemma4/tiny-dense-keqv",
                                           "hf-gemma4-varied/var-ple-shared"));

}  // namespace
}  // namespace g4

// Gemma4::set_fused_inference routes a forward without gradients through ops/fused.h. On the CPU
// those ops are the separate ones, so the logits must not move by a bit: this checks the layer's
// wiring (which weight each fused op gets, the layer scalar, per-layer inputs, MoE, K=V) on the
// fixtures; tests/gpu/fused_test.cpp checks the kernels. With gradients the flag changes nothing.
#include <gtest/gtest.h>

#include "autograd/variable.h"
#include "generate/engine.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

class FusedInference : public ::testing::TestWithParam<std::string> {};

TEST_P(FusedInference, SameLogitsBitForBit) {
  auto m = model::load_hf_model(test::data_dir() + "/" + GetParam());
  const auto inputs = [](const Shape& shape) {
    model::ForwardInputs in;
    in.input_ids = Tensor::empty(shape, DType::I64);
    for (int64_t i = 0; i < in.input_ids.numel(); ++i) in.input_ids.data<int64_t>()[i] = 3 + (i * 131) % 200;
    return in;
  };
  // [1, 1]: one row, where E4B's per-layer input slice is a view rather than a copy.
  for (const Shape& shape : {Shape{2, 40}, Shape{1, 1}}) {
    const model::ForwardInputs in = inputs(shape);
    const auto logits = [&](bool fused) {
      m->set_fused_inference(fused);
      ag::NoGrad no_grad;
      return m->forward(in).logits.value();
    };
    const Tensor plain = logits(false), fused = logits(true);
    ASSERT_EQ(plain.shape(), fused.shape());
    for (int64_t i = 0; i < plain.numel(); ++i)
      ASSERT_EQ(plain.data<float>()[i], fused.data<float>()[i]) << shape_str(shape) << " " << i;
  }

  // With gradients the layer runs the separate ops whatever the flag.
  model::ForwardInputs in = inputs({2, 40});
  in.labels = in.input_ids.clone();
  m->set_fused_inference(false);
  const double plain_loss = m->forward(in).loss.value().item();
  m->set_fused_inference(true);
  EXPECT_EQ(m->forward(in).loss.value().item(), plain_loss);
}

// The engine's prefill chunks and paged decode steps go through the same layer: sampled tokens and
// their log-probs are the same bit for bit.
TEST_P(FusedInference, EngineSamplesTheSameTokens) {
  auto m = model::load_hf_model(test::data_dir() + "/" + GetParam());
  const auto run = [&](bool fused) {
    m->set_fused_inference(fused);
    gen::EngineOptions eo;
    eo.page_size = 4;
    eo.max_step_tokens = 16;
    gen::Engine engine(*m, eo);
    std::vector<gen::Request> requests;
    for (int64_t len : {3, 11, 20}) {
      gen::Request q;
      for (int64_t i = 0; i < len; ++i) q.prompt.push_back(3 + (i * 53 + len) % 200);
      q.options.max_tokens = 6;
      q.options.ignore_eos = true;
      q.options.logprobs = 0;
      q.options.sampling.seed = static_cast<uint64_t>(len);
      requests.push_back(std::move(q));
    }
    return engine.generate(std::move(requests));
  };
  const std::vector<gen::Completion> plain = run(false), fused = run(true);
  ASSERT_EQ(plain.size(), fused.size());
  for (size_t r = 0; r < plain.size(); ++r) {
    ASSERT_EQ(plain[r].tokens.size(), fused[r].tokens.size()) << r;
    for (size_t t = 0; t < plain[r].tokens.size(); ++t) {
      EXPECT_EQ(plain[r].tokens[t].id, fused[r].tokens[t].id) << r << ", " << t;
      EXPECT_EQ(plain[r].tokens[t].logprob, fused[r].tokens[t].logprob) << r << ", " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FusedInference,
                         ::testing::Values("hf-gemma4/tiny-moe", "hf-gemma4/tiny-dense-ple", "hf-gemma4/tiny-dense-keqv",
                                           "hf-gemma4-varied/var-ple-shared"));

}  // namespace
}  // namespace g4

// Activation recompute changes memory, never numbers: same loss and gradients bit for bit.
#include <gtest/gtest.h>

#include "autograd/variable.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

struct StepResult {
  double loss;
  std::map<std::string, Tensor> grads;
  int64_t peak;
};

StepResult train_step(model::Gemma4& m, const model::ForwardInputs& in) {
  m.params().zero_grad();
  reset_host_memory_peak();
  const int64_t before = host_memory_stats().current;
  model::ForwardOutputs out = m.forward(in);
  ag::backward(out.loss);
  StepResult r{out.loss.value().item(), {}, host_memory_stats().peak - before};
  for (const auto& name : m.params().order) r.grads[name] = m.params().at(name).grad().clone();
  return r;
}

class Recompute : public ::testing::TestWithParam<std::string> {};

TEST_P(Recompute, SameLossAndGradientsLessMemory) {
  auto m = model::load_hf_model(test::data_dir() + "/" + GetParam());
  model::ForwardInputs in;
  in.input_ids = Tensor::empty({2, 64}, DType::I64);
  for (int64_t i = 0; i < in.input_ids.numel(); ++i) in.input_ids.data<int64_t>()[i] = 3 + (i * 131) % 200;
  in.labels = in.input_ids.clone();
  const StepResult plain = train_step(*m, in);
  m->set_recompute(true);
  const StepResult recomputed = train_step(*m, in);
  EXPECT_EQ(plain.loss, recomputed.loss);
  for (const auto& [name, g] : plain.grads) {
    const Tensor& h = recomputed.grads.at(name);
    for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], h.data<float>()[i]) << name;
  }
  EXPECT_LT(recomputed.peak, plain.peak) << "peak bytes with recompute vs without";
  std::printf("peak activation memory: %lld bytes without recompute, %lld with\n", (long long)plain.peak,
              (long long)recomputed.peak);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Recompute,
                         ::testing::Values("hf-gemma4/tiny-moe", "hf-gemma4/tiny-dense-ple",
                                           "hf-gemma4-varied/var-ple-shared"));

}  // namespace
}  // namespace g4

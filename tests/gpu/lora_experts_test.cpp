// LoRA on the routed experts on the GPU (model/moe.h ExpertLora, model/lora.h): the expert MLP with
// per-expert adapters in bf16 against the CPU in f32 from the same bf16-exact inputs, forward and the
// gradients of A, B and the rows; and the model at decode sizes (where the base would take the fused
// ops::moe_experts) computing the adapters, as its training forward does.
#include <cmath>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "gpu_test.h"
#include "model/lora.h"
#include "model/state_dict_adapter.h"
#include "support/hf_fixtures.h"
#include "support/tensor_compare.h"

namespace g4 {
namespace {

using test::expect_close_scaled;
using test::gpu_bf16;
using test::randn_bf16_exact;

// bf16 rounding of each product (x·A, ·B, the base matmuls, act): a few roundings of 2^-9 relative.
constexpr double kRtol = 2.5e-2;

TEST(GpuLoraExperts, ExpertMlpWithAdaptersMatchesTheCpu) {
  G4_REQUIRE_GPU();
  const int64_t E = 4, H = 96, I = 40, r = 8;
  const std::vector<int64_t> offsets = {0, 13, 13, 30, 41};  // expert 1 gets no rows
  const int64_t N = offsets.back();
  const Tensor rows = randn_bf16_exact({N, H}, 1);
  const Tensor gate_up = randn_bf16_exact({E, H, 2 * I}, 2, 0.1);
  const Tensor down = randn_bf16_exact({E, I, H}, 3, 0.1);
  const Tensor gu_a = randn_bf16_exact({E, H, r}, 4, 0.1), gu_b = randn_bf16_exact({E, r, 2 * I}, 5, 0.1);
  const Tensor d_a = randn_bf16_exact({E, I, r}, 6, 0.1), d_b = randn_bf16_exact({E, r, H}, 7, 0.1);
  const Tensor seed_grad = randn_bf16_exact({N, H}, 8);

  struct Run {
    Tensor out;
    std::vector<Tensor> grads;  // rows, gate_up A, B, down A, B
  };
  auto run = [&](Device device) {
    auto on = [&](const Tensor& t) { return device == Device::CUDA ? gpu_bf16(t) : t; };
    std::vector<ag::Var> v;
    for (const Tensor* t : {&rows, &gu_a, &gu_b, &d_a, &d_b}) v.emplace_back(on(*t), true);
    model::ExpertLora lora;
    lora.gate_up = {v[1], v[2]};
    lora.down = {v[3], v[4]};
    lora.scaling = 2.0;
    // p = 0.5: the kept values are scaled by 2, exact in bf16.
    lora.dropout = [device](const ag::Var& x, bool is_down) {
      return ag::mul(x, ag::Var(model::lora_dropout_mask(x.shape(), 0.5, 9, 1, is_down ? "down" : "gate_up",
                                                         x.value().dtype(), device)));
    };
    const ag::Var out = model::expert_mlp(v[0], ag::Var(on(gate_up)), ag::Var(on(down)), offsets, Tensor(), lora);
    ag::backward(ag::sum_all(ag::mul(out, ag::Var(on(seed_grad)))));
    Run res{out.value(), {}};
    for (const ag::Var& x : v) res.grads.push_back(x.grad());
    return res;
  };
  const Run cpu = run(Device::CPU), gpu = run(Device::CUDA);
  expect_close_scaled(gpu.out, cpu.out, 0, kRtol, "expert MLP with LoRA, bf16");
  const char* names[] = {"d rows", "d gate_up A", "d gate_up B", "d down A", "d down B"};
  for (size_t i = 0; i < cpu.grads.size(); ++i) expect_close_scaled(gpu.grads[i], cpu.grads[i], 0, kRtol, names[i]);
  // Expert 1 had no rows: its adapters get zero gradients on both.
  const Tensor g = test::host_f32(gpu.grads[4]).slice0(1, 1);
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], 0.0f);
}

// Decode-sized inference on bf16 would take ops::moe_experts, which has no adapters: with expert
// LoRA the model takes the grouped path, so the no-grad logits are the training forward's and not
// the base's.
TEST(GpuLoraExperts, DecodeSizedForwardsComputeTheAdapters) {
  G4_REQUIRE_GPU();
  const std::string dir = test::hf_fixture_dir("tiny-moe");
  auto cpu = model::load_hf_model(dir);
  model::LoraConfig lora;
  lora.rank = 4;
  lora.alpha = 8;
  lora.targets = {"experts.gate_up_proj", "experts.down_proj"};
  cpu->enable_lora(lora);
  for (const model::LoraModule& m : model::lora_modules(cpu->config(), lora)) {
    Tensor& b = cpu->params().at(model::lora_b_name(m.name)).mutable_value();
    b.copy_from(randn_bf16_exact(b.shape(), 20, 0.2));
  }
  const auto gpu = cpu->copy_to(Device::CUDA, DType::BF16);
  const auto base = model::load_hf_model(dir)->copy_to(Device::CUDA, DType::BF16);
  model::ForwardInputs in;
  in.input_ids = randint({1, 6}, 21, 0, cpu->config().vocab_size);
  Tensor adapted, plain, training;
  {
    ag::NoGrad no_grad;
    adapted = test::host_f32(gpu->forward(in).logits.value());
    plain = test::host_f32(base->forward(in).logits.value());
  }
  training = test::host_f32(gpu->forward(in).logits.value());
  // The same kernels; only a reordered fp32 sum could tell them apart.
  expect_close_scaled(adapted, training, 0, 1e-3, "decode-sized no-grad logits vs the training forward's");
  EXPECT_GT(test::max_diff(adapted, plain), 1e-2) << "the adapters were skipped";
}

}  // namespace
}  // namespace g4

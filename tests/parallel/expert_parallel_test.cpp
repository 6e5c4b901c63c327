// Expert parallelism: the dispatch on one rank equals the local experts exactly; on 2 and 4 ranks
// (MpiRanks.*, started by MpiLaunch.*) uneven routing -- a rank that sends nothing to its peers,
// a rank that receives nothing, a rank without tokens -- gives every rank the outputs and
// gradients the local experts give; and the errors for models and groups that do not fit.
// Whole-model runs over meshes are in data_parallel_test.cpp.
#include "parallel/expert_parallel.h"

#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "core/random.h"
#include "model/state_dict_adapter.h"
#include "moe_test_util.h"
#include "parallel/device_mesh.h"
#include "parallel/single_communicator.h"
#include "parallel_test_util.h"
#include "support/test_paths.h"

namespace g4::parallel {
namespace {

using testing::close_to;
using testing::error_of;
using testing::mpi_world;
using testing::packed_batch;
using testing::same_values;
using testing::tiny_moe_dir;

struct StepResult {
  double loss = 0;
  std::map<std::string, Tensor> grads;
  std::map<int64_t, std::vector<int64_t>> expert_tokens;
};

StepResult train_step(model::Gemma4& m, const testing::Batch& b) {
  m.params().zero_grad();
  const model::ForwardOutputs out = m.forward({b.ids, Tensor(), b.positions, b.labels});
  ag::backward(out.loss);
  StepResult r{out.loss.value().item(), {}, out.expert_tokens};
  for (const std::string& name : m.params().order) r.grads[name] = m.params().at(name).grad().clone();
  return r;
}

TEST(ExpertParallel, OneRankGroupGivesExactlyTheLocalResult) {
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  const testing::Batch batch = packed_batch();
  const StepResult local = train_step(*m, batch);

  SingleCommunicator one;
  enable_expert_parallel(*m, one);
  ASSERT_NE(m->token_dispatcher(), nullptr);
  const StepResult dispatched = train_step(*m, batch);

  EXPECT_EQ(dispatched.loss, local.loss);
  for (const auto& [name, g] : local.grads) EXPECT_TRUE(same_values(dispatched.grads.at(name), g)) << name;
  // Token counts per MoE layer (every layer of the fixture): all T*K copies, the same either way.
  EXPECT_EQ(dispatched.expert_tokens, local.expert_tokens);
  ASSERT_EQ(local.expert_tokens.size(), 6u);
  for (const auto& [layer, counts] : local.expert_tokens) {
    ASSERT_EQ(counts.size(), 8u);
    int64_t copies = 0;
    for (int64_t c : counts) copies += c;
    EXPECT_EQ(copies, batch.ids.numel() * 2) << "layer " << layer;
  }
}

TEST(ExpertParallel, ModelHoldingASliceNeedsTheGroup) {
  auto m = testing::load_ep_rank(tiny_moe_dir(), 1, 2, DType::F64);
  const testing::Batch b = packed_batch();
  const std::string e = error_of([&] { m->forward({b.ids, Tensor(), b.positions, b.labels}); });
  EXPECT_NE(e.find("this model holds experts [4, 8) of 8 only"), std::string::npos) << e;
  EXPECT_NE(e.find("parallel::enable_expert_parallel"), std::string::npos) << e;
  ag::clear_tape();
}

TEST(ExpertParallel, ModelAndGroupMustAgreeOnTheSlice) {
  auto sliced = testing::load_ep_rank(tiny_moe_dir(), 0, 2, DType::F64);
  SingleCommunicator one;
  const std::string e = error_of([&] { enable_expert_parallel(*sliced, one); });
  EXPECT_NE(e.find("the model holds experts [0, 4) but rank 0 of a 1-rank expert-parallel group owns [0, 8); "
                   "load it with load_hf_model(dir, expert_range(config, 0, 1))"),
            std::string::npos)
      << e;
  EXPECT_EQ(sliced->token_dispatcher(), nullptr);

  auto dense = model::load_hf_model(test::data_dir() + "/hf-gemma4/tiny-dense-ple");
  EXPECT_NE(error_of([&] { enable_expert_parallel(*dense, one); }).find("expert parallelism needs an MoE model"),
            std::string::npos);
}

TEST(ExpertParallel, GroupSizeMustDivideTheExperts) {
  EXPECT_NE(error_of([] {
              expert_range(model::load_hf_config(tiny_moe_dir()), 0, 3);
            }).find("the model's 8 experts do not divide evenly over ep 3"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              MeshShape{.ep = 3}.validate_for_model(8, 32);
            }).find("the model's 8 experts do not divide evenly over ep 3"),
            std::string::npos);
}

// --- Uneven routing on several ranks, at the level of one MoE layer ---------------------------

using testing::kH;
using testing::kI;
using testing::local_moe;
using testing::rank_tokens;
using testing::RankTokens;

TEST(MpiRanks, ExpertParallelWithUnevenRouting) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int me = world.rank(), G = world.size();
  const int64_t E = 2 * G, El = 2;
  const Tensor gate_up = randn({E, kH, 2 * kI}, 1, DType::F64, 0.5), down = randn({E, kI, kH}, 2, DType::F64, 0.5);

  // Reference, on every rank: each rank's tokens through all experts; the expert gradients
  // accumulate every rank's contribution.
  ag::Var all_gate_up(gate_up, true), all_down(down, true);
  Tensor want_out, want_dx, want_dweights;
  std::vector<int64_t> want_counts(static_cast<size_t>(El), 0);
  for (int r = 0; r < G; ++r) {
    const RankTokens d = rank_tokens(r, G);
    ag::Var x(d.x, true), w(d.weights, true);
    const ops::MoePlan plan = ops::moe_plan(d.indices, E);
    const ag::Var out = local_moe(x, w, plan, all_gate_up, all_down);
    ag::backward(ag::sum_all(ag::mul(out, ag::Var(d.projection))));
    for (int64_t j = 0; j < El; ++j)
      want_counts[static_cast<size_t>(j)] += plan.offsets[me * El + j + 1] - plan.offsets[me * El + j];
    if (r == me) {
      want_out = out.value();
      want_dx = x.grad();
      want_dweights = w.grad();
    }
  }

  // Expert parallel: this rank's tokens, this rank's two experts.
  const RankTokens d = rank_tokens(me, G);
  ag::Var x(d.x, true), w(d.weights, true);
  ag::Var my_gate_up(gate_up.slice0(me * El, El).clone(), true), my_down(down.slice0(me * El, El).clone(), true);
  std::vector<int64_t> counts;
  const ag::Var out = expert_parallel_moe(world, x, w, ops::moe_plan(d.indices, E), my_gate_up, my_down, &counts);
  ag::backward(ag::sum_all(ag::mul(out, ag::Var(d.projection))));

  EXPECT_EQ(counts, want_counts);
  if (me == 1) {
    EXPECT_EQ(counts, std::vector<int64_t>(2, 0));  // nothing routes to rank 1
  }
  constexpr double kRel = 1e-10;
  EXPECT_TRUE(close_to(out.value(), want_out, kRel));
  if (d.x.size(0) > 0) {
    EXPECT_TRUE(close_to(x.grad(), want_dx, kRel));
    EXPECT_TRUE(close_to(w.grad(), want_dweights, kRel));
  }
  EXPECT_TRUE(close_to(my_gate_up.grad(), all_gate_up.grad().slice0(me * El, El), kRel));
  EXPECT_TRUE(close_to(my_down.grad(), all_down.grad().slice0(me * El, El), kRel));
  if (me == 1) {  // rank 1's experts received nothing, so their gradient is zero
    for (int64_t i = 0; i < my_down.grad().numel(); ++i) ASSERT_EQ(my_down.grad().data<double>()[i], 0.0);
  }
}

TEST(MpiRanks, ExpertParallelGroupSizeNotDividingTheExpertsIsAnError) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int64_t E = 2 * world.size() + 1;
  EXPECT_NE(error_of([&] { ExpertParallel(world, E); })
                .find("the model's " + std::to_string(E) + " experts do not divide evenly over ep " +
                      std::to_string(world.size())),
            std::string::npos);
  // The op checks before it sends anything, so every rank fails alike and none waits.
  const Tensor indices = Tensor::zeros({1, 1}, DType::I32);
  ag::Var x(Tensor::zeros({1, kH}, DType::F64)), w(Tensor::zeros({1, 1}, DType::F64));
  ag::Var gate_up(Tensor::zeros({2, kH, 2 * kI}, DType::F64)), down(Tensor::zeros({2, kI, kH}, DType::F64));
  EXPECT_NE(error_of([&] {
              expert_parallel_moe(world, x, w, ops::moe_plan(indices, E), gate_up, down);
            }).find("the model's " + std::to_string(E) + " experts do not divide evenly over ep " +
                    std::to_string(world.size())),
            std::string::npos);
  world.barrier();
}

}  // namespace
}  // namespace g4::parallel

// Data-parallel and expert-parallel training of the tiny MoE fixture on a packed batch of 4 rows:
// on 2 and 4 ranks (MpiRanks.*, started by MpiLaunch.*), every mesh -- dp 2, ep 2, dp 4, ep 4,
// dp 2 x ep 2 -- gives the loss and every gradient of one rank training on the whole batch.
// The runs are in f64, so the comparisons can be tight (1e-9 relative) and any difference beyond
// summation order is a bug; expert gradients are compared on the rank that holds them.
#include "parallel/data_parallel.h"

#include <gtest/gtest.h>

#include "model/state_dict_adapter.h"
#include "moe_test_util.h"
#include "parallel/expert_parallel.h"
#include "parallel/single_communicator.h"
#include "parallel_test_util.h"

namespace g4::parallel {
namespace {

using testing::Batch;
using testing::close_to;
using testing::expect_matches_single_rank;
using testing::error_of;
using testing::mpi_world;
using testing::packed_batch;
using testing::same_values;
using testing::tiny_moe_dir;

constexpr double kRel = 1e-9;

// One rank on the whole batch.
struct Reference {
  double loss = 0;
  int64_t counted = 0;
  std::map<std::string, Tensor> grads;
  std::map<int64_t, std::vector<int64_t>> expert_tokens;
};

Reference reference_run(const Batch& b) {
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
  ag::backward(out.loss);
  Reference r{out.loss.value().item(), out.counted_tokens, {}, out.expert_tokens};
  for (const std::string& name : m->params().order) r.grads[name] = m->params().at(name).grad();
  return r;
}

TEST(DataParallel, OneRankMeshIsTheOrdinaryStep) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  const Batch b = packed_batch();
  const Reference want = reference_run(b);

  const int64_t N = global_token_count(b.labels, one);
  EXPECT_EQ(N, want.counted);
  const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
  const ag::Var share = global_loss_share(out, N);
  EXPECT_EQ(share.value().item(), want.loss);
  ag::backward(share);
  reduce_gradients(m->params(), mesh);
  for (const auto& [name, g] : want.grads) EXPECT_TRUE(same_values(m->params().at(name).grad(), g)) << name;
}

TEST(DataParallel, ParameterWithoutGradientGetsZeros) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  reduce_gradients(m->params(), mesh);
  const Tensor& g = m->params().at("model.norm.weight").grad();
  ASSERT_TRUE(g.defined());
  EXPECT_TRUE(same_values(g, Tensor::zeros({64}, DType::F64)));
}

TEST(DataParallel, LossShareErrors) {
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  const Batch b = packed_batch();
  {
    ag::NoGrad no_grad;
    const model::ForwardOutputs unlabelled = m->forward({b.ids, Tensor(), b.positions, Tensor()});
    EXPECT_NE(error_of([&] { global_loss_share(unlabelled, 10); }).find("the forward had no labels"),
              std::string::npos);
    const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
    EXPECT_NE(
        error_of([&] {
          global_loss_share(out, 3);
        }).find("this rank counted " + std::to_string(out.counted_tokens) + " tokens, more than the global count 3"),
        std::string::npos);
  }
}

// --- Meshes of 2 and 4 ranks ------------------------------------------------------------------

struct MeshCase {
  MeshShape shape;
  size_t bucket_bytes = size_t(1) << 20;
  // Activation recompute: each layer's forward, exchanges included, runs again during backward.
  bool recompute = false;
};

// Trains this rank's rows of `batch` on the case's mesh and compares with the reference.
void check_mesh(const MeshCase& mc, const Batch& batch, const Reference& want) {
  const MeshShape& shape = mc.shape;
  Communicator& world = mpi_world();
  DeviceMesh mesh(world, shape);
  mesh.validate_for_model(8, batch.ids.size(1));
  const MeshCoord c = mesh.coord();
  auto m = testing::load_ep_rank(tiny_moe_dir(), c.ep, shape.ep, DType::F64);
  if (shape.ep > 1) enable_expert_parallel(*m, mesh.ep_group());
  m->set_recompute(mc.recompute);

  // Every rank trains on its own rows.
  const int64_t rows = batch.rows() / world.size();
  const Batch mine = batch.slice(world.rank() * rows, rows);
  const int64_t N = global_token_count(mine.labels, world);
  EXPECT_EQ(N, want.counted);
  const model::ForwardOutputs out = m->forward({mine.ids, Tensor(), mine.positions, mine.labels});
  const ag::Var share = global_loss_share(out, N);
  ag::backward(share);
  reduce_gradients(m->params(), mesh, mc.bucket_bytes);

  expect_matches_single_rank(world, share.value().item(), *m, want.loss, want.grads, kRel, kRel);
  // Rows per expert: this rank's experts saw its EP group's tokens; adding the dp replicas and
  // putting the EP ranks' experts side by side gives the counts of the whole batch.
  ASSERT_EQ(out.expert_tokens.size(), want.expert_tokens.size());
  for (const auto& [layer, counts] : out.expert_tokens) {
    Tensor t = Tensor::from_vector(counts, {static_cast<int64_t>(counts.size())});
    mesh.dp_group().all_reduce(t);
    const Tensor all = mesh.ep_group().all_gather(t);
    const std::vector<int64_t> got(all.data<int64_t>(), all.data<int64_t>() + all.numel());
    EXPECT_EQ(got, want.expert_tokens.at(layer)) << "layer " << layer;
  }
}

TEST(MpiRanks, EveryMeshTrainsLikeOneRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  const Batch batch = packed_batch();
  // The last rows have no counted token: on 2 ranks rank 1 trains on nothing, on 4 ranks ranks
  // 2 and 3 do; they still take part in every exchange.
  const Batch half_unlabelled = packed_batch(2);
  const Reference want = reference_run(batch), want_half = reference_run(half_unlabelled);
  ASSERT_GT(want_half.counted, 0);

  const std::vector<MeshCase> cases =
      n == 2 ? std::vector<MeshCase>{{{.dp_shard = 2}}, {{.ep = 2}}, {{.ep = 2}, 1 << 20, true}}
             : std::vector<MeshCase>{{{.dp_shard = 4}},
                                     {{.ep = 4}},
                                     {{.dp_shard = 2, .ep = 2}},
                                     {{.dp_shard = 2, .ep = 2}, 1, false},  // one parameter per bucket
                                     {{.dp_shard = 2, .ep = 2}, 1 << 20, true}};
  for (const MeshCase& c : cases) {
    SCOPED_TRACE(c.shape.str() + ", buckets of " + std::to_string(c.bucket_bytes) + " bytes" +
                 (c.recompute ? ", recompute" : ""));
    check_mesh(c, batch, want);
    {
      SCOPED_TRACE("last rows unlabelled");
      check_mesh(c, half_unlabelled, want_half);
    }
  }
}

}  // namespace
}  // namespace g4::parallel

// Context parallelism: ring attention over the ranks of a cp group (MpiRanks.*: cp = 2 and 4,
// the whole world) gives each rank its slice of ops::attention on the full sequence, forward and
// backward, for causal, sliding-window (narrower and wider than a shard), bidirectional,
// packed-document and padded batches with grouped KV heads; plus sharding a batch and its errors,
// and the whole model's loss, gradients and RL token log-probs over cp (and dp, ep) meshes.
#include "parallel/context_parallel.h"

#include <gtest/gtest.h>

#include <random>

#include "core/random.h"
#include "model/gemma4.h"
#include "model/state_dict_adapter.h"
#include "parallel/data_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/expert_parallel.h"
#include "moe_test_util.h"
#include "multimodal_cp_batch.h"
#include "parallel/single_communicator.h"
#include "parallel_test_util.h"
#include "ring_attention_cases.h"
#include "support/test_paths.h"

namespace g4::parallel {
namespace {

using testing::close_to;
using testing::expect_matches_single_rank;
using testing::error_of;
using testing::mpi_world;
using testing::Batch;
using testing::packed_batch;

constexpr double kRel = 1e-10;
using namespace testing::ring_cases;

// A fresh seed drawn on rank 0 of `group`, the same on every rank (printed, to replay a failure).
uint64_t shared_fresh_seed(Communicator& group) {
  std::random_device rd;
  Tensor t = Tensor::scalar(static_cast<double>(rd() & 0xFFFFFFu), DType::I64);
  broadcast_values(group, t, 0);
  const auto seed = static_cast<uint64_t>(t.data<int64_t>()[0]);
  if (group.rank() == 0) std::printf("  ring attention inputs: seed %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// Every rank's slice of outputs and q/k/v gradients equals the full-sequence op's, on fresh random
// inputs.
void check_ring(Communicator& cp, const Case& c) {
  const int r = cp.rank(), n = cp.size();
  SCOPED_TRACE(std::string(c.name) + ", rank " + std::to_string(r) + " of " + std::to_string(n));
  const uint64_t seed = shared_fresh_seed(cp);
  const Tensor q = randn({B, S, kHeads, kDim}, seed, DType::F64), k = randn({B, S, kKvHeads, kDim}, seed + 1, DType::F64),
               v = randn({B, S, kKvHeads, kDim}, seed + 2, DType::F64),
               dout = randn({B, S, kHeads, kDim}, seed + 3, DType::F64);
  Tensor lse, dq, dk, dv;
  const Tensor want = ops::attention(q, k, v, full_mask(c), 0.3, &lse);
  ops::attention_backward(dout, q, k, v, want, lse, full_mask(c), 0.3, dq, dk, dv);

  ag::Var ql(sequence_shard(q, r, n), true), kl(sequence_shard(k, r, n), true), vl(sequence_shard(v, r, n), true);
  const ag::Var out = ring_attention(cp, ql, kl, vl, shard_mask(c, r, n), 0.3);
  EXPECT_TRUE(close_to(out.value(), sequence_shard(want, r, n), kRel));
  ag::backward(out, sequence_shard(dout, r, n));
  EXPECT_TRUE(close_to(ql.grad(), sequence_shard(dq, r, n), kRel));
  EXPECT_TRUE(close_to(kl.grad(), sequence_shard(dk, r, n), kRel));
  EXPECT_TRUE(close_to(vl.grad(), sequence_shard(dv, r, n), kRel));
}

TEST(ContextParallel, OneRankRingIsTheOp) {
  SingleCommunicator one;
  for (const Case& c : kCases) check_ring(one, c);
}

TEST(MpiRanks, RingAttentionEqualsFullSequence) {
  G4_SKIP_UNLESS_MPI_CHILD();
  for (const Case& c : kCases) check_ring(mpi_world(), c);
}

// Host memory (bytes of tensors, peak above what was held before) of one ring attention forward
// and backward with a fixed slice per rank, in units of one K block of that slice.
double ring_peak_blocks(Communicator& cp) {
  constexpr int64_t Sl = 32, kH = 4, kD = 16;  // q, k, v, out: one block each (as many KV heads as heads)
  const int r = cp.rank();
  ag::Var q(randn({1, Sl, kH, kD}, 10 + r, DType::F64), true), k(randn({1, Sl, kH, kD}, 20 + r, DType::F64), true),
      v(randn({1, Sl, kH, kD}, 30 + r, DType::F64), true);
  const Tensor dout = randn({1, Sl, kH, kD}, 40 + r, DType::F64);
  ops::AttentionMask m;  // bidirectional: every block is visible to every rank
  m.causal = false;
  m.q_start = m.k_start = r * Sl;
  cp.barrier();
  const int64_t before = host_memory_stats().current;
  reset_host_memory_peak();
  {
    const ag::Var out = ring_attention(cp, q, k, v, m, 0.25);
    ag::backward(out, dout);
  }
  const int64_t peak = host_memory_stats().peak - before;
  return static_cast<double>(peak) / static_cast<double>(Sl * kH * kD * sizeof(double));
}

// The ring keeps no remote block beyond the one in hand and the one arriving, forward and
// backward: the peak memory of a rank does not grow with the group. Measured: 9.06 blocks on cp 2
// and cp 4 (q, out, dq, the gradients, the block in hand and arriving with its dK/dV, one block's
// dq/dk/dv). Keeping every received block for the backward pass and reduce-scattering dK/dV
// measured 12.06 blocks on cp 2 and 22.06 on cp 4.
TEST(MpiRanks, RingAttentionMemoryDoesNotGrowWithCp) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int n = world.size();
  const double whole = ring_peak_blocks(world);
  EXPECT_LE(whole, 11.0) << "cp " << n;
  if (n == 4) {
    const std::unique_ptr<Communicator> pairs = world.split(world.rank() / 2, world.rank());
    const double two = ring_peak_blocks(*pairs);
    EXPECT_LE(whole, two + 0.5) << "peak memory in blocks: cp 2 " << two << ", cp 4 " << whole;
    if (world.rank() == 0) std::printf("ring attention peak memory: cp 2 %.2f blocks, cp 4 %.2f blocks\n", two, whole);
  }
}

TEST(ContextParallel, ShardBatchShiftsLabelsBeforeSlicing) {
  const Tensor ids = Tensor::from_vector<int64_t>({10, 11, 12, 13, 14, 15, 16, 17}, {1, 8});
  const Tensor pos = Tensor::from_vector<int64_t>({0, 1, 2, 0, 1, 2, 3, 4}, {1, 8});
  const Tensor labels = Tensor::from_vector<int64_t>({20, 21, 22, 23, -100, 25, 26, 27}, {1, 8});
  const ContextShard s1 = shard_batch(ids, pos, labels, 1, 4);
  EXPECT_EQ(s1.input_ids.data<int64_t>()[0], 12);
  EXPECT_EQ(s1.position_ids.data<int64_t>()[0], 2);
  EXPECT_EQ(s1.targets.data<int64_t>()[0], 23);  // the target of token 2 is label 3, on the next shard
  EXPECT_EQ(s1.targets.data<int64_t>()[1], -100);
  const ContextShard s3 = shard_batch(ids, Tensor(), labels, 3, 4);
  EXPECT_EQ(s3.position_ids.data<int64_t>()[1], 7);  // global arange
  EXPECT_EQ(s3.targets.data<int64_t>()[0], 27);
  EXPECT_EQ(s3.targets.data<int64_t>()[1], -100);
}

TEST(ContextParallel, SequenceMustSplitEvenly) {
  const Tensor ids = Tensor::zeros({2, 10}, DType::I64);
  const std::string e = error_of([&] { shard_batch(ids, Tensor(), Tensor(), 0, 4); });
  EXPECT_NE(e.find("the sequence length 10 does not split into 4 equal contiguous shards"), std::string::npos) << e;
}

TEST(ContextParallel, RingAttentionErrors) {
  SingleCommunicator one;
  const ag::Var q(randn({1, 4, 2, 8}, 1, DType::F64)), k(randn({1, 4, 1, 8}, 2, DType::F64)),
      short_k(randn({1, 3, 1, 8}, 2, DType::F64));
  std::string e = error_of([&] { ring_attention(one, q, short_k, short_k, {}, 1.0); });
  EXPECT_NE(e.find("every rank holds an equal slice of queries and keys; q has 4 positions, k 3"), std::string::npos)
      << e;
  ops::AttentionMask m;
  m.q_start = 4;
  e = error_of([&] { ring_attention(one, q, k, k, m, 1.0); });
  EXPECT_NE(e.find("q_start 4 != k_start 0"), std::string::npos) << e;
  m.q_start = 0;
  m.q_doc = Tensor::zeros({1, 4}, DType::I32);
  e = error_of([&] { ring_attention(one, q, k, k, m, 1.0); });
  EXPECT_NE(e.find("give both q_doc and k_doc, or neither"), std::string::npos) << e;
  m.q_doc = Tensor();
  m.q_block = Tensor::zeros({1, 4}, DType::I32);
  e = error_of([&] { ring_attention(one, q, k, k, m, 1.0); });
  EXPECT_NE(e.find("give both q_block and k_block, or neither"), std::string::npos) << e;
}

// --- The whole model over cp (and dp, ep) meshes -----------------------------------------------

std::string fixture(const char* name) {
  return test::data_dir() + "/hf-gemma4/" + name;
}

struct Reference {
  double loss = 0;
  int64_t counted = 0;
  std::map<std::string, Tensor> grads;
};

Reference reference_run(const std::string& dir, const Batch& b) {
  auto m = model::load_hf_model(dir, {}, DType::F64);
  const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
  ag::backward(out.loss);
  Reference r{out.loss.value().item(), out.counted_tokens, {}};
  for (const std::string& name : m->params().order) r.grads[name] = m->params().at(name).grad();
  return r;
}

struct CpCase {
  const char* model;
  MeshShape shape;
  bool recompute = false;
};

// Each (dp, ep) pair of the mesh trains its own rows; the cp ranks of that pair each take one
// slice of those rows. The global loss and every gradient equal one rank on the whole batch.
void check_cp_mesh(const CpCase& cc, const Batch& batch, const Reference& want) {
  const MeshShape& shape = cc.shape;
  Communicator& world = mpi_world();
  DeviceMesh mesh(world, shape);
  const MeshCoord c = mesh.coord();
  auto m = testing::load_ep_rank(fixture(cc.model), c.ep, shape.ep, DType::F64);
  mesh.validate_for_model(m->config().num_experts, batch.ids.size(1));
  if (shape.ep > 1) enable_expert_parallel(*m, mesh.ep_group());
  enable_context_parallel(*m, mesh.cp_group());
  m->set_recompute(cc.recompute);

  const int64_t rows = batch.rows() / (shape.dp_shard * shape.ep);
  const Batch mine = batch.slice((c.dp * shape.ep + c.ep) * rows, rows);
  const ContextShard shard = shard_batch(mine.ids, mine.positions, mine.labels, c.cp, shape.cp);
  const int64_t N = global_target_count(shard.targets, world);
  EXPECT_EQ(N, want.counted);
  const model::ForwardOutputs out =
      m->forward({shard.input_ids, Tensor(), shard.position_ids, Tensor(), shard.targets});
  const ag::Var share = global_loss_share(out, N);
  ag::backward(share);
  reduce_gradients(m->params(), mesh);

  expect_matches_single_rank(world, share.value().item(), *m, want.loss, want.grads, kRel, 1e-9);
}

TEST(ContextParallel, OneRankGroupIsTheOrdinaryModel) {
  SingleCommunicator one;
  auto m = model::load_hf_model(fixture("tiny-dense-ple"), {}, DType::F64);
  const Batch b = packed_batch();
  const Reference want = reference_run(fixture("tiny-dense-ple"), b);
  enable_context_parallel(*m, one);
  const ContextShard shard = shard_batch(b.ids, b.positions, b.labels, 0, 1);
  const model::ForwardOutputs out = m->forward({shard.input_ids, Tensor(), shard.position_ids, Tensor(), shard.targets});
  EXPECT_NEAR(out.loss.value().item(), want.loss, 1e-12 * want.loss);
  ag::backward(out.loss);
  for (const auto& [name, g] : want.grads) EXPECT_TRUE(close_to(m->params().at(name).grad(), g, 1e-10)) << name;
}

TEST(ContextParallel, PadToMultipleAppendsOneIgnoredDocument) {
  const Tensor ids = Tensor::from_vector<int64_t>({10, 11, 12, 13, 14}, {1, 5});
  const Tensor pos = Tensor::from_vector<int64_t>({3, 4, 0, 1, 2}, {1, 5});
  const Tensor labels = Tensor::from_vector<int64_t>({20, 21, -100, 23, 24}, {1, 5});
  const PaddedRows p = pad_to_multiple(ids, pos, labels, 4, 7);
  EXPECT_EQ(padded_length(5, 4), 8);
  EXPECT_EQ(p.input_ids.shape(), (Shape{1, 8}));
  const std::vector<int64_t> want_ids{10, 11, 12, 13, 14, 7, 7, 7}, want_pos{3, 4, 0, 1, 2, 0, 1, 2},
      want_labels{20, 21, -100, 23, 24, -100, -100, -100};
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(p.input_ids.data<int64_t>()[i], want_ids[static_cast<size_t>(i)]) << i;
    EXPECT_EQ(p.position_ids.data<int64_t>()[i], want_pos[static_cast<size_t>(i)]) << i;
    EXPECT_EQ(p.labels.data<int64_t>()[i], want_labels[static_cast<size_t>(i)]) << i;
  }
  // Without position ids a row is one document; a length that divides is unchanged.
  const PaddedRows one_doc = pad_to_multiple(ids, Tensor(), Tensor(), 2, 0);
  EXPECT_FALSE(one_doc.labels.defined());
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(one_doc.position_ids.data<int64_t>()[i], i < 5 ? i : 0) << i;
  EXPECT_EQ(pad_to_multiple(ids, pos, labels, 5, 0).input_ids.shape(), (Shape{1, 5}));
}

// Padding changes nothing the loss sees: the padded batch's loss and gradients are the batch's.
TEST(ContextParallel, PaddedBatchTrainsLikeTheBatch) {
  const Batch b = packed_batch();  // S = 32, padded to 35
  const Reference want = reference_run(fixture("tiny-dense-ple"), b);
  const PaddedRows p = pad_to_multiple(b.ids, b.positions, b.labels, 5, 0);
  ASSERT_EQ(p.input_ids.size(1), 35);
  auto m = model::load_hf_model(fixture("tiny-dense-ple"), {}, DType::F64);
  const model::ForwardOutputs out = m->forward({p.input_ids, Tensor(), p.position_ids, p.labels});
  EXPECT_EQ(out.counted_tokens, want.counted);
  EXPECT_NEAR(out.loss.value().item(), want.loss, 1e-12 * want.loss);
  ag::backward(out.loss);
  for (const auto& [name, g] : want.grads) EXPECT_TRUE(close_to(m->params().at(name).grad(), g, 1e-10)) << name;
}

TEST(ContextParallel, ModelErrors) {
  SingleCommunicator one;
  auto m = model::load_hf_model(fixture("tiny-dense-ple"), {}, DType::F64);
  enable_context_parallel(*m, one);
  const Batch b = packed_batch();
  std::string e = error_of([&] { m->forward({b.ids, Tensor(), Tensor(), Tensor(), Tensor()}); });
  EXPECT_NE(e.find("context parallelism: forward needs the global position_ids of its slice"), std::string::npos) << e;
  e = error_of([&] { m->forward({b.ids, Tensor(), b.positions, b.labels}); });
  EXPECT_NE(e.find("pass targets"), std::string::npos) << e;
  ag::clear_tape();
}

TEST(MpiRanks, ContextParallelModelTrainsLikeOneRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  const Batch batch = packed_batch();  // S = 32: documents cross the boundaries of 2 and 4 slices
  for (const char* name : {"tiny-moe", "tiny-dense-ple"}) {
    const Reference want = reference_run(fixture(name), batch);
    std::vector<CpCase> cases;
    if (n == 2) {
      cases = {{name, {.cp = 2}}, {name, {.cp = 2}, true}};
    } else {
      cases = {{name, {.cp = 4}}, {name, {.dp_shard = 2, .cp = 2}}};
      if (std::string(name) == "tiny-moe") cases.push_back({name, {.ep = 2, .cp = 2}});
    }
    for (const CpCase& c : cases) {
      SCOPED_TRACE(std::string(name) + ", " + c.shape.str() + (c.recompute ? ", recompute" : ""));
      check_cp_mesh(c, batch, want);
    }
  }
}

// RL's token log-probs under context parallelism: each rank's log-probs are its slice of one
// rank's on the whole batch, and the gradients of Σ c·log p (c sliced alike), summed over the
// ranks, are the whole batch's.
TEST(MpiRanks, ContextParallelTokenLogprobsAreTheLocalSlice) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int r = world.rank(), n = world.size();
  const Batch batch = packed_batch();
  const Tensor c = randn(batch.ids.shape(), 81, DType::F64);
  auto whole = model::load_hf_model(fixture("tiny-dense-ple"), {}, DType::F64);
  model::ForwardInputs in{batch.ids, Tensor(), batch.positions, batch.labels};
  in.return_logits = false;
  in.return_token_logprobs = true;
  const model::ForwardOutputs want = whole->forward(in);
  ag::backward(want.token_logprobs, c);

  auto m = model::load_hf_model(fixture("tiny-dense-ple"), {}, DType::F64);
  DeviceMesh mesh(world, {.cp = n});
  enable_context_parallel(*m, mesh.cp_group());
  const ContextShard shard = shard_batch(batch.ids, batch.positions, batch.labels, r, n);
  model::ForwardInputs local{shard.input_ids, Tensor(), shard.position_ids, Tensor(), shard.targets};
  local.return_logits = false;
  local.return_token_logprobs = true;
  const model::ForwardOutputs got = m->forward(local);
  EXPECT_TRUE(close_to(got.token_logprobs.value(), sequence_shard(want.token_logprobs.value(), r, n), kRel));
  ag::backward(got.token_logprobs, sequence_shard(c, r, n));
  reduce_gradients(m->params(), mesh);
  for (const std::string& name : whole->params().order)
    EXPECT_TRUE(close_to(m->params().at(name).grad(), whole->params().at(name).grad(), 1e-9)) << name;
}

// --- Multimodal rows over cp --------------------------------------------------------------------

// One rank in f64 on a multimodal fixture's whole batch: the loss and every gradient, the towers'
// included.
Reference mm_reference_run(const std::string& name, const model::ForwardInputs& in) {
  auto m = model::load_hf_model(testing::mm_cp::fixture_dir(name), {}, DType::F64);
  const model::ForwardOutputs out = m->forward(in);
  ag::backward(out.loss);
  Reference r{out.loss.value().item(), out.counted_tokens, {}};
  for (const std::string& param : m->params().order) r.grads[param] = m->params().at(param).grad();
  return r;
}

// The world as one cp group over the fixture's rows, right-padded to a multiple of `pad_multiple`
// (which moves the slice boundaries): every rank runs the towers on the whole batch's media and
// merges the soft tokens of its slice's placeholders; the image blocks (tiny-mm-bidir, window 8,
// images of 60 and 68 tokens) are numbered over whole rows. The global loss and every gradient,
// the towers' summed over the ranks, equal one rank's.
void check_mm_cp(const std::string& name, const model::ForwardInputs& whole, const Reference& want,
                 int64_t pad_multiple) {
  Communicator& world = mpi_world();
  const int r = world.rank(), n = world.size();
  DeviceMesh mesh(world, {.cp = n});
  auto m = model::load_hf_model(testing::mm_cp::fixture_dir(name), {}, DType::F64);
  enable_context_parallel(*m, mesh.cp_group());
  Tensor types;
  const model::ForwardInputs in =
      testing::mm_cp::rank_slice(whole, r, n, pad_multiple, m->config().pad_token_id, &types);
  // Every case but tiny-mm-bidir's unpadded rows on 2 ranks cuts an image between two ranks.
  const bool uncut = name == "tiny-mm-bidir" && n == 2 && types.size(1) == whole.input_ids.size(1);
  EXPECT_EQ(testing::mm_cp::image_crosses_a_slice(types, types.size(1) / n), !uncut);
  const int64_t N = global_target_count(in.targets, world);
  EXPECT_EQ(N, want.counted);
  const model::ForwardOutputs out = m->forward(in);
  const ag::Var share = global_loss_share(out, N);
  ag::backward(share);
  reduce_gradients(m->params(), mesh);
  expect_matches_single_rank(world, share.value().item(), *m, want.loss, want.grads, kRel, 1e-9);
}

TEST(MpiRanks, ContextParallelMultimodalRowsTrainLikeOneRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  for (const char* name : {"tiny-mm-bidir", "tiny-mm-e"}) {
    const model::ForwardInputs whole = testing::mm_cp::whole_batch(name);
    const Reference want = mm_reference_run(name, whole);
    // tiny-mm-bidir's images span 8..67 and 74..141 of row 0 and 7..69 of row 1 (S = 148): 4 slices
    // of 37 cut all three; 2 slices of 74 cut none, 2 of 76 (padded to 152) the second of row 0.
    // tiny-mm-e (S = 120, per-layer inputs, causal images) has images and clips across 60 and 30.
    for (const int64_t pad : n == 2 ? std::vector<int64_t>{2, 8} : std::vector<int64_t>{4}) {
      SCOPED_TRACE(std::string(name) + ", cp " + std::to_string(n) + ", rows padded to a multiple of " +
                   std::to_string(pad));
      check_mm_cp(name, whole, want, pad);
    }
  }
}

}  // namespace
}  // namespace g4::parallel

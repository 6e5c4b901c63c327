// Sharded data parallelism (parallel.fsdp): the flat layout, the sharded AdamW step on one rank,
// and, on 2 and 4 ranks (MpiRanks.*), training of the tiny MoE fixture on dp-shard, dp-shard x ep
// and (with context parallelism) cp, dp-shard x cp and ep x cp meshes against one rank with the
// ordinary AdamW (f64: the loss of every step,
// the gradients of step 1, the grad norms, every parameter and the moments after the last
// step). Also sharded checkpoints: written by 2 and 4 ranks, read back on the same mesh, on 1
// rank and (from 4) on 2 ranks as other meshes, with the moments re-split.
#include "parallel/fsdp.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "model/state_dict_adapter.h"
#include "moe_test_util.h"
#include "parallel/context_parallel.h"
#include "parallel/data_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/single_communicator.h"
#include "parallel_test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/sharded_adamw.h"
#include "train/weights_checkpoint.h"

namespace g4::parallel {
namespace {

namespace fs = std::filesystem;
using testing::Batch;
using testing::close_to;
using testing::error_of;
using testing::mpi_world;
using testing::packed_batch;
using testing::same_values;
using testing::tiny_moe_dir;

constexpr double kRel = 1e-9;
const train::AdamWOptions kAdamW{0.9, 0.95, 1e-8, 0.1};
constexpr double kLr = 3e-3, kMaxNorm = 0.05;  // the gradients' norm is larger: clipping is on
constexpr int kSteps = 3;

// A longer packed batch: 8 rows of 64 tokens, documents crossing nothing but their row.
Batch long_packed_batch() {
  constexpr int64_t B = 8, S = 64;
  Batch b{Tensor::empty({B, S}, DType::I64), Tensor::empty({B, S}, DType::I64), Tensor::empty({B, S}, DType::I64)};
  for (int64_t r = 0; r < B; ++r) {
    const std::vector<int64_t> docs = r % 3 == 0 ? std::vector<int64_t>{64}
                                      : r % 3 == 1 ? std::vector<int64_t>{17, 30, 17}
                                                   : std::vector<int64_t>{40, 24};
    int64_t s = 0;
    for (int64_t len : docs)
      for (int64_t i = 0; i < len; ++i, ++s) {
        const int64_t at = r * S + s, token = 1 + (53 * at + 7 * r + 3 * i * i) % 255;
        b.ids.data<int64_t>()[at] = token;
        b.positions.data<int64_t>()[at] = i;
        b.labels.data<int64_t>()[at] = (i == 0 || at % 11 == 5) ? -100 : token;
      }
  }
  return b;
}

// The batch of step s (alternating, so the moments see two different gradients).
Batch batch_of_step(int s) {
  return s % 2 == 0 ? packed_batch() : long_packed_batch();
}

// One rank, the ordinary AdamW: what every mesh must reproduce.
struct Reference {
  std::vector<double> losses, norms;
  std::map<std::string, Tensor> step1_grads, params, state;
};

Reference reference_run() {
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  const std::vector<std::string> names = m->params().order;
  train::AdamW opt(m->params(), names, train::no_weight_decay(m->params(), m->config()), kAdamW);
  Reference r;
  for (int s = 0; s < kSteps; ++s) {
    const Batch b = batch_of_step(s);
    const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
    ag::backward(out.loss);
    r.losses.push_back(out.loss.value().item());
    if (s == 0)
      for (const std::string& n : names) r.step1_grads[n] = m->params().at(n).grad().clone();
    r.norms.push_back(train::clip_grad_norm(m->params(), names, kMaxNorm));
    opt.step(kLr);
    m->params().zero_grad();
  }
  for (const std::string& n : names) r.params[n] = m->params().at(n).value().clone();
  for (const auto& [n, t] : opt.state()) r.state[n] = t.clone();
  return r;
}

// max |got - want| / max |want|: the moments are sums of gradients with both signs, so some
// entries cancel to far below the tensor's scale and only the scale-relative error is meaningful.
double scaled_error(const Tensor& got, const Tensor& want) {
  double scale = 0, err = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, std::abs(element_as_double(want, i)));
    err = std::max(err, std::abs(element_as_double(got, i) - element_as_double(want, i)));
  }
  return scale > 0 ? err / scale : err;
}

const Reference& reference() {
  static const Reference r = reference_run();
  return r;
}

// The end of reference step s once the gradients are reduced: the clip norm, then the update.
void clip_and_step_like_reference(train::ShardedAdamW& opt, model::Gemma4& m, int s) {
  const double norm = reference().norms[static_cast<size_t>(s)];
  EXPECT_NEAR(opt.clip_grad_norm(kMaxNorm), norm, 1e-12 * norm);
  opt.step(kLr);
  m.params().zero_grad();
}

// Every parameter of `m` (gathered) is the reference run's after its last step.
void expect_reference_parameters(const model::Gemma4& m) {
  for (const auto& [n, w] : reference().params) EXPECT_TRUE(close_to(m.params().at(n).value(), w, 1e-12)) << n;
}

// --- One rank ---------------------------------------------------------------------------------

TEST(Fsdp, FlatLayoutPadsToTheShardsAndRoundTrips) {
  auto m = model::load_hf_model(tiny_moe_dir());
  const std::vector<std::string> names = {"model.norm.weight", "model.embed_tokens.weight"};
  const FlatLayout l = FlatLayout::build(m->params(), names, 3);
  EXPECT_EQ(l.numel, 64 + 256 * 64);
  EXPECT_EQ(l.padded % 3, 0);
  EXPECT_LT(l.padded - l.numel, 3);
  EXPECT_EQ(l.params[1].offset, 64);
  EXPECT_EQ(l.find("model.embed_tokens.weight")->shape, (Shape{256, 64}));
  EXPECT_EQ(l.find("nope"), nullptr);
  const FlatLayout back = FlatLayout::from_json(l.to_json(), "test");
  EXPECT_EQ(back.to_json(), l.to_json());
  // Nothing to shard still gives every shard an element.
  EXPECT_EQ(FlatLayout::build(m->params(), {}, 4).padded, 4);
  nlohmann::json bad = l.to_json();
  bad["padded"] = l.padded + 1;
  EXPECT_NE(error_of([&] { FlatLayout::from_json(bad, "opt.safetensors"); }).find("does not split into 3 shards"),
            std::string::npos);
  bad = l.to_json();
  bad.erase("params");
  EXPECT_NE(error_of([&] { FlatLayout::from_json(bad, "opt.safetensors"); }).find("opt.safetensors"),
            std::string::npos);
}

// Units: each padded to the shards on its own; a shard's tensor is its slice of every unit.
TEST(Fsdp, FlatLayoutUnitsSplitEachUnitOverTheShards) {
  auto m = model::load_hf_model(tiny_moe_dir());
  const FlatLayout l =
      FlatLayout::build_units(m->params(), {{"model.norm.weight"}, {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"}}, 3);
  ASSERT_EQ(l.units.size(), 2u);
  EXPECT_EQ(l.units[0].begin, 0);
  EXPECT_EQ(l.units[0].padded, 66);  // 64 -> 3 x 22
  EXPECT_EQ(l.units[1].begin, 66);
  EXPECT_EQ(l.units[1].padded, 16449);  // 16384 + 64 -> 3 x 5483
  EXPECT_EQ(l.numel, 64 + 16384 + 64);
  EXPECT_EQ(l.padded, 66 + 16449);
  EXPECT_EQ(l.find("model.embed_tokens.weight")->offset, 66);
  EXPECT_EQ(l.find("model.layers.0.input_layernorm.weight")->offset, 66 + 16384);
  // Shard 1 holds unit 0's [22, 44) at its index 0 and unit 1's [5483, 10966) from index 22.
  EXPECT_EQ(l.shard_size(), 22 + 5483);
  const FlatLayout::Location a = l.locate(30), b = l.locate(66 + 5483 + 7);
  EXPECT_EQ(a.shard, 1);
  EXPECT_EQ(a.index, 8);
  EXPECT_EQ(a.run, 14);
  EXPECT_EQ(b.shard, 1);
  EXPECT_EQ(b.index, 22 + 7);
  EXPECT_EQ(b.run, 5483 - 7);
  // Every element of every parameter is owned exactly once, where locate() says.
  int64_t owned = 0;
  for (int64_t d = 0; d < 3; ++d)
    l.for_each_owned(d, [&](const FlatParam& p, int64_t first, int64_t count, int64_t local) {
      owned += count;
      EXPECT_GE(first, p.offset);
      EXPECT_LE(first + count, p.offset + p.numel);
      EXPECT_EQ(l.locate(first).shard, d);
      EXPECT_EQ(l.locate(first).index, local);
    });
  EXPECT_EQ(owned, l.numel);
  EXPECT_EQ(FlatLayout::from_json(l.to_json(), "test").to_json(), l.to_json());
  // Format 1 (no units) is one unit.
  nlohmann::json v1 = FlatLayout::build(m->params(), {"model.norm.weight"}, 2).to_json();
  v1.erase("units");
  const FlatLayout one = FlatLayout::from_json(v1, "test");
  ASSERT_EQ(one.units.size(), 1u);
  EXPECT_EQ(one.units[0].padded, 64);
  nlohmann::json bad = l.to_json();
  bad["units"][1]["begin"] = 60;
  EXPECT_NE(error_of([&] { FlatLayout::from_json(bad, "opt.safetensors"); }).find("does not follow at 66"),
            std::string::npos);
}

// The GPU's layout (align 128): every parameter starts at a multiple of 128 elements of its unit,
// every unit is a multiple of shards x 128, so each shard's part of every parameter starts
// aligned too; the gaps belong to no parameter, and the layout round-trips through its JSON.
TEST(Fsdp, AlignedFlatLayoutKeepsEveryPartAligned) {
  auto m = model::load_hf_model(tiny_moe_dir());
  const std::vector<std::vector<std::string>> units = {
      {"model.norm.weight"}, {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"}, {}};
  constexpr int64_t kAlign = 128, kShards = 3;
  const FlatLayout l = FlatLayout::build_units(m->params(), units, kShards, kAlign);
  ASSERT_EQ(l.units.size(), 3u);
  EXPECT_EQ(l.units[0].padded, kShards * kAlign);            // 64 elements
  EXPECT_EQ(l.units[1].padded, 43 * kShards * kAlign);       // 16384, then 64 at 16384: 16448 -> 43 x 384
  EXPECT_EQ(l.units[2].padded, kShards * kAlign);            // an empty unit still gives every shard a part
  EXPECT_EQ(l.find("model.layers.0.input_layernorm.weight")->offset, l.units[1].begin + 16384);
  EXPECT_EQ(l.numel, 64 + 16384 + 64);
  for (const FlatUnit& u : l.units) EXPECT_EQ(u.padded % (kShards * kAlign), 0);
  int64_t owned = 0;
  for (int64_t d = 0; d < kShards; ++d)
    l.for_each_owned(d, [&](const FlatParam& p, int64_t first, int64_t count, int64_t local) {
      owned += count;
      EXPECT_EQ(local % kAlign, 0) << p.name << " on shard " << d;
      EXPECT_EQ(l.locate(first).shard, d);
      EXPECT_EQ(l.locate(first).index, local);
    });
  EXPECT_EQ(owned, l.numel);
  EXPECT_EQ(FlatLayout::from_json(l.to_json(), "test").to_json(), l.to_json());
  // Packed (align 1, the CPU) is the layout the test above checks.
  EXPECT_EQ(FlatLayout::build_units(m->params(), units, kShards).units[1].padded, 16449);
}

TEST(Fsdp, ExpertParametersAreNotFlatSharded) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir());
  EXPECT_NE(error_of([&] { ShardedParameters(m->params(), {"model.layers.0.moe.experts.down_projs"}, mesh); })
                .find("is an expert parameter"),
            std::string::npos);
}

// A one-rank sharded step is the ordinary AdamW step, bit for bit; the parameters are freed
// between reduce_gradients and the next gather.
TEST(Fsdp, OneRankShardedStepIsTheAdamWStep) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  train::ShardedAdamW opt(m->params(), mesh, m->params().order, train::no_weight_decay(m->params(), m->config()),
                          kAdamW);
  for (int s = 0; s < kSteps; ++s) {
    opt.gather_parameters();
    const Batch b = batch_of_step(s);
    const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
    ag::backward(out.loss);
    EXPECT_EQ(out.loss.value().item(), reference().losses[static_cast<size_t>(s)]);
    opt.reduce_gradients();
    EXPECT_FALSE(m->params().at("model.norm.weight").value().defined());
    clip_and_step_like_reference(opt, *m, s);
  }
  opt.gather_parameters();
  expect_reference_parameters(*m);
}

// Block by block on one rank (also with activation recompute): still the AdamW step, bit for bit
// in the loss; the whole parameters are never all present during forward and backward.
TEST(Fsdp, OneRankBlockByBlockStepIsTheAdamWStep) {
  for (const bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "no recompute");
    SingleCommunicator one;
    DeviceMesh mesh(one, {});
    auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
    m->set_recompute(recompute);
    train::ShardedAdamW opt(*m, mesh, m->params().order, train::no_weight_decay(m->params(), m->config()), kAdamW);
    EXPECT_EQ(opt.shards().num_blocks(), m->config().num_layers + 2);
    EXPECT_EQ(opt.shards().layout().units.size(), static_cast<size_t>(m->config().num_layers + 2));
    for (int s = 0; s < kSteps; ++s) {
      opt.release_parameters();
      opt.shards().reset_whole_elements_peak();
      const Batch b = batch_of_step(s);
      const model::ForwardOutputs out = m->forward({b.ids, Tensor(), b.positions, b.labels});
      ag::backward(out.loss);
      EXPECT_EQ(out.loss.value().item(), reference().losses[static_cast<size_t>(s)]);
      EXPECT_LT(opt.shards().whole_elements_peak(), opt.shards().layout().padded / 2);
      EXPECT_EQ(opt.shards().whole_elements(), 0) << "every block is freed after its backward";
      opt.reduce_gradients();
      clip_and_step_like_reference(opt, *m, s);
    }
    opt.gather_parameters();
    expect_reference_parameters(*m);
    // Evaluation forwards (no tape) also run block by block, and free every block.
    opt.release_parameters();
    {
      ag::NoGrad no_grad;
      const Batch b = packed_batch();
      m->forward({b.ids, Tensor(), b.positions, b.labels});
    }
    EXPECT_EQ(opt.shards().whole_elements(), 0);
  }
}

// Gradient accumulation block by block (what g4 train does with several micro-batches): each
// micro-batch's backward reduce-scatters into the slices, which add up to the whole batch's
// gradient. Two micro-batches of 2 rows against the reference's 4-row batch, to summation order.
TEST(Fsdp, BlockByBlockAccumulatesMicroBatches) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), {}, DType::F64);
  train::ShardedAdamW opt(*m, mesh, m->params().order, train::no_weight_decay(m->params(), m->config()), kAdamW);
  opt.release_parameters();
  const Batch b = batch_of_step(0);
  const int64_t N = global_token_count(b.labels, one);
  double loss = 0;
  for (int64_t first : {0, 2}) {
    const Batch half = b.slice(first, 2);
    const ag::Var share = global_loss_share(m->forward({half.ids, Tensor(), half.positions, half.labels}), N);
    loss += share.value().item();
    ag::backward(share);
    EXPECT_EQ(opt.shards().whole_elements(), 0);
  }
  EXPECT_NEAR(loss, reference().losses[0], 1e-12 * reference().losses[0]);
  opt.reduce_gradients();
  const Tensor flat = opt.shards().gather_flat(opt.shards().grad());
  for (const FlatParam& p : opt.shards().layout().params)
    EXPECT_TRUE(close_to(flat.slice0(p.offset, p.numel).reshape(p.shape), reference().step1_grads.at(p.name), 1e-10))
        << p.name;
  ShardedParameters& es = *opt.expert_shards();
  const Tensor ef = es.gather_flat(es.grad());
  for (const FlatParam& p : es.layout().params)
    EXPECT_TRUE(close_to(ef.slice0(p.offset, p.numel).reshape(p.shape), reference().step1_grads.at(p.name), 1e-10))
        << p.name;
}

// --- 2 and 4 ranks ----------------------------------------------------------------------------

// How a case gathers the replicated parameters: block by block through the model's hooks (the
// default, what g4 train does), optionally with activation recompute, or the whole model at once.
struct Gathering {
  bool block_by_block = true;
  bool recompute = false;
  std::string str() const {
    return std::string(block_by_block ? "block by block" : "whole model") + (recompute ? ", recompute" : "");
  }
};

// Peak whole parameters and host memory of step 1, for the report.
struct StepMemory {
  int64_t whole_elements = 0, padded = 0, host_bytes = 0;
};

// Trains kSteps sharded steps on the case's mesh, each (dp, ep) pair on its rows (split over its
// cp ranks, one contiguous slice each, when cp > 1), and compares with one rank. The flat slices
// are split over dp only: the ep and cp peers of a rank hold the same slice.
StepMemory check_sharded_training(const MeshShape& shape, Gathering how = {}) {
  Communicator& world = mpi_world();
  DeviceMesh mesh(world, shape);
  const MeshCoord c = mesh.coord();
  auto m = testing::load_ep_rank(tiny_moe_dir(), c.ep, shape.ep, DType::F64);
  if (shape.ep > 1) enable_expert_parallel(*m, mesh.ep_group());
  if (shape.cp > 1) enable_context_parallel(*m, mesh.cp_group());
  m->set_recompute(how.recompute);
  const std::set<std::string> no_decay = train::no_weight_decay(m->params(), m->config());
  train::ShardedAdamW opt = how.block_by_block
                                ? train::ShardedAdamW(*m, mesh, m->params().order, no_decay, kAdamW)
                                : train::ShardedAdamW(m->params(), mesh, m->params().order, no_decay, kAdamW);
  const Reference& want = reference();
  StepMemory memory;

  // Memory: this rank holds 1/dp of the replicated optimizer state (plus its experts' moments).
  const FlatLayout& l = opt.shards().layout();
  int64_t replicated = 0, experts = 0;
  for (const std::string& n : m->params().order)
    (model::split_by_expert(m->params().kind(n)) ? experts : replicated) += m->params().at(n).value().numel();
  EXPECT_EQ(l.numel, replicated);
  EXPECT_EQ(l.shards, shape.dp_shard);
  EXPECT_EQ(l.units.size(), how.block_by_block ? static_cast<size_t>(m->config().num_layers + 2) : 1u);
  // Each unit is padded to the shards on its own, by less than one element per shard.
  std::vector<bool> covered(static_cast<size_t>(l.padded), false);
  for (const FlatParam& p : l.params) std::fill_n(covered.begin() + p.offset, p.numel, true);
  for (const FlatUnit& u : l.units) {
    EXPECT_EQ(u.padded % shape.dp_shard, 0);
    EXPECT_LT(std::count(covered.begin() + u.begin, covered.begin() + u.begin + u.padded, false), shape.dp_shard);
  }
  EXPECT_EQ(opt.shards().master().numel(), l.padded / shape.dp_shard);
  EXPECT_EQ(opt.exp_avg().numel(), l.padded / shape.dp_shard);
  EXPECT_EQ(opt.exp_avg_sq().numel(), l.padded / shape.dp_shard);
  // The experts this rank holds (its EP slice) are a flat buffer of their own, also split over dp.
  ShardedParameters& es = *opt.expert_shards();
  const FlatLayout& le = es.layout();
  EXPECT_EQ(le.numel, experts);
  EXPECT_EQ(le.shards, shape.dp_shard);
  EXPECT_EQ(opt.state_numel(), 3 * (l.padded / shape.dp_shard) + 3 * (le.padded / shape.dp_shard));

  for (int s = 0; s < kSteps; ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    if (how.block_by_block)
      opt.release_parameters();
    else
      opt.gather_parameters();
    opt.shards().reset_whole_elements_peak();
    es.reset_whole_elements_peak();
    reset_host_memory_peak();
    const Batch batch = batch_of_step(s);
    // Row stream (dp, ep) = rank / cp (the mesh's layout); its cp ranks share the rows.
    const int64_t rows = batch.rows() / (shape.dp_shard * shape.ep);
    const Batch mine = batch.slice((c.dp * shape.ep + c.ep) * rows, rows);
    int64_t N = 0;
    model::ForwardOutputs out;
    if (shape.cp > 1) {
      const ContextShard shard = shard_batch(mine.ids, mine.positions, mine.labels, c.cp, shape.cp);
      N = global_target_count(shard.targets, world);
      out = m->forward({shard.input_ids, Tensor(), shard.position_ids, Tensor(), shard.targets});
    } else {
      N = global_token_count(mine.labels, world);
      out = m->forward({mine.ids, Tensor(), mine.positions, mine.labels});
    }
    const ag::Var share = global_loss_share(out, N);
    ag::backward(share);
    if (s == 0)
      memory = {opt.shards().whole_elements_peak() + es.whole_elements_peak(), l.padded + le.padded,
                host_memory_stats().peak};
    if (how.block_by_block) {
      // Never the whole model: at most the blocks in use and in flight.
      EXPECT_LT(opt.shards().whole_elements_peak(), l.padded / 2);
      EXPECT_LT(es.whole_elements_peak(), le.padded / 2);
      EXPECT_EQ(opt.shards().whole_elements() + es.whole_elements(), 0) << "every block is freed after its backward";
    }
    Tensor loss = Tensor::scalar(share.value().item(), DType::F64);
    world.all_reduce(loss);
    EXPECT_NEAR(loss.item(), want.losses[static_cast<size_t>(s)], kRel * want.losses[static_cast<size_t>(s)]);
    opt.reduce_gradients();
    EXPECT_FALSE(m->params().at("model.norm.weight").value().defined()) << "the whole parameters were not freed";
    if (s == 0) {
      // Gradients: the gathered slices, and this rank's experts.
      const Tensor flat = opt.shards().gather_flat(opt.shards().grad());
      for (const FlatParam& p : l.params)
        EXPECT_TRUE(close_to(flat.slice0(p.offset, p.numel).reshape(p.shape), want.step1_grads.at(p.name), kRel))
            << p.name;
      for (int64_t i = 0; i < l.padded; ++i) {
        if (!covered[static_cast<size_t>(i)]) {
          EXPECT_EQ(flat.data<double>()[i], 0.0) << "padding at " << i;
        }
      }
      const model::ExpertRange held = m->experts();
      const Tensor eflat = es.gather_flat(es.grad());
      for (const FlatParam& p : le.params)
        EXPECT_TRUE(close_to(eflat.slice0(p.offset, p.numel).reshape(p.shape),
                             want.step1_grads.at(p.name).slice0(held.begin, held.count), kRel))
            << p.name;
    }
    const double norm = opt.clip_grad_norm(kMaxNorm);
    EXPECT_NEAR(norm, want.norms[static_cast<size_t>(s)], kRel * want.norms[static_cast<size_t>(s)]);
    EXPECT_GT(norm, kMaxNorm);
    opt.step(kLr);
    m->params().zero_grad();
  }
  // Parameters after the last step. AdamW divides each element's moment by the root of its own
  // second moment, so an entry whose gradients nearly cancel carries their summation-order
  // error into the update at full size: compare relative to the tensor's scale.
  opt.gather_parameters();
  const model::ExpertRange held = m->experts();
  double worst_param = 0;
  for (const std::string& n : m->params().order) {
    const Tensor& w = want.params.at(n);
    const double e = scaled_error(m->params().at(n).value(),
                                  model::split_by_expert(m->params().kind(n)) ? w.slice0(held.begin, held.count) : w);
    EXPECT_LT(e, kRel) << n;
    worst_param = std::max(worst_param, e);
  }
  // The moments, gathered.
  const Tensor mm = opt.shards().gather_flat(opt.exp_avg()), vv = opt.shards().gather_flat(opt.exp_avg_sq());
  double worst = 0;
  for (const FlatParam& p : l.params)
    for (const auto& [kind, t] : {std::pair<std::string, const Tensor*>{"exp_avg.", &mm}, {"exp_avg_sq.", &vv}}) {
      const double e = scaled_error(t->slice0(p.offset, p.numel).reshape(p.shape), want.state.at(kind + p.name));
      EXPECT_LT(e, 10 * kRel) << kind << p.name;  // v is squared gradients: twice their error
      worst = std::max(worst, e);
    }
  const Tensor em = es.gather_flat(opt.expert_exp_avg()), ev = es.gather_flat(opt.expert_exp_avg_sq());
  for (const FlatParam& p : le.params)
    for (const auto& [kind, t] : {std::pair<std::string, const Tensor*>{"exp_avg.", &em}, {"exp_avg_sq.", &ev}}) {
      const double e = scaled_error(t->slice0(p.offset, p.numel).reshape(p.shape),
                                    want.state.at(kind + p.name).slice0(held.begin, held.count));
      EXPECT_LT(e, 10 * kRel) << kind << p.name;
      worst = std::max(worst, e);
    }
  if (world.rank() == 0)
    std::printf("%s, %s, %d steps: worst parameter error %.3g, moment error %.3g of the tensor's scale\n",
                shape.str().c_str(), how.str().c_str(), kSteps, worst_param, worst);
  return memory;
}

TEST(MpiRanks, ShardedDataParallelTrainsLikeOneRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  // The whole-model gather (dp 2, dp 4) runs in ShardedBlockByBlockHoldsFewerWholeParameters.
  const Gathering recompute{.recompute = true};
  const std::vector<std::pair<MeshShape, Gathering>> cases =
      n == 2 ? std::vector<std::pair<MeshShape, Gathering>>{{{.dp_shard = 2}, {}},
                                                            {{.ep = 2}, {}},
                                                            {{.cp = 2}, {}},
                                                            {{.dp_shard = 2}, recompute}}
             : std::vector<std::pair<MeshShape, Gathering>>{{{.dp_shard = 4}, {}},
                                                            {{.dp_shard = 2, .ep = 2}, recompute},
                                                            {{.dp_shard = 2, .cp = 2}, {}},
                                                            {{.ep = 2, .cp = 2}, {}}};
  for (const auto& [shape, how] : cases) {
    SCOPED_TRACE(shape.str() + ", " + how.str());
    check_sharded_training(shape, how);
  }
}

// bf16 compute copies whose masters are kept as remainders (with bf16 moments), sharded over every
// rank: each rank's slice is split from the f32 original, updated, and joined again for the export,
// so the exported masters and the gathered copies equal the replicated optimizer's bit for bit. Every
// rank sets the same gradients, bf16-exact so that their sum over up to four ranks is exact: the
// replicated optimizer takes that sum.
TEST(MpiRanks, ShardedRemaindersTrainTheReplicatedMasters) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int n = world.size();
  auto host = model::load_hf_model(tiny_moe_dir());
  const auto bf16_store = [&] {
    model::ParamStore s;
    for (const std::string& name : host->params().order) {
      s.add(name, host->params().kind(name), host->params().at(name).value().to(DType::BF16));
      s.at(name).impl()->fp32_grad = true;
    }
    return s;
  };
  model::ParamStore sharded_store = bf16_store(), store = bf16_store();
  const std::vector<std::string> names = store.order;
  const std::set<std::string> no_decay = train::no_weight_decay(host->params(), host->config());
  train::AdamWOptions o = kAdamW;
  o.exp_avg_dtype = o.exp_avg_sq_dtype = DType::BF16;
  o.store_param_remainders = true;
  DeviceMesh mesh(world, {.dp_shard = n});
  train::ShardedAdamW sharded(sharded_store, mesh, names, no_decay, o, &host->params());
  ASSERT_TRUE(sharded.shards().remainder().defined());
  train::AdamW replicated(store, names, no_decay, o);
  replicated.load_parameters(host->params());
  for (int step = 0; step < 3; ++step) {
    sharded.gather_parameters();
    uint64_t seed = 900 + 100 * static_cast<uint64_t>(step);
    for (const std::string& name : names) {
      const Tensor g = randn(store.at(name).value().shape(), seed++, DType::F32, 0.1).to(DType::BF16).to(DType::F32);
      Tensor sum = g.clone();
      for (int64_t i = 0; i < sum.numel(); ++i) sum.data<float>()[i] *= static_cast<float>(n);
      for (auto [s, value] : {std::pair<model::ParamStore*, Tensor>{&sharded_store, g}, {&store, sum}}) {
        s->at(name).impl()->grad = value;
        s->at(name).impl()->grad_owned = true;
      }
    }
    sharded.reduce_gradients();
    sharded.step(1e-2);
    replicated.step(1e-2);
  }
  sharded.gather_parameters();
  model::Gemma4 exported(host->config());
  sharded.copy_masters_to(exported.params());
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(same_values(exported.params().at(names[i]).value(), replicated.master(i))) << names[i];
    EXPECT_TRUE(same_values(sharded_store.at(names[i]).value(), store.at(names[i]).value())) << names[i];
  }
}

// The point of gathering block by block: the peak of whole parameters on dp 2 and dp 4 (the
// whole world), against gathering the whole model for the step.
TEST(MpiRanks, ShardedBlockByBlockHoldsFewerWholeParameters) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  const StepMemory blocks = check_sharded_training({.dp_shard = n});
  const StepMemory whole = check_sharded_training({.dp_shard = n}, {.block_by_block = false});
  EXPECT_EQ(whole.whole_elements, whole.padded);
  EXPECT_LT(3 * blocks.whole_elements, whole.whole_elements);
  EXPECT_LT(blocks.host_bytes, whole.host_bytes);
  if (mpi_world().rank() == 0)
    std::printf("dp %d, step 1: whole parameters at most %lld elements block by block (%.1f%% of the %lld the whole "
                "model gather holds); host peak %.3f MiB vs %.3f MiB\n",
                n, static_cast<long long>(blocks.whole_elements), 100.0 * blocks.whole_elements / whole.whole_elements,
                static_cast<long long>(whole.whole_elements), blocks.host_bytes / 1048576.0,
                whole.host_bytes / 1048576.0);
}

// --- Sharded checkpoints ----------------------------------------------------------------------

// The whole model (every expert) from the EP group's slices; collective over ep.
std::unique_ptr<model::Gemma4> whole_model(const model::Gemma4& m, Communicator& ep) {
  return train::gather_experts(m, ep);
}

// One sharded step of the rank's rows of `b` (the mesh's world trains on the whole batch).
void sharded_step(model::Gemma4& m, train::ShardedAdamW& opt, DeviceMesh& mesh, const Batch& b) {
  opt.release_parameters();  // the forward gathers block by block
  const int64_t rows = b.rows() / mesh.world().size();
  const Batch mine = b.slice(mesh.world().rank() * rows, rows);
  const int64_t N = global_token_count(mine.labels, mesh.world());
  ag::backward(global_loss_share(m.forward({mine.ids, Tensor(), mine.positions, mine.labels}), N));
  opt.reduce_gradients();
  opt.clip_grad_norm(kMaxNorm);
  opt.step(kLr);
  m.params().zero_grad();
  opt.gather_parameters();
}

// A model on `mesh` (f32, as g4 train keeps it) with its sharded optimizer, block by block (so the
// checkpoints have one flat unit per block, as g4 train writes them).
struct ShardedRun {
  std::unique_ptr<model::Gemma4> model;
  std::unique_ptr<DeviceMesh> mesh;
  std::unique_ptr<train::ShardedOptimizer> opt;
};
ShardedRun make_run(Communicator& world, MeshShape shape, const std::string& dir) {
  ShardedRun r;
  r.mesh = std::make_unique<DeviceMesh>(world, shape);
  r.model = testing::load_ep_rank(dir, r.mesh->coord().ep, shape.ep);
  if (shape.ep > 1) enable_expert_parallel(*r.model, r.mesh->ep_group());
  r.opt = std::make_unique<train::ShardedOptimizer>(*r.model, *r.mesh, r.model->params().order, kAdamW);
  return r;
}

// Restores opt (and its weights) from the checkpoint step_dir, as g4 train resumes; collective
// over the mesh. Returns trainer_state.json.
nlohmann::json load_run(const std::string& step_dir, train::Optimizer& opt, DeviceMesh& mesh) {
  train::WeightsCheckpoint weights(opt, mesh, "");
  train::CheckpointManager manager(fs::path(step_dir).parent_path().string(), 0, mesh.world());
  manager.add(weights);
  manager.add(opt);
  return manager.load(step_dir);
}

// The whole moments of every parameter, as named tensors (experts gathered over ep); collective.
std::map<std::string, Tensor> whole_moments(ShardedRun& r) {
  std::map<std::string, Tensor> out;
  train::ShardedAdamW& opt = r.opt->adamw();
  const FlatLayout& l = opt.shards().layout();
  const Tensor m = opt.shards().gather_flat(opt.exp_avg()), v = opt.shards().gather_flat(opt.exp_avg_sq());
  for (const FlatParam& p : l.params) {
    out["exp_avg." + p.name] = m.slice0(p.offset, p.numel).reshape(p.shape).clone();
    out["exp_avg_sq." + p.name] = v.slice0(p.offset, p.numel).reshape(p.shape).clone();
  }
  // Experts: this rank's EP slice gathered over dp, then every slice over ep.
  ShardedParameters& es = *opt.expert_shards();
  const Tensor em = es.gather_flat(opt.expert_exp_avg()), ev = es.gather_flat(opt.expert_exp_avg_sq());
  for (const FlatParam& p : es.layout().params) {
    out["exp_avg." + p.name] = r.mesh->ep_group().all_gather(em.slice0(p.offset, p.numel).reshape(p.shape).clone());
    out["exp_avg_sq." + p.name] = r.mesh->ep_group().all_gather(ev.slice0(p.offset, p.numel).reshape(p.shape).clone());
  }
  return out;
}

Tensor logits_of(const model::Gemma4& m, const Batch& b) {
  ag::NoGrad no_grad;
  return m.forward({b.ids, Tensor(), b.positions, Tensor()}).logits.value();
}

TEST(MpiRanks, ShardedCheckpointsLoadOnOtherRankCounts) {
  G4_SKIP_UNLESS_MPI_CHILD();
  Communicator& world = mpi_world();
  const int n = world.size();
  Tensor pid = Tensor::from_vector<int64_t>({static_cast<int64_t>(::getpid())}, {1});
  world.broadcast(pid, 0);
  const fs::path base = fs::temp_directory_path() / ("g4_fsdp_ckpt_" + std::to_string(pid.data<int64_t>()[0]));
  const Batch b = long_packed_batch();

  const std::vector<MeshShape> writers = n == 2 ? std::vector<MeshShape>{{.dp_shard = 2}, {.ep = 2}}
                                                : std::vector<MeshShape>{{.dp_shard = 4}, {.dp_shard = 2, .ep = 2}};
  for (const MeshShape& writer : writers) {
    SCOPED_TRACE("written by " + writer.str());
    // Two steps on 4 ranks, then a checkpoint.
    ShardedRun w = make_run(world, writer, tiny_moe_dir());
    sharded_step(*w.model, w.opt->adamw(), *w.mesh, b);
    sharded_step(*w.model, w.opt->adamw(), *w.mesh, packed_batch());
    const fs::path dir = base / ("dp" + std::to_string(writer.dp_shard) + "xep" + std::to_string(writer.ep));
    std::string step_dir;
    {
      train::WeightsCheckpoint weights(*w.opt, *w.mesh, "");
      train::CheckpointManager manager(dir.string(), 0, world);
      manager.add(weights);
      manager.add(*w.opt);
      step_dir = manager.save(2);
    }
    EXPECT_EQ(fs::path(step_dir), dir / "step-00000002");
    const std::map<std::string, Tensor> want_moments = whole_moments(w);
    // Only the ranks holding distinct slices wrote optimizer files, each with what it alone holds:
    // the flat slices on ep 0, and on every rank (cp is 1) a distinct dp slice of an EP slice of
    // the experts.
    for (int r = 0; r < n; ++r) {
      const MeshCoord c = writer.coord_of(r);
      const fs::path f = fs::path(step_dir) / train::optimizer_shard_name(r, n);
      ASSERT_TRUE(fs::exists(f)) << r;
      const io::SafetensorsReader saved = io::SafetensorsReader::open(f.string());
      EXPECT_EQ(saved.has("flat.exp_avg"), c.ep == 0) << r;
      EXPECT_TRUE(saved.has("experts.exp_avg_sq")) << r;
    }
    // The whole model, for logits and parameters to compare against.
    const std::unique_ptr<model::Gemma4> whole = whole_model(*w.model, w.mesh->ep_group());
    const Tensor want_logits = logits_of(*whole, b);

    // Resume on the same mesh: continued training is bit for bit the uninterrupted run.
    {
      ShardedRun again = make_run(world, writer, tiny_moe_dir());
      const nlohmann::json s = load_run(step_dir, *again.opt, *again.mesh);
      EXPECT_EQ(s.at("step"), 2);
      EXPECT_EQ(again.opt->steps_taken(), 2);
      EXPECT_TRUE(same_values(again.opt->adamw().shards().master(), w.opt->adamw().shards().master()));
      sharded_step(*again.model, again.opt->adamw(), *again.mesh, b);
      sharded_step(*w.model, w.opt->adamw(), *w.mesh, b);
      for (const std::string& n : w.model->params().order)
        EXPECT_TRUE(same_values(again.model->params().at(n).value(), w.model->params().at(n).value())) << n;
    }

    // On one rank (every rank on its own): the plain AdamW and a one-rank sharded AdamW.
    {
      SingleCommunicator one;
      DeviceMesh one_mesh(one, MeshShape{});
      auto m1 = model::load_hf_model(step_dir);
      train::ReplicatedAdamW plain(m1->params(), m1->config(), m1->experts(), nullptr, &one_mesh,
                                   m1->params().order, kAdamW, m1.get());
      load_run(step_dir, plain, one_mesh);
      EXPECT_TRUE(same_values(logits_of(*m1, b), want_logits));
      for (const auto& [n, t] : plain.adamw().state())
        EXPECT_TRUE(same_values(t, want_moments.at(n))) << "1 rank, " << n;
      ShardedRun s1 = make_run(one, {}, step_dir);
      load_run(step_dir, *s1.opt, *s1.mesh);
      for (const auto& [n, t] : whole_moments(s1)) EXPECT_TRUE(same_values(t, want_moments.at(n))) << "1 shard, " << n;
    }

    // On two ranks (from 4): ranks {0, 1} and {2, 3} each form a two-rank world; dp 2 and ep 2.
    if (n != 4) continue;
    const std::unique_ptr<Communicator> pair = world.split(world.rank() / 2, world.rank());
    for (const MeshShape& reader : {MeshShape{.dp_shard = 2}, MeshShape{.ep = 2}}) {
      SCOPED_TRACE("read by " + reader.str());
      ShardedRun r2 = make_run(*pair, reader, step_dir);
      load_run(step_dir, *r2.opt, *r2.mesh);
      for (const auto& [n, t] : whole_moments(r2)) EXPECT_TRUE(same_values(t, want_moments.at(n))) << n;
      const std::unique_ptr<model::Gemma4> whole2 = whole_model(*r2.model, r2.mesh->ep_group());
      EXPECT_TRUE(same_values(logits_of(*whole2, b), want_logits));
    }
  }
  world.barrier();
  if (world.rank() == 0) fs::remove_all(base);
}

}  // namespace
}  // namespace g4::parallel

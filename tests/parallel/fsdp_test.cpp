// Sharded data parallelism (parallel.fsdp): the flat layout, the sharded AdamW step on one rank,
// and, on 2 and 4 ranks (MpiRanks.*), training of the tiny MoE fixture on dp-shard and
// dp-shard x ep meshes against one rank with the ordinary AdamW (f64: the loss of every step,
// the gradients of step 1, the grad norms, every parameter and the moments after the last
// step). Also sharded checkpoints: written by 2 and 4 ranks, read back on the same mesh, on 1
// rank and (from 4) on 2 ranks as other meshes, with the moments re-split.
#include "parallel/fsdp.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "model/state_dict_adapter.h"
#include "moe_test_util.h"
#include "parallel/data_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/single_communicator.h"
#include "parallel_test_util.h"
#include "train/checkpoint.h"
#include "train/sharded_adamw.h"

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
  auto m = model::load_hf_model(tiny_moe_dir(), 0, 1, DType::F64);
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

// --- One rank ---------------------------------------------------------------------------------

TEST(Fsdp, FlatLayoutPadsToTheShardsAndRoundTrips) {
  auto m = model::load_hf_model(tiny_moe_dir(), 0, 1);
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

TEST(Fsdp, ExpertParametersAreNotFlatSharded) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), 0, 1);
  EXPECT_NE(error_of([&] { ShardedParameters(m->params(), {"model.layers.0.moe.experts.down_projs"}, mesh); })
                .find("is an expert parameter"),
            std::string::npos);
}

// A one-rank sharded step is the ordinary AdamW step, bit for bit; the parameters are freed
// between reduce_gradients and the next gather.
TEST(Fsdp, OneRankShardedStepIsTheAdamWStep) {
  SingleCommunicator one;
  DeviceMesh mesh(one, {});
  auto m = model::load_hf_model(tiny_moe_dir(), 0, 1, DType::F64);
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
    EXPECT_NEAR(opt.clip_grad_norm(kMaxNorm), reference().norms[static_cast<size_t>(s)],
                1e-12 * reference().norms[static_cast<size_t>(s)]);
    opt.step(kLr);
    m->params().zero_grad();
  }
  opt.gather_parameters();
  for (const auto& [n, w] : reference().params) EXPECT_TRUE(close_to(m->params().at(n).value(), w, 1e-12)) << n;
}

// --- 2 and 4 ranks ----------------------------------------------------------------------------

// Trains kSteps sharded steps on the case's mesh, each rank on its rows, and compares with one rank.
void check_sharded_training(const MeshShape& shape) {
  Communicator& world = mpi_world();
  DeviceMesh mesh(world, shape);
  const MeshCoord c = mesh.coord();
  auto m = model::load_hf_model(tiny_moe_dir(), c.ep, shape.ep, DType::F64);
  if (shape.ep > 1) enable_expert_parallel(*m, mesh.ep_group());
  train::ShardedAdamW opt(m->params(), mesh, m->params().order, train::no_weight_decay(m->params(), m->config()),
                          kAdamW);
  const Reference& want = reference();

  // Memory: this rank holds 1/dp of the replicated optimizer state (plus its experts' moments).
  const FlatLayout& l = opt.shards().layout();
  int64_t replicated = 0, experts = 0;
  for (const std::string& n : m->params().order)
    (model::is_expert_parameter(n) ? experts : replicated) += m->params().at(n).value().numel();
  EXPECT_EQ(l.numel, replicated);
  EXPECT_EQ(l.shards, shape.dp_shard);
  EXPECT_EQ(l.padded, (replicated + shape.dp_shard - 1) / shape.dp_shard * shape.dp_shard);
  EXPECT_EQ(opt.shards().master().numel(), l.padded / shape.dp_shard);
  EXPECT_EQ(opt.exp_avg().numel(), l.padded / shape.dp_shard);
  EXPECT_EQ(opt.exp_avg_sq().numel(), l.padded / shape.dp_shard);
  EXPECT_EQ(opt.state_numel(), 3 * (l.padded / shape.dp_shard) + 2 * experts);

  for (int s = 0; s < kSteps; ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    opt.gather_parameters();
    const Batch batch = batch_of_step(s);
    const int64_t rows = batch.rows() / world.size();
    const Batch mine = batch.slice(world.rank() * rows, rows);
    const int64_t N = global_token_count(mine.labels, world);
    const model::ForwardOutputs out = m->forward({mine.ids, Tensor(), mine.positions, mine.labels});
    const ag::Var share = global_loss_share(out, N);
    ag::backward(share);
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
      for (int64_t i = l.numel; i < l.padded; ++i) EXPECT_EQ(flat.data<double>()[i], 0.0) << "padding";
      const model::ExpertRange held = m->experts();
      for (const std::string& n : m->params().order) {
        if (!model::is_expert_parameter(n)) continue;
        EXPECT_TRUE(close_to(m->params().at(n).grad(), want.step1_grads.at(n).slice0(held.begin, held.count), kRel))
            << n;
      }
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
    const double e =
        scaled_error(m->params().at(n).value(), model::is_expert_parameter(n) ? w.slice0(held.begin, held.count) : w);
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
  if (world.rank() == 0)
    std::printf("%s, %d steps: worst parameter error %.3g, moment error %.3g of the tensor's scale\n",
                shape.str().c_str(), kSteps, worst_param, worst);
}

TEST(MpiRanks, ShardedDataParallelTrainsLikeOneRank) {
  G4_SKIP_UNLESS_MPI_CHILD();
  const int n = mpi_world().size();
  const std::vector<MeshShape> shapes = n == 2 ? std::vector<MeshShape>{{.dp_shard = 2}, {.ep = 2}}
                                               : std::vector<MeshShape>{{.dp_shard = 4}, {.dp_shard = 2, .ep = 2}};
  for (const MeshShape& s : shapes) {
    SCOPED_TRACE(s.str());
    check_sharded_training(s);
  }
}

// --- Sharded checkpoints ----------------------------------------------------------------------

// The whole model (every expert) from the EP group's slices; collective over ep.
std::unique_ptr<model::Gemma4> whole_model(const model::Gemma4& m, Communicator& ep) {
  auto full = std::make_unique<model::Gemma4>(m.config());
  for (const std::string& n : m.params().order) {
    const Tensor& v = m.params().at(n).value();
    full->params().at(n).mutable_value().copy_from(model::is_expert_parameter(n) ? ep.all_gather(v) : v);
  }
  for (const auto& [n, b] : m.params().buffers)
    if (n.find("per_expert_scale") == std::string::npos) full->params().buffers[n] = b.clone();
  return full;
}

// One sharded step of the rank's rows of `b` (the mesh's world trains on the whole batch).
void sharded_step(model::Gemma4& m, train::ShardedAdamW& opt, DeviceMesh& mesh, const Batch& b) {
  opt.gather_parameters();
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

// A model on `mesh` (f32, as g4 train keeps it) with its sharded optimizer.
struct ShardedRun {
  std::unique_ptr<model::Gemma4> model;
  std::unique_ptr<DeviceMesh> mesh;
  std::unique_ptr<train::ShardedAdamW> opt;
};
ShardedRun make_run(Communicator& world, MeshShape shape, const std::string& dir) {
  ShardedRun r;
  r.mesh = std::make_unique<DeviceMesh>(world, shape);
  r.model = model::load_hf_model(dir, r.mesh->coord().ep, shape.ep);
  if (shape.ep > 1) enable_expert_parallel(*r.model, r.mesh->ep_group());
  r.opt = std::make_unique<train::ShardedAdamW>(r.model->params(), *r.mesh, r.model->params().order,
                                                train::no_weight_decay(r.model->params(), r.model->config()), kAdamW);
  return r;
}

// The whole moments of every parameter, as named tensors (experts gathered over ep); collective.
std::map<std::string, Tensor> whole_moments(ShardedRun& r) {
  std::map<std::string, Tensor> out;
  const FlatLayout& l = r.opt->shards().layout();
  const Tensor m = r.opt->shards().gather_flat(r.opt->exp_avg()), v = r.opt->shards().gather_flat(r.opt->exp_avg_sq());
  for (const FlatParam& p : l.params) {
    out["exp_avg." + p.name] = m.slice0(p.offset, p.numel).reshape(p.shape).clone();
    out["exp_avg_sq." + p.name] = v.slice0(p.offset, p.numel).reshape(p.shape).clone();
  }
  for (const auto& [n, t] : r.opt->experts().state()) out[n] = r.mesh->ep_group().all_gather(t);
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
    sharded_step(*w.model, *w.opt, *w.mesh, b);
    sharded_step(*w.model, *w.opt, *w.mesh, packed_batch());
    std::unique_ptr<model::Gemma4> whole;
    if (w.mesh->coord().dp == 0) whole = whole_model(*w.model, w.mesh->ep_group());
    const fs::path dir = base / ("dp" + std::to_string(writer.dp_shard) + "xep" + std::to_string(writer.ep));
    train::TrainerState state;
    state.step = 2;
    const std::string step_dir =
        train::save_checkpoint(dir.string(), whole ? whole.get() : w.model.get(), *w.opt, state, "", 0, world);
    EXPECT_EQ(fs::path(step_dir), dir / "step-00000002");
    const std::map<std::string, Tensor> want_moments = whole_moments(w);
    // Only the ranks holding distinct slices wrote optimizer files: those with ep 0 (a flat
    // slice each) and those with dp 0 (an expert slice each).
    for (int r = 0; r < n; ++r) {
      const MeshCoord c = writer.coord_of(r);
      EXPECT_EQ(fs::exists(fs::path(step_dir) / train::optimizer_shard_name(r, n)), c.ep == 0 || c.dp == 0) << r;
    }
    // The whole model, for logits and parameters to compare against.
    if (!whole) whole = whole_model(*w.model, w.mesh->ep_group());  // dp 1 ranks gather too
    const Tensor want_logits = logits_of(*whole, b);

    // Resume on the same mesh: continued training is bit for bit the uninterrupted run.
    {
      ShardedRun again = make_run(world, writer, tiny_moe_dir());
      const train::TrainerState s = train::load_checkpoint(step_dir, *again.model, *again.opt, world.rank(), n);
      EXPECT_EQ(s.step, 2);
      EXPECT_EQ(again.opt->steps_taken(), 2);
      EXPECT_TRUE(same_values(again.opt->shards().master(), w.opt->shards().master()));
      sharded_step(*again.model, *again.opt, *again.mesh, b);
      sharded_step(*w.model, *w.opt, *w.mesh, b);
      for (const std::string& n : w.model->params().order)
        EXPECT_TRUE(same_values(again.model->params().at(n).value(), w.model->params().at(n).value())) << n;
    }

    // On one rank (every rank on its own): the plain AdamW and a one-rank sharded AdamW.
    {
      SingleCommunicator one;
      auto m1 = model::load_hf_model(step_dir);
      train::AdamW plain(m1->params(), m1->params().order, train::no_weight_decay(m1->params(), m1->config()), kAdamW);
      train::load_checkpoint(step_dir, *m1, plain, 0, 1);
      EXPECT_TRUE(same_values(logits_of(*m1, b), want_logits));
      for (const auto& [n, t] : plain.state()) EXPECT_TRUE(same_values(t, want_moments.at(n))) << "1 rank, " << n;
      ShardedRun s1 = make_run(one, {}, step_dir);
      train::load_checkpoint(step_dir, *s1.model, *s1.opt, 0, 1);
      for (const auto& [n, t] : whole_moments(s1)) EXPECT_TRUE(same_values(t, want_moments.at(n))) << "1 shard, " << n;
    }

    // On two ranks (from 4): ranks {0, 1} and {2, 3} each form a two-rank world; dp 2 and ep 2.
    if (n != 4) continue;
    const std::unique_ptr<Communicator> pair = world.split(world.rank() / 2, world.rank());
    for (const MeshShape& reader : {MeshShape{.dp_shard = 2}, MeshShape{.ep = 2}}) {
      SCOPED_TRACE("read by " + reader.str());
      ShardedRun r2 = make_run(*pair, reader, step_dir);
      train::load_checkpoint(step_dir, *r2.model, *r2.opt, pair->rank(), 2);
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

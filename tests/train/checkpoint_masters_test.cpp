// A model trained through fp32 masters (bf16 compute copies, as on the GPU) checkpoints the masters,
// not the copies, and resumes with masters, copies, moments and step restored bit for bit. The
// compute copies live in a bf16 CPU parameter store here: AdamW's bf16 path (master update plus
// rounded copy) runs on the CPU as on the GPU, while the CPU model itself computes only in f32,
// so this test drives the optimizer with given gradients instead of a forward pass (tests/gpu
// train_test.cpp does the same with the GPU model and real steps).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/random.h"
#include "io/safetensors.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "ops/optim.h"
#include "support/error_message.h"
#include "support/g4_process.h"
#include "support/masters_checkpoint.h"
#include "support/tiny_models.h"
#include "parallel/device_mesh.h"
#include "parallel/single_communicator.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/sharded_adamw.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

io::ModelConfig tiny_moe() { return test::tiny_moe_config(32, 2, {{"vocab_size", 64}}); }

// The bf16 compute copies of `m`'s parameters (what Gemma4::copy_to(.., BF16) holds), on the CPU.
model::ParamStore bf16_store(const model::Gemma4& m) {
  model::ParamStore s;
  for (const std::string& n : m.params().order) {
    s.add(n, m.params().kind(n), m.params().at(n).value().to(DType::BF16));
    s.at(n).impl()->fp32_grad = true;
  }
  for (const auto& [n, b] : m.params().buffers) s.set_buffer(n, b.kind, b.value.clone());
  return s;
}

// f32 gradients, the same for the same seed.
void set_grads(model::ParamStore& p, uint64_t seed) {
  for (const std::string& n : p.order) {
    p.at(n).impl()->grad = randn(p.at(n).value().shape(), seed++, DType::F32, 0.1);
    p.at(n).impl()->grad_owned = true;
  }
}

using test::not_bf16;
using test::same_bits;

// The compute copy AdamW keeps of an f32 master: rounded to nearest even, or with remainders the
// master's split (ties away from zero).
Tensor compute_copy(const Tensor& master, const train::AdamWOptions& o) {
  if (!o.store_param_remainders) return master.to(DType::BF16);
  return ops::split_master(master.to(Device::CPU)).param;
}

// Three steps, a checkpoint, a resume into a fresh optimizer and one more step, with AdamW state
// stored as `o` says.
void expect_exact_save_and_resume(const train::AdamWOptions& o, const std::string& scratch) {
  const fs::path dir = test::scratch_dir(scratch);
  const io::ModelConfig cfg = tiny_moe();
  model::Gemma4 host(cfg);
  host.init_weights(11);
  model::ParamStore store = bf16_store(host);
  // One random matrix stays frozen: the checkpoint must hold its f32 original, which host keeps.
  std::string frozen;
  std::vector<std::string> names;
  for (const std::string& n : store.order) {
    if (frozen.empty() && n.find("q_proj") != std::string::npos)
      frozen = n;
    else
      names.push_back(n);
  }
  ASSERT_FALSE(frozen.empty());
  const Tensor frozen_f32 = host.params().at(frozen).value().clone();
  ASSERT_GT(not_bf16(frozen_f32), 0);
  // The optimizer keeps an f32 copy of host: the constructor's masters would be the bf16 values
  // widened; the host model gives the f32 ones.
  train::ReplicatedAdamW opt(store, cfg, {}, host.copy_to(Device::CPU, DType::F32), nullptr, names, o);
  for (size_t i = 0; i < names.size(); ++i)
    ASSERT_TRUE(same_bits(opt.adamw().master(i), host.params().at(names[i]).value()));
  for (int step = 0; step < 3; ++step) {
    set_grads(store, 100 + 10 * static_cast<uint64_t>(step));
    if (step == 1)  // as clipping would
      for (const std::string& n : names) train::scale_gradient(store.at(n).owned_grad(), 0.5);
    opt.step(1e-2);
  }
  int64_t unrounded = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    unrounded += not_bf16(opt.adamw().master(i));
    // The copies are the masters rounded.
    ASSERT_TRUE(same_bits(store.at(names[i]).value(), compute_copy(opt.adamw().master(i), o))) << names[i];
  }
  ASSERT_GT(unrounded, 0) << "the masters must carry bits that bf16 copies lose, or this test proves nothing";
  for (const auto& [name, t] : opt.adamw().state())
    EXPECT_EQ(t.dtype(), name.rfind("exp_avg_sq.", 0) == 0 ? o.exp_avg_sq_dtype : o.exp_avg_dtype) << name;

  // The exported weights are the masters (and the frozen f32 original), stored as f32.
  const std::string ckpt = test::save_masters_checkpoint(dir, opt, names);
  model::Gemma4 back(cfg);
  model::load_hf_weights(back, io::SafetensorsReader::open(ckpt));
  EXPECT_TRUE(same_bits(back.params().at(frozen).value(), frozen_f32));

  // Resume into zeros: masters, copies (frozen one included), moments and step come back exactly.
  model::Gemma4 host2(cfg);
  model::ParamStore store2 = bf16_store(host2);
  train::ReplicatedAdamW opt2(store2, cfg, {}, nullptr, nullptr, names, o);
  test::OneRankCheckpoints resumed(dir / "ckpt", opt2);
  const nlohmann::json s2 = resumed.manager.load(ckpt);
  EXPECT_EQ(s2.at("step"), 3);
  EXPECT_EQ(resumed.position.data_index, 3);
  EXPECT_EQ(opt2.steps_taken(), opt.steps_taken());
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_TRUE(same_bits(opt2.adamw().master(i), opt.adamw().master(i))) << names[i];
  for (const std::string& n : store.order)
    EXPECT_TRUE(same_bits(store2.at(n).value(), store.at(n).value())) << n;
  EXPECT_TRUE(same_bits(opt2.export_weights().params().at(frozen).value(), frozen_f32));
  test::expect_same_moments(opt.adamw(), opt2.adamw());

  // And the next update is the same bit for bit.
  set_grads(store, 500);
  set_grads(store2, 500);
  opt.step(1e-2);
  opt2.step(1e-2);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(same_bits(opt2.adamw().master(i), opt.adamw().master(i))) << names[i];
    EXPECT_TRUE(same_bits(store2.at(names[i]).value(), store.at(names[i]).value())) << names[i];
  }
  fs::remove_all(dir);
}

TEST(CheckpointMasters, Bf16TrainingSavesAndRestoresTheFp32MastersExactly) {
  expect_exact_save_and_resume({0.9, 0.95, 1e-8, 0.1}, "ckpt_masters");
}

// NeMo-RL's Gemma 4 storage (FusedAdam: bf16 moments, masters as parameters plus remainders): the
// checkpoint holds the f32 masters and bf16 moments, and a resume restores both exactly.
TEST(CheckpointMasters, RemaindersAndBf16MomentsSaveAndRestoreExactly) {
  train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  o.exp_avg_dtype = o.exp_avg_sq_dtype = DType::BF16;
  o.store_param_remainders = true;
  expect_exact_save_and_resume(o, "ckpt_remainders");
}

// The sharded optimizer (one rank: every shard its own) keeps the masters of bf16 copies as
// remainders too, with bf16 moments and the per-element weight-decay mask of its flat shards: its
// masters, compute copies and moments equal the replicated optimizer's bit for bit over steps, and
// its exported masters are theirs.
TEST(CheckpointMasters, ShardedRemaindersTrainTheReplicatedMasters) {
  const io::ModelConfig cfg = tiny_moe();
  model::Gemma4 host(cfg);
  host.init_weights(13);
  model::ParamStore sharded_store = bf16_store(host), store = bf16_store(host);
  const std::vector<std::string> names = store.order;
  const std::set<std::string> no_decay = train::no_weight_decay(host.params(), cfg);
  ASSERT_FALSE(no_decay.empty());
  train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  o.exp_avg_dtype = o.exp_avg_sq_dtype = DType::BF16;
  o.store_param_remainders = true;
  parallel::SingleCommunicator one;
  parallel::DeviceMesh mesh(one, {});
  train::ShardedAdamW sharded(sharded_store, mesh, names, no_decay, o, &host.params());
  ASSERT_TRUE(sharded.shards().remainder().defined());
  EXPECT_FALSE(sharded.shards().master().defined());
  EXPECT_EQ(sharded.exp_avg().dtype(), DType::BF16);
  train::AdamW replicated(store, names, no_decay, o);
  replicated.load_parameters(host.params());
  for (int step = 0; step < 3; ++step) {
    sharded.gather_parameters();
    set_grads(sharded_store, 300 + 10 * static_cast<uint64_t>(step));
    set_grads(store, 300 + 10 * static_cast<uint64_t>(step));
    sharded.reduce_gradients();
    sharded.step(1e-2);
    replicated.step(1e-2);
  }
  sharded.gather_parameters();
  model::Gemma4 exported(cfg);
  sharded.copy_masters_to(exported.params());
  int64_t unrounded = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(same_bits(exported.params().at(names[i]).value(), replicated.master(i))) << names[i];
    EXPECT_TRUE(same_bits(sharded_store.at(names[i]).value(), store.at(names[i]).value())) << names[i];
    unrounded += not_bf16(replicated.master(i));
  }
  EXPECT_GT(unrounded, 0) << "the masters must carry bits the bf16 copies lose, or this test proves nothing";
}

TEST(CheckpointMasters, ParameterErrorsNameTheParameter) {
  const io::ModelConfig cfg = tiny_moe();
  model::Gemma4 host(cfg);
  model::ParamStore store = bf16_store(host);
  train::AdamW opt(store, store.order, {}, {});
  model::ParamStore partial;
  partial.add(store.order[0], store.kind(store.order[0]), host.params().at(store.order[0]).value().clone());
  std::string e = test::error_of([&] { opt.load_parameters(partial); });
  EXPECT_NE(e.find("has no parameter '" + store.order[1] + "'"), std::string::npos) << e;
  e = test::error_of([&] { opt.copy_masters_to(partial); });
  EXPECT_NE(e.find("has no parameter '" + store.order[1] + "'"), std::string::npos) << e;
  model::ParamStore wrong;
  for (const std::string& n : store.order) wrong.add(n, store.kind(n), store.at(n).value().clone());  // bf16, not f32
  e = test::error_of([&] { opt.load_parameters(wrong); });
  EXPECT_NE(e.find("must be an f32 or f64 CPU tensor"), std::string::npos) << e;
  e = test::error_of([&] { opt.copy_masters_to(wrong); });
  EXPECT_NE(e.find("the destination must be a CPU store of the master's dtype"), std::string::npos) << e;
}

}  // namespace
}  // namespace g4

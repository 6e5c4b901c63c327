// A GPU run with frozen weights (LoRA, train.freeze) keeps no f32 copy of them on the host: the
// optimizer's host model holds the trainable parameters alone, the frozen ones stream from the
// checkpoint tensor by tensor into their bf16 compute copies (model::load_hf_weights' visitor), and
// an export converts those copies for its own duration. As in checkpoint_masters_test.cpp the
// compute copies are a bf16 CPU parameter store driven with given gradients (the CPU model itself
// computes in f32 only); tests/gpu/lora_memory_test.cpp runs the same through `g4 train` on cuda.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "core/random.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/error_message.h"
#include "support/masters_checkpoint.h"
#include "support/g4_process.h"
#include "support/tiny_models.h"
#include "train/adamw.h"
#include "train/weights_checkpoint.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

using test::same_bits;

io::ModelConfig tiny_moe() { return test::tiny_moe_config(32, 2, {{"vocab_size", 64}}); }

model::LoraConfig lora() {
  model::LoraConfig l;
  l.rank = 2;
  l.alpha = 4;
  l.targets = {"q_proj", "v_proj", "experts.down_proj"};
  return l;
}

// A model's parameters as bf16 CPU compute copies (what the GPU model holds), zeros.
model::ParamStore zero_bf16_store(const model::Gemma4& m) {
  model::ParamStore s;
  for (const std::string& n : m.params().order) {
    s.add(n, m.params().kind(n), Tensor::zeros(m.params().at(n).value().shape(), DType::BF16));
    s.at(n).impl()->fp32_grad = true;
  }
  return s;
}

int64_t adapter_bytes(const model::Gemma4& m) {
  int64_t bytes = 0;
  for (const std::string& n : m.params().order)
    if (model::is_lora(m.params().kind(n))) bytes += static_cast<int64_t>(m.params().at(n).value().nbytes());
  return bytes;
}

int64_t buffer_bytes(const model::Gemma4& m) {
  int64_t bytes = 0;
  for (const auto& [n, b] : m.params().buffers) bytes += static_cast<int64_t>(b.value.nbytes());
  return bytes;
}

// The base as a checkpoint on disk (f32, so bf16 loses bits of it) and a LoRA model of it with
// nonzero B, whose adapter the same directory holds.
struct Fixture {
  fs::path dir;
  io::ModelConfig cfg = tiny_moe();
  model::Gemma4 full{cfg};
  std::vector<std::string> adapters;
  std::unique_ptr<model::Gemma4> loaded;  // the base as a whole f32 model loads it (with its buffers)
  int64_t buffers = 0;
  explicit Fixture(const std::string& name) : dir(test::scratch_dir(name)) {
    full.init_weights(7);
    full.enable_lora(lora());
    for (const std::string& n : full.params().order) {
      if (!model::is_lora(full.params().kind(n))) continue;
      adapters.push_back(n);
      full.params().at(n).mutable_value().copy_from(
          randn(full.params().at(n).value().shape(), 100 + adapters.size(), DType::F32, 0.1));
    }
    model::save_hf_checkpoint(full, (dir / "base").string());
    loaded = model::load_hf_model((dir / "base").string());
    buffers = buffer_bytes(*loaded);
  }
  ~Fixture() { fs::remove_all(dir); }
  // The host model a GPU run builds: the adapters alone allocated.
  std::unique_ptr<model::Gemma4> partial_host() const {
    auto host = std::make_unique<model::Gemma4>(cfg, model::ExpertRange{}, DType::F32, Device::CPU,
                                                [](const std::string&) { return false; });
    host->enable_lora(lora());
    return host;
  }
};

TEST(FrozenHost, TheFrozenBaseStreamsIntoItsCopiesAndTheHostKeepsOnlyTheAdapters) {
  Fixture fx("frozen_host_load");
  // The streamed load: the frozen weights go to the copies as they are read, and the fingerprint
  // of adapter-only checkpoints comes from samples of their f32 values.
  std::unique_ptr<model::Gemma4> host = fx.partial_host();
  model::ParamStore copies = zero_bf16_store(fx.full);
  std::map<std::string, train::FingerprintSample> samples;
  int visited = 0;
  model::load_checkpoint_weights(*host, (fx.dir / "base").string(), [&](const std::string& n, const Tensor& v) {
    ++visited;
    ASSERT_FALSE(host->params().at(n).value().defined()) << n;
    copies.at(n).mutable_value().copy_from(v.to(DType::BF16));
    samples.emplace(n, train::fingerprint_sample(v));
  });
  EXPECT_EQ(visited + static_cast<int>(fx.adapters.size()), static_cast<int>(fx.full.params().order.size()));
  EXPECT_EQ(train::lora_base_fingerprint(*host, samples), train::lora_base_fingerprint(*fx.loaded));

  const train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  train::ReplicatedAdamW opt(copies, fx.cfg, {}, std::move(host), nullptr, fx.adapters, o);
  // Every copy is the full model's value rounded (frozen ones from the stream, the adapters and the
  // buffers from the host), and the masters are the adapters' f32 values.
  for (const std::string& n : fx.full.params().order)
    EXPECT_TRUE(same_bits(copies.at(n).value(), fx.full.params().at(n).value().to(DType::BF16))) << n;
  EXPECT_EQ(copies.buffers.size(), fx.loaded->params().buffers.size());
  for (size_t i = 0; i < fx.adapters.size(); ++i)
    EXPECT_TRUE(same_bits(opt.adamw().master(i), fx.full.params().at(fx.adapters[i]).value())) << fx.adapters[i];
  // f32 bytes held beyond the copies: the adapters' values in the host model, their masters and
  // moments, and the buffers; none for the frozen base.
  const int64_t adapters = adapter_bytes(fx.full);
  std::printf("host model: %lld bytes (adapters %lld, buffers %lld; the whole model in f32: %lld)\n",
              static_cast<long long>(opt.host_bytes()), static_cast<long long>(adapters),
              static_cast<long long>(fx.buffers),
              static_cast<long long>(fx.full.params().numel() * 4 + fx.buffers));
  EXPECT_EQ(opt.host_bytes(), adapters + fx.buffers);
  int64_t moment_bytes = 0;
  for (const auto& [n, t] : opt.adamw().state()) moment_bytes += static_cast<int64_t>(t.nbytes());
  EXPECT_EQ(moment_bytes, 2 * adapters);
  for (size_t i = 0; i < fx.adapters.size(); ++i) EXPECT_EQ(opt.adamw().master(i).dtype(), DType::F32);

  // export_trained reads no frozen weight; export_weights converts the copies (bf16 rounding of
  // the f32 base) until release_exported.
  const std::string frozen = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_FALSE(opt.export_trained().params().at(frozen).value().defined());
  const model::Gemma4& w = opt.export_weights();
  EXPECT_TRUE(same_bits(w.params().at(frozen).value(),
                        fx.full.params().at(frozen).value().to(DType::BF16).to(DType::F32)));
  EXPECT_GT(opt.host_bytes(), fx.full.params().numel() * 4 - adapters);
  opt.release_exported();
  EXPECT_EQ(opt.host_bytes(), adapters + fx.buffers);
}

TEST(FrozenHost, CheckpointsOfAPartialHostResumeExactly) {
  Fixture fx("frozen_host_resume");
  const train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  auto start = [&](model::ParamStore& copies) {
    std::unique_ptr<model::Gemma4> host = fx.partial_host();
    model::load_checkpoint_weights(*host, (fx.dir / "base").string(), [&](const std::string& n, const Tensor& v) {
      copies.at(n).mutable_value().copy_from(v.to(DType::BF16));
    });
    return std::make_unique<train::ReplicatedAdamW>(copies, fx.cfg, model::ExpertRange{}, std::move(host), nullptr,
                                                    fx.adapters, o);
  };
  model::ParamStore copies = zero_bf16_store(fx.full);
  auto opt = start(copies);
  for (int step = 0; step < 2; ++step) {
    for (const std::string& n : fx.adapters) {
      copies.at(n).impl()->grad = randn(copies.at(n).value().shape(), 300 + step, DType::F32, 0.1);
      copies.at(n).impl()->grad_owned = true;
    }
    opt->step(1e-2);
  }
  // A checkpoint with the base (lora.save_base): the frozen weights as their copies hold them.
  test::OneRankCheckpoints ckpt(fx.dir / "ckpt", *opt);
  const std::string saved = ckpt.manager.save(2);
  EXPECT_EQ(opt->host_bytes(), adapter_bytes(fx.full) + fx.buffers) << "the export was not released";

  // Resumed into zeros: the base goes straight into the copies, the adapters into host and masters.
  model::ParamStore copies2 = zero_bf16_store(fx.full);
  auto opt2 = start(copies2);
  for (const std::string& n : copies2.order) copies2.at(n).mutable_value().copy_from(
      Tensor::zeros(copies2.at(n).value().shape(), DType::BF16));
  test::OneRankCheckpoints resumed(fx.dir / "ckpt", *opt2);
  resumed.manager.load(saved);
  for (const std::string& n : copies.order)
    EXPECT_TRUE(same_bits(copies2.at(n).value(), copies.at(n).value())) << n;
  for (size_t i = 0; i < fx.adapters.size(); ++i)
    EXPECT_TRUE(same_bits(opt2->adamw().master(i), opt->adamw().master(i))) << fx.adapters[i];
  EXPECT_EQ(opt2->host_bytes(), opt->host_bytes());
}

TEST(FrozenHost, AParameterWithoutStorageNeedsAVisitor) {
  Fixture fx("frozen_host_error");
  std::unique_ptr<model::Gemma4> host = fx.partial_host();
  EXPECT_NE(test::error_of([&] { model::load_checkpoint_weights(*host, (fx.dir / "base").string()); })
                .find("has no storage in the model and no visitor takes it"),
            std::string::npos);
}

}  // namespace
}  // namespace g4

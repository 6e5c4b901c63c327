// Shared by the CPU and GPU tests of bf16 training checkpoints (tests/train/checkpoint_masters_test.cpp,
// tests/gpu/train_test.cpp): bit comparisons, and checkpoints of an optimizer's fp32 masters
// (written with the check that they hold exactly them).
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/gemma4.h"
#include "model/state_dict_adapter.h"
#include "parallel/single_communicator.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/weights_checkpoint.h"

namespace g4::test {

// Same dtype, shape and bytes (either may live on the GPU).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::CPU), y = b.to(Device::CPU);
  return x.dtype() == y.dtype() && x.shape() == y.shape() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

// How many elements of an f32 tensor bf16 cannot hold (they differ from their rounding).
inline int64_t not_bf16(const Tensor& f32) {
  const Tensor x = f32.to(Device::CPU);
  const Tensor r = x.to(DType::BF16).to(DType::F32);
  int64_t n = 0;
  for (int64_t i = 0; i < x.numel(); ++i) n += x.data<float>()[i] != r.data<float>()[i];
  return n;
}

// A data position as an objective keeps one ("data_index" in trainer_state.json).
struct DataPosition final : train::CheckpointPart {
  int64_t data_index = 0;
  void save(const std::filesystem::path&, nlohmann::json& state) override { state["data_index"] = data_index; }
  void load(const std::filesystem::path&, const nlohmann::json& state) override {
    data_index = state.at("data_index").get<int64_t>();
  }
};

// One rank's checkpoints under `dir` of an optimizer's weights and state and a data position, as
// g4 train writes them.
struct OneRankCheckpoints {
  parallel::SingleCommunicator world;
  parallel::DeviceMesh mesh{world, parallel::MeshShape{}};
  train::WeightsCheckpoint weights;
  DataPosition position;
  train::CheckpointManager manager;
  OneRankCheckpoints(const std::filesystem::path& dir, train::Optimizer& opt)
      : weights(opt, mesh, ""), manager(dir.string(), 0, world) {
    manager.add(weights);
    manager.add(opt);
    manager.add(position);
  }
};

// Writes checkpoint step 3 (data position 3) of opt under dir/ckpt, and checks that its weights
// are exactly the masters of `names`, stored as f32. Returns the checkpoint directory.
inline std::string save_masters_checkpoint(const std::filesystem::path& dir, train::ReplicatedAdamW& opt,
                                           const std::vector<std::string>& names) {
  OneRankCheckpoints c(dir / "ckpt", opt);
  c.position.data_index = 3;
  const std::string ckpt = c.manager.save(3);
  const io::SafetensorsReader reader = io::SafetensorsReader::open(ckpt);
  for (const std::string& n : reader.names()) EXPECT_EQ(reader.get(n).dtype(), DType::F32) << n;
  model::Gemma4 back(opt.export_weights().config());
  model::load_hf_weights(back, reader);
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_TRUE(same_bits(back.params().at(names[i]).value(), opt.adamw().master(i))) << names[i];
  return ckpt;
}

// The two optimizers' moments are equal bit for bit.
inline void expect_same_moments(const train::AdamW& a, const train::AdamW& b) {
  const auto m1 = a.state(), m2 = b.state();
  ASSERT_EQ(m1.size(), m2.size());
  for (size_t i = 0; i < m1.size(); ++i) EXPECT_TRUE(same_bits(m1[i].second, m2[i].second)) << m1[i].first;
}

}  // namespace g4::test

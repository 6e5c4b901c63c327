// Helpers for the expert- and data-parallel tests: the tiny MoE fixture, a packed batch, and
// comparisons with a relative tolerance.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "support/error_message.h"
#include "core/error.h"
#include "core/tensor.h"
#include "model/gemma4.h"
#include "model/state_dict_adapter.h"
#include "parallel/communicator.h"
#include "parallel/device_mesh.h"
#include "support/test_paths.h"

namespace g4::parallel::testing {

// 8 experts, top-2, 6 layers, hidden 64, vocabulary 256 (tests/data/hf-gemma4/tiny-moe).
inline std::string tiny_moe_dir() {
  return test::data_dir() + "/hf-gemma4/tiny-moe";
}

// The model in dir as rank ep_rank of an ep_size-rank expert-parallel group holds it.
inline std::unique_ptr<model::Gemma4> load_ep_rank(const std::string& dir, int ep_rank, int ep_size,
                                                   DType dtype = DType::F32) {
  return model::load_hf_model(dir, expert_range(model::load_hf_config(dir), ep_rank, ep_size), dtype);
}

// A packed training batch [B, S]: documents of varied lengths, position ids restarting at each,
// and labels -100 at each document's first token (never the target of the previous document)
// and at a few other places.
struct Batch {
  Tensor ids, positions, labels;
  int64_t rows() const { return ids.size(0); }
  // Rows [begin, begin + count), as their own tensors.
  Batch slice(int64_t begin, int64_t count) const {
    return {ids.slice0(begin, count).clone(), positions.slice0(begin, count).clone(),
            labels.slice0(begin, count).clone()};
  }
};

// unlabelled_from: rows from this one on have no counted token at all (every label -100).
inline Batch packed_batch(int64_t unlabelled_from = 4) {
  constexpr int64_t B = 4, S = 32;
  const std::vector<std::vector<int64_t>> docs = {{10, 22}, {32}, {5, 15, 12}, {20, 12}};
  Batch b{Tensor::empty({B, S}, DType::I64), Tensor::empty({B, S}, DType::I64), Tensor::empty({B, S}, DType::I64)};
  for (int64_t r = 0; r < B; ++r) {
    int64_t s = 0;
    for (int64_t len : docs[static_cast<size_t>(r)]) {
      for (int64_t i = 0; i < len; ++i, ++s) {
        const int64_t at = r * S + s;
        const int64_t token = 1 + (37 * at + 11 * r + 7 * (i * i)) % 255;
        b.ids.data<int64_t>()[at] = token;
        b.positions.data<int64_t>()[at] = i;
        const bool ignored = i == 0 || at % 9 == 4 || r >= unlabelled_from;
        b.labels.data<int64_t>()[at] = ignored ? -100 : token;
      }
    }
  }
  return b;
}

// |got - want| <= rel * (|want| + 1e-3 * max|want|) element by element: relative, with a floor
// well below the tensor's scale for entries near zero (which sums of cancelling terms give).
// Names the first mismatch.
inline ::testing::AssertionResult close_to(const Tensor& got, const Tensor& want, double rel) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "got " << got.describe() << ", want " << want.describe();
  double scale = 0;
  for (int64_t i = 0; i < want.numel(); ++i) scale = std::max(scale, std::abs(element_as_double(want, i)));
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = element_as_double(got, i), w = element_as_double(want, i);
    if (!(std::abs(g - w) <= rel * (std::abs(w) + 1e-3 * scale)))
      return ::testing::AssertionFailure() << got.describe() << " element " << i << ": got " << g << ", want " << w
                                           << " (tensor scale " << scale << ")";
  }
  return ::testing::AssertionSuccess();
}

using ::g4::test::error_of;

// After backward from this rank's loss share and reduce_gradients: the global loss (the sum of the
// ranks' shares) and every gradient (this rank's slice of expert tensors) equal one rank's run.
inline void expect_matches_single_rank(Communicator& world, double my_share, const model::Gemma4& m, double want_loss,
                                       const std::map<std::string, Tensor>& want_grads, double loss_rel,
                                       double grad_rel) {
  Tensor loss = Tensor::scalar(my_share, DType::F64);
  world.all_reduce(loss);
  EXPECT_NEAR(loss.item(), want_loss, loss_rel * want_loss);
  const model::ExpertRange held = m.experts();
  for (const std::string& name : m.params().order) {
    const Tensor& w = want_grads.at(name);
    const Tensor slice = model::split_by_expert(m.params().kind(name)) ? w.slice0(held.begin, held.count) : w;
    EXPECT_TRUE(close_to(m.params().at(name).grad(), slice, grad_rel)) << name;
  }
}

}  // namespace g4::parallel::testing

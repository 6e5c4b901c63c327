// Helpers for the expert- and data-parallel tests: the tiny MoE fixture, a packed batch, and
// comparisons with a relative tolerance.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "support/error_message.h"
#include "autograd/functions.h"
#include "core/error.h"
#include "core/random.h"
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

// --- Uneven routing on several ranks, at the level of one MoE layer (expert_parallel_test.cpp, and
// the GPU ranks' test in tests/gpu) ---

inline constexpr int64_t kH = 4, kI = 3, kK = 2;

// Rank r's tokens, routing and loss projection (in `dtype`) in a G-rank group with 2 experts per rank:
//   rank 0 routes only to its own experts (it sends nothing to any peer);
//   no token routes to rank 1's experts (rank 1 receives nothing, though it sends);
//   with more than 2 ranks, rank 2 has no tokens at all.
struct RankTokens {
  Tensor x, weights, indices, projection;
};

inline RankTokens rank_tokens(int r, int G, DType dtype = DType::F64) {
  const int64_t E = 2 * G;
  const int64_t T = (G > 2 && r == 2) ? 0 : 3 + 2 * r;
  std::vector<int32_t> allowed;
  for (int32_t e = 0; e < E; ++e)
    if (r == 0 ? e < 2 : (e != 2 && e != 3)) allowed.push_back(e);
  Tensor indices = Tensor::empty({T, kK}, DType::I32);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < kK; ++k)
      indices.data<int32_t>()[t * kK + k] = allowed[static_cast<size_t>(t + r + k) % allowed.size()];
  const auto seed = static_cast<uint64_t>(r);
  return {randn({T, kH}, 100 + seed, dtype), rand_uniform({T, kK}, 200 + seed, 0.1, 1.0, dtype), indices,
          randn({T, kH}, 300 + seed, dtype)};
}

// The local experts: what each rank's result must equal.
inline ag::Var local_moe(const ag::Var& x, const ag::Var& weights, const ops::MoePlan& plan, const ag::Var& gate_up,
                         const ag::Var& down) {
  const ag::Var act = ag::gelu_gate_fused(ag::grouped_matmul(ag::moe_permute(x, plan), gate_up, plan.offsets));
  return ag::moe_unpermute(ag::grouped_matmul(act, down, plan.offsets), weights, plan);
}

}  // namespace g4::parallel::testing

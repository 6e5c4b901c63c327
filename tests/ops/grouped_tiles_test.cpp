// The tiling of the GPU grouped GEMM kernels (ops/cuda/grouped_tiles.h), checked on the CPU: for
// random routings with empty experts, every output element of every expert is computed by exactly
// one tile, no tile reaches past its expert's rows, and the K slices cover the reduction.
#include "ops/cuda/grouped_tiles.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace g4 {
namespace {

namespace grouped = ops::cuda::grouped;

// The kernel's prefix of tile counts: start[e] is expert e's first tile, start[E] the total.
std::vector<int> tile_starts(grouped::Kind kind, const std::vector<int>& row_off, const grouped::Sizes& s) {
  const int experts = static_cast<int>(row_off.size()) - 1;
  std::vector<int> start(row_off.size(), 0);
  for (int e = 0; e < experts; ++e) start[e + 1] = start[e] + grouped::tiles_of(kind, row_off[e + 1] - row_off[e], s);
  return start;
}

void check_cover(grouped::Kind kind, const std::vector<int>& counts, const grouped::Sizes& s, const std::string& what) {
  std::vector<int> row_off{0};
  for (const int c : counts) row_off.push_back(row_off.back() + c);
  const int experts = static_cast<int>(counts.size()), rows = row_off.back();
  const std::vector<int> start = tile_starts(kind, row_off, s);
  // Output elements: [rows, n] for the row products, [experts, m, n] for the weight gradient.
  const int64_t out_rows = kind == grouped::kWeightGrad ? int64_t{experts} * s.m : rows;
  std::vector<int> hits(static_cast<size_t>(out_rows * s.n), 0);
  for (int t = 0; t < start[experts]; ++t) {
    const grouped::Tile tl = grouped::locate(kind, t, start.data(), row_off.data(), experts, s);
    ASSERT_GE(tl.expert, 0) << what;
    ASSERT_LT(tl.expert, experts) << what;
    ASSERT_EQ(tl.row0, row_off[tl.expert]) << what;
    ASSERT_EQ(tl.rows, counts[tl.expert]) << what;
    ASSERT_EQ(tl.m0 % grouped::kBM, 0) << what;
    ASSERT_EQ(tl.n0 % grouped::kBN, 0) << what;
    ASSERT_LT(tl.n0, s.n) << what << ": tile " << t << " starts past the columns";
    const int reduction = kind == grouped::kWeightGrad ? tl.rows : s.k;
    ASSERT_GE(tl.k_steps * grouped::kBK, reduction) << what;
    ASSERT_LT((tl.k_steps - 1) * grouped::kBK, reduction > 0 ? reduction : 1) << what << ": an empty K slice";
    const int m_limit = kind == grouped::kWeightGrad ? s.m : tl.rows;
    ASSERT_LT(tl.m0, m_limit) << what << ": tile " << t << " starts past its expert's rows";
    for (int r = tl.m0; r < tl.m0 + grouped::kBM && r < m_limit; ++r)
      for (int c = tl.n0; c < tl.n0 + grouped::kBN && c < s.n; ++c) {
        const int64_t row = kind == grouped::kWeightGrad ? int64_t{tl.expert} * s.m + r : int64_t{tl.row0} + r;
        ++hits[static_cast<size_t>(row * s.n + c)];
      }
  }
  for (size_t i = 0; i < hits.size(); ++i)
    ASSERT_EQ(hits[i], 1) << what << ": output element " << i << " (row " << i / static_cast<size_t>(s.n)
                          << ") computed " << hits[i] << " times";
}

TEST(GroupedTiles, EveryOutputElementExactlyOnce) {
  std::mt19937 rng(7);
  for (const int experts : {1, 3, 40, 128}) {
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<int> counts;
      for (int e = 0; e < experts; ++e) {
        const int kind_of_count = static_cast<int>(rng() % 4);
        counts.push_back(kind_of_count == 0 ? 0 : static_cast<int>(rng() % (kind_of_count == 3 ? 400 : 130)));
      }
      const int kd = 8 * static_cast<int>(1 + rng() % 40), nd = 8 * static_cast<int>(1 + rng() % 40);
      const std::string tag = std::to_string(experts) + " experts, Kd " + std::to_string(kd) + ", Nd " + std::to_string(nd);
      check_cover(grouped::kForward, counts, {0, nd, kd}, "forward, " + tag);
      check_cover(grouped::kInputGrad, counts, {0, kd, nd}, "input grad, " + tag);
      check_cover(grouped::kWeightGrad, counts, {kd, nd, 0}, "weight grad, " + tag);
    }
  }
}

TEST(GroupedTiles, ExpertsWithoutRowsHaveRowTilesOnlyForTheWeightGradient) {
  const std::vector<int> row_off{0, 0, 300, 300};
  const grouped::Sizes rows_sizes{0, 200, 64}, dw_sizes{136, 200, 0};
  const std::vector<int> fwd = tile_starts(grouped::kForward, row_off, rows_sizes);
  EXPECT_EQ(fwd, (std::vector<int>{0, 0, 6, 6}));  // 3 row tiles x 2 column tiles, expert 1 only
  const std::vector<int> dw = tile_starts(grouped::kWeightGrad, row_off, dw_sizes);
  EXPECT_EQ(dw, (std::vector<int>{0, 4, 8, 12}));  // 2 x 2 for every expert: beta·dw where no rows
  const grouped::Tile empty = grouped::locate(grouped::kWeightGrad, 0, dw.data(), row_off.data(), 3, dw_sizes);
  EXPECT_EQ(empty.expert, 0);
  EXPECT_EQ(empty.k_steps, 0);
  const grouped::Tile last = grouped::locate(grouped::kForward, 5, fwd.data(), row_off.data(), 3, rows_sizes);
  EXPECT_EQ(last.expert, 1);
  EXPECT_EQ(last.m0, 256);
  EXPECT_EQ(last.n0, 128);
}

}  // namespace
}  // namespace g4

// Paged attention against the dense attention op: each sequence's keys are scattered over
// shuffled pages of a pool, and the paged result must equal attention over the same keys laid
// out contiguously (same mask: causal, window, document start, image blocks).
#include "ops/paged_attention.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/random.h"
#include "gradcheck.h"
#include "ops/attention.h"

namespace g4 {
namespace {

using test::expect_close;
using test::expect_error;

struct Seq {
  int64_t q_len, kv_len, kv_start;
  // Image blocks [begin, end) of key positions: their queries also see the block's later keys
  // (PagedLayout::q_last; the dense op's q_block / k_block).
  std::vector<std::pair<int64_t, int64_t>> blocks{};
};

struct Case {
  const char* name;
  int64_t heads, kv_heads, d, dv, page, window;
  std::vector<Seq> seqs;
};

Tensor i32_tensor(const std::vector<int64_t>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) t.data<int32_t>()[i] = static_cast<int32_t>(v[i]);
  return t;
}

void check_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(c.name);
  const int64_t n = static_cast<int64_t>(c.seqs.size());
  int64_t max_pages = 0, total_pages = 0, rows = 0;
  for (const Seq& s : c.seqs) {
    max_pages = std::max(max_pages, (s.kv_len + c.page - 1) / c.page);
    total_pages += (s.kv_len + c.page - 1) / c.page;
    rows += s.q_len;
  }
  // Physical pages in a shuffled order, two spare pages that nobody owns.
  std::vector<int64_t> order(static_cast<size_t>(total_pages + 2));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  Tensor k_pages = randn({total_pages + 2, c.page, c.kv_heads, c.d}, seed + 1);
  Tensor v_pages = randn({total_pages + 2, c.page, c.kv_heads, c.dv}, seed + 2);
  const Tensor q = randn({rows, c.heads, c.d}, seed + 3);

  std::vector<int64_t> cu_q{0}, kv_len, kv_start, table(static_cast<size_t>(n * max_pages), -1), q_last;
  std::vector<std::vector<int64_t>> block_of;  // per sequence, each key position's block (-1: none)
  bool blocks = false;
  size_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Seq& s = c.seqs[static_cast<size_t>(i)];
    block_of.emplace_back(static_cast<size_t>(s.kv_len), -1);
    for (size_t b = 0; b < s.blocks.size(); ++b)
      for (int64_t j = s.blocks[b].first; j < s.blocks[b].second; ++j) block_of.back()[static_cast<size_t>(j)] = int64_t(b);
    for (int64_t pos = s.kv_len - s.q_len; pos < s.kv_len; ++pos) {
      const int64_t b = block_of.back()[static_cast<size_t>(pos)];
      q_last.push_back(b < 0 ? pos : s.blocks[static_cast<size_t>(b)].second - 1);
    }
    blocks |= !s.blocks.empty();
    cu_q.push_back(cu_q.back() + s.q_len);
    kv_len.push_back(s.kv_len);
    kv_start.push_back(s.kv_start);
    for (int64_t p = 0; p * c.page < s.kv_len; ++p) table[static_cast<size_t>(i * max_pages + p)] = order[next++];
  }
  ops::PagedLayout layout{i32_tensor(cu_q, {n + 1}), i32_tensor(kv_len, {n}), i32_tensor(table, {n, max_pages}),
                          i32_tensor(kv_start, {n}), c.window,
                          blocks ? i32_tensor(q_last, {rows}) : Tensor()};
  const double scale = 0.7;
  const Tensor out = ops::paged_attention(q, k_pages, v_pages, layout, scale);
  ASSERT_EQ(out.shape(), (Shape{rows, c.heads, c.dv}));

  for (int64_t i = 0; i < n; ++i) {
    const Seq& s = c.seqs[static_cast<size_t>(i)];
    if (s.q_len == 0) continue;
    // The sequence's keys gathered from its pages into [1, kv_len, nKV, d].
    Tensor k = Tensor::empty({1, s.kv_len, c.kv_heads, c.d}, DType::F32), v = Tensor::empty({1, s.kv_len, c.kv_heads, c.dv}, DType::F32);
    for (int64_t j = 0; j < s.kv_len; ++j) {
      const int64_t phys = table[static_cast<size_t>(i * max_pages + j / c.page)];
      k.slice0(0, 1).reshape({s.kv_len, c.kv_heads * c.d}).slice0(j, 1).copy_from(
          k_pages.reshape({-1, c.kv_heads * c.d}).slice0(phys * c.page + j % c.page, 1));
      v.slice0(0, 1).reshape({s.kv_len, c.kv_heads * c.dv}).slice0(j, 1).copy_from(
          v_pages.reshape({-1, c.kv_heads * c.dv}).slice0(phys * c.page + j % c.page, 1));
    }
    ops::AttentionMask mask;
    mask.window = c.window;
    mask.q_start = s.kv_len - s.q_len;
    // A document start: keys before kv_start belong to another document.
    std::vector<int64_t> q_doc(static_cast<size_t>(s.q_len), 1), k_doc(static_cast<size_t>(s.kv_len), 1);
    for (int64_t j = 0; j < s.kv_start; ++j) k_doc[static_cast<size_t>(j)] = 0;
    mask.q_doc = i32_tensor(q_doc, {1, s.q_len});
    mask.k_doc = i32_tensor(k_doc, {1, s.kv_len});
    if (!s.blocks.empty()) {
      const std::vector<int64_t>& b = block_of[static_cast<size_t>(i)];
      mask.q_block = i32_tensor(std::vector<int64_t>(b.end() - s.q_len, b.end()), {1, s.q_len});
      mask.k_block = i32_tensor(b, {1, s.kv_len});
    }
    const Tensor qi = q.slice0(cu_q[static_cast<size_t>(i)], s.q_len).reshape({1, s.q_len, c.heads, c.d});
    const Tensor want = ops::attention(qi, k, v, mask, scale);
    expect_close(out.slice0(cu_q[static_cast<size_t>(i)], s.q_len).reshape(want.shape()), want, 1e-5,
                 std::string("sequence ") + std::to_string(i));
  }
}

TEST(PagedAttention, EqualsDenseAttentionOverTheSameKeys) {
  const std::vector<Case> cases = {
      {"decode rows, GQA", 4, 2, 16, 16, 4, 0, {{1, 9, 0}, {1, 1, 0}, {1, 16, 0}}},
      {"prefill and decode mixed", 4, 1, 8, 8, 4, 0, {{7, 7, 0}, {1, 13, 0}, {3, 10, 0}}},
      {"sliding window", 2, 2, 8, 8, 4, 5, {{6, 6, 0}, {1, 17, 0}, {2, 11, 0}}},
      {"document start and a different value dim", 4, 2, 8, 12, 3, 0, {{2, 11, 4}, {1, 5, 5}}},
      {"a sequence with no query row", 2, 1, 8, 8, 4, 0, {{2, 6, 0}, {0, 9, 0}, {1, 3, 0}}},
      // A block longer than the window: its last queries no longer see its first keys, its first
      // queries see all of it; a chunk that starts inside a block; a decode row after one.
      {"image blocks under a sliding window", 4, 2, 8, 8, 4, 3,
       {{8, 12, 0, {{5, 10}}}, {3, 10, 0, {{2, 4}, {6, 9}}}, {1, 13, 0, {{2, 6}}}}},
      {"image blocks, no window", 2, 1, 8, 8, 3, 0, {{9, 9, 0, {{1, 4}, {4, 7}}}, {2, 5, 0, {{3, 5}}}}},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) check_case(c, seed += 10);
}

TEST(PagedAttention, WritesKeysAndValuesToTheirSlots) {
  Tensor k_pages = Tensor::zeros({3, 2, 1, 4}, DType::F32), v_pages = Tensor::zeros({3, 2, 1, 2}, DType::F32);
  const Tensor k = randn({3, 1, 4}, 7), v = randn({3, 1, 2}, 8);
  Tensor slots = Tensor::empty({3}, DType::I64);
  slots.data<int64_t>()[0] = 5;
  slots.data<int64_t>()[1] = -1;  // not kept
  slots.data<int64_t>()[2] = 0;
  ops::write_kv_pages(k, v, k_pages, v_pages, slots);
  expect_close(k_pages.reshape({6, 4}).slice0(5, 1), k.reshape({3, 4}).slice0(0, 1), 0);
  expect_close(v_pages.reshape({6, 2}).slice0(0, 1), v.reshape({3, 2}).slice0(2, 1), 0);
  EXPECT_EQ(test::max_abs(k_pages.reshape({6, 4}).slice0(1, 4)), 0.0);
  slots.data<int64_t>()[1] = 6;
  expect_error([&] { ops::write_kv_pages(k, v, k_pages, v_pages, slots); }, {"slot 6 of a pool of 6 rows"});
}

TEST(PagedAttention, RefusesAVisibleKeyOnAMissingPage) {
  const Tensor q = randn({1, 2, 8}, 1);
  const Tensor k_pages = randn({2, 4, 1, 8}, 2), v_pages = randn({2, 4, 1, 8}, 3);
  ops::PagedLayout layout{i32_tensor({0, 1}, {2}), i32_tensor({6}, {1}), i32_tensor({-1, 1}, {1, 2}), Tensor(), 0,
                          Tensor()};
  expect_error([&] { ops::paged_attention(q, k_pages, v_pages, layout, 1.0); }, {"page slot 0, which holds page -1"});
  layout.window = 2;  // keys 4 and 5 only: page slot 0 is out of the window
  EXPECT_NO_THROW(ops::paged_attention(q, k_pages, v_pages, layout, 1.0));
  layout.q_last = i32_tensor({6}, {1});  // past the keys held
  expect_error([&] { ops::paged_attention(q, k_pages, v_pages, layout, 1.0); }, {"has q_last 6 (must be in [5, kv_len 6))"});
}

}  // namespace
}  // namespace g4

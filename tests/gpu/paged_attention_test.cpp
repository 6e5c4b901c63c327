// The CUDA paged attention and KV page writes against the CPU reference (ops/cpu/paged_attention.cpp)
// on fresh bf16-exact random inputs: decode steps (one row per sequence, the split-key path when
// sequences are few), prefills and prefill continuations, mixes of both, GQA groups 1 to 16, head
// dims 16 to 512, sliding windows with the out-of-window pages set to -1, document starts, image
// blocks whose queries see the block's later keys (PagedLayout::q_last), shuffled pages and
// contexts of a few thousand keys.
//
// Tolerance (max |error| <= atol + rtol * max |reference|, as for the flash attention): atol 2e-3,
// rtol 1e-2. The reference computes in fp32 from the same bf16-exact numbers; the GPU rounds the
// softmax weights P to bf16 before P·V (relative 2^-9 per weight, so at most 2^-9 of max |v| and in
// practice far less, as the errors of many weights average out) and stores the output in bf16
// (2^-9 relative). Split results are merged in fp32 and rounded once.
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "ops/device_checks.h"
#include "ops/paged_attention.h"

namespace g4 {
namespace {

struct Seq {
  int64_t q_len, kv_len, kv_start;
  std::vector<std::pair<int64_t, int64_t>> blocks{};  // image blocks [begin, end) of key positions
};

struct Case {
  std::string name;
  int64_t heads, kv_heads, d, dv, page, window;
  std::vector<Seq> seqs;
  bool same_kv = false;             // one pool serves as k_pages and v_pages (K=V layers)
  DType index_dtype = DType::I32;   // of the layout tensors
};

// Inputs of one case on the CPU (f32, bf16-exact) and the layout as host vectors.
struct Inputs {
  Tensor q, k_pages, v_pages;
  std::vector<int64_t> cu_q, kv_len, kv_start, table;
  std::vector<int64_t> q_last;  // per query row; empty when no sequence has a block
  int64_t max_pages = 0;
};

// The first index error the GPU recorded is raised by check_device_index_errors with `needle` in it.
void expect_reported(const std::string& needle) {
  try {
    ops::check_device_index_errors();
    ADD_FAILURE() << "expected an error with: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

Tensor index_tensor(const std::vector<int64_t>& v, const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::I32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(v[i]);
    } else {
      t.data<int64_t>()[i] = v[i];
    }
  }
  return t;
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  int64_t total_pages = 0, rows = 0;
  for (const Seq& s : c.seqs) {
    in.max_pages = std::max(in.max_pages, (s.kv_len + c.page - 1) / c.page + 1);  // one unused slot
    total_pages += (s.kv_len + c.page - 1) / c.page;
    rows += s.q_len;
  }
  // Physical pages in a shuffled order, with spare pages that nobody owns.
  std::vector<int64_t> order(static_cast<size_t>(total_pages + 3));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  const int64_t pool = total_pages + 3;
  in.k_pages = test::randn_bf16_exact({pool, c.page, c.kv_heads, c.d}, seed + 1);
  in.v_pages = c.same_kv ? in.k_pages : test::randn_bf16_exact({pool, c.page, c.kv_heads, c.dv}, seed + 2);
  in.q = test::randn_bf16_exact({rows, c.heads, c.d}, seed + 3);
  in.cu_q = {0};
  in.table.assign(static_cast<size_t>(static_cast<int64_t>(c.seqs.size()) * in.max_pages), -1);
  size_t next = 0;
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const Seq& s = c.seqs[i];
    in.cu_q.push_back(in.cu_q.back() + s.q_len);
    in.kv_len.push_back(s.kv_len);
    in.kv_start.push_back(s.kv_start);
    for (int64_t pos = s.kv_len - s.q_len; pos < s.kv_len; ++pos) {
      int64_t last = pos;
      for (const auto& [begin, end] : s.blocks)
        if (begin <= pos && pos < end) last = end - 1;
      in.q_last.push_back(last);
    }
    // Pages wholly before the first key any query row sees stay -1: the kernels must not read them.
    const int64_t first_pos = s.kv_len - s.q_len;
    const int64_t first_seen = std::max(s.kv_start, c.window > 0 ? first_pos - c.window + 1 : int64_t{0});
    for (int64_t p = 0; p * c.page < s.kv_len; ++p) {
      const int64_t phys = order[next++];
      if ((p + 1) * c.page > first_seen) in.table[i * static_cast<size_t>(in.max_pages) + static_cast<size_t>(p)] = phys;
    }
  }
  bool blocks = false;
  for (const Seq& s : c.seqs) blocks |= !s.blocks.empty();
  if (!blocks) in.q_last.clear();
  return in;
}

ops::PagedLayout layout_of(const Inputs& in, const Case& c, Device device) {
  const int64_t n = static_cast<int64_t>(c.seqs.size());
  return ops::PagedLayout{index_tensor(in.cu_q, {n + 1}, c.index_dtype).to(device),
                          index_tensor(in.kv_len, {n}, c.index_dtype).to(device),
                          index_tensor(in.table, {n, in.max_pages}, c.index_dtype).to(device),
                          index_tensor(in.kv_start, {n}, c.index_dtype).to(device), c.window,
                          in.q_last.empty() ? Tensor()
                                            : index_tensor(in.q_last, {static_cast<int64_t>(in.q_last.size())},
                                                           c.index_dtype).to(device)};
}

// GPU result (as f32 on the CPU) for the case's inputs; k_gpu is reused as v when same_kv.
Tensor run_gpu(const Inputs& in, const Case& c, double scale) {
  const Tensor k = test::gpu_bf16(in.k_pages);
  const Tensor v = c.same_kv ? k : test::gpu_bf16(in.v_pages);
  return test::host_f32(ops::paged_attention(test::gpu_bf16(in.q), k, v, layout_of(in, c, Device::CUDA), scale));
}

void check_case(const Case& c, uint64_t seed) {
  int64_t rows = 0, keys = 0;
  for (const Seq& s : c.seqs) rows += s.q_len, keys += s.kv_len;
  std::printf("[%s] N=%zu rows=%lld keys=%lld nH=%lld nKV=%lld d=%lld dv=%lld page=%lld window=%lld\n",
              c.name.c_str(), c.seqs.size(), static_cast<long long>(rows), static_cast<long long>(keys),
              static_cast<long long>(c.heads), static_cast<long long>(c.kv_heads), static_cast<long long>(c.d),
              static_cast<long long>(c.dv), static_cast<long long>(c.page), static_cast<long long>(c.window));
  const Inputs in = make_inputs(c, seed);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  const Tensor ref = ops::paged_attention(in.q, in.k_pages, in.v_pages, layout_of(in, c, Device::CPU), scale);
  const Tensor got = run_gpu(in, c, scale);
  test::expect_close_scaled(got, ref, 2e-3, 1e-2, c.name);
}

std::vector<Seq> decode_batch(const std::vector<int64_t>& contexts) {
  std::vector<Seq> s;
  for (int64_t n : contexts) s.push_back({1, n, 0});
  return s;
}

TEST(PagedAttentionGpu, DecodeMatchesTheCpuReference) {
  G4_REQUIRE_GPU();
  const std::vector<Case> cases = {
      // Gemma 4 sliding layers: d 256, 16 heads on 8 kv heads; few sequences, so the keys are split.
      {"decode d256 group2", 16, 8, 256, 256, 16, 0, decode_batch({1, 17, 300, 2048, 4097})},
      {"decode d256 group2 window", 16, 8, 256, 256, 16, 1024, decode_batch({5, 1023, 1025, 3000})},
      // Gemma 4 full layers: d 512 on 2 kv heads.
      {"decode d512 group8", 16, 2, 512, 512, 16, 0, decode_batch({3, 64, 777, 5000})},
      {"decode d512 group8 one pool for K and V", 16, 2, 512, 512, 16, 0, decode_batch({129, 4000}), true},
      {"decode d512 group8 one pool, 40 sequences", 16, 2, 512, 512, 16, 0,
       decode_batch({1, 2, 63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257, 300, 500, 511, 512, 513, 700, 900,
                     1000, 1023, 1024, 1025, 1200, 1500, 1700, 2000, 2047, 2048, 2049, 2300, 2600, 3000, 3100, 3333,
                     3500, 3900, 4096, 4500}),
       true},
      {"decode d512 group16 one pool, window", 32, 2, 512, 512, 16, 700, decode_batch({5, 699, 701, 2500}), true},
      {"decode d512 group16", 32, 2, 512, 512, 32, 0, decode_batch({2500})},
      {"decode d512 group4, one sequence", 16, 4, 512, 512, 16, 0, decode_batch({6000})},
      // Many sequences: one split per sequence and kv head.
      {"decode d256 batch 96", 16, 8, 256, 256, 16, 0,
       decode_batch(std::vector<int64_t>(96, 700))},
      {"decode d64 group4 window and kv_start", 8, 2, 64, 64, 8, 100,
       {{1, 50, 10}, {1, 400, 0}, {1, 400, 350}, {1, 2000, 1990}, {1, 9, 9}}},
      {"decode d16 group1, small pages", 2, 2, 16, 16, 3, 0, decode_batch({1, 2, 3, 40, 1500})},
      {"decode i64 layout, dv != d", 8, 4, 24, 40, 16, 0, decode_batch({7, 1200}), false, DType::I64},
  };
  uint64_t seed = 1000;
  for (const Case& c : cases) check_case(c, seed += 10);
}

TEST(PagedAttentionGpu, PrefillAndMixedStepsMatchTheCpuReference) {
  G4_REQUIRE_GPU();
  const std::vector<Case> cases = {
      // Whole prompts, a continuation after a shared prefix, decode rows and a sequence with no row.
      {"mixed d16 group1 page3", 4, 4, 16, 16, 3, 0, {{7, 7, 0}, {1, 13, 0}, {3, 10, 0}, {0, 9, 0}, {40, 90, 0}}},
      {"prefill d256 group2 window", 16, 8, 256, 256, 16, 512, {{700, 700, 0}, {300, 1500, 0}, {1, 2000, 0}}},
      {"prefill d512 group8", 16, 2, 512, 512, 16, 0, {{333, 333, 0}, {64, 2048, 0}, {1, 100, 0}}},
      // Few rows over long contexts: 64-row tiles with split keys.
      {"continuation d512 group8 split", 16, 2, 512, 512, 16, 0, {{8, 3000, 0}, {8, 2100, 0}, {8, 4000, 0}}},
      {"prefill d64 group4 window kv_start", 8, 2, 64, 64, 8, 37, {{50, 50, 0}, {20, 300, 280}, {90, 200, 60}}},
      {"prefill d128 group1 dv 96", 2, 2, 128, 96, 16, 0, {{129, 129, 0}, {17, 500, 0}}},
      {"mixed d256 group2 (decode tiles)", 16, 8, 256, 256, 16, 0,
       {{1, 100, 0}, {1, 3000, 0}, {2, 700, 0}, {1, 1, 0}, {0, 5, 0}}},
  };
  uint64_t seed = 2000;
  for (const Case& c : cases) check_case(c, seed += 10);
}

// Image blocks of a bidirectional-vision model (q_last): blocks longer than the window, a prefill
// that starts inside a block, decode rows after blocks, on the 64-row and the 16-row tiles, with
// and without split keys.
TEST(PagedAttentionGpu, ImageBlocksMatchTheCpuReference) {
  G4_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"prefill d256 group2 window, blocks longer than it", 16, 8, 256, 256, 16, 512,
       {{1400, 1400, 0, {{10, 290}, {300, 1000}}}, {200, 1500, 0, {{1290, 1400}}}, {1, 2000, 0, {{100, 380}}}}},
      {"prefill d512 group8, block reached from a tile's start", 16, 2, 512, 512, 16, 0,
       {{333, 333, 0, {{1, 281}}}, {64, 2048, 0, {{1990, 2040}}}}},
      {"continuation d64 group4 split keys", 8, 2, 64, 64, 8, 0, {{8, 3000, 0, {{2993, 2999}}}, {8, 2100, 0, {{2092, 2100}}}}},
      {"mixed d256 group2 (decode tiles)", 16, 8, 256, 256, 16, 1024,
       {{1, 100, 0, {{10, 80}}}, {3, 50, 0, {{47, 50}}}, {2, 700, 0, {{698, 700}}}, {1, 3000, 0}, {0, 5, 0}}},
  };
  uint64_t seed = 2500;
  for (const Case& c : cases) check_case(c, seed += 10);
}

// A NaN score makes its row NaN (as on the CPU), on the direct and the split path; other rows
// are unaffected.
TEST(PagedAttentionGpu, NanScoresPropagateToTheirRows) {
  G4_REQUIRE_GPU();
  for (const bool split : {true, false}) {
    SCOPED_TRACE(split ? "few sequences (split keys)" : "many sequences");
    const Case c{"nan", 16, 2, 512, 512, 16, 0, decode_batch(std::vector<int64_t>(split ? 2 : 132, split ? 1500 : 300))};
    Inputs in = make_inputs(c, split ? 77 : 78);
    // Query row 1, head 3 (kv head 0): its scores are all NaN.
    in.q.data<float>()[(1 * c.heads + 3) * c.d + 5] = std::numeric_limits<float>::quiet_NaN();
    const Tensor got = run_gpu(in, c, 0.05);
    const Tensor ref = ops::paged_attention(in.q, in.k_pages, in.v_pages, layout_of(in, c, Device::CPU), 0.05);
    const float* g = got.data<float>();
    const float* r = ref.data<float>();
    int64_t mismatched = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      if (std::isnan(r[i]) != std::isnan(g[i])) ++mismatched;
    }
    EXPECT_EQ(mismatched, 0);
    EXPECT_TRUE(std::isnan(g[(1 * c.heads + 3) * c.dv]));
    EXPECT_FALSE(std::isnan(g[(1 * c.heads + 2) * c.dv]));
  }
}

TEST(PagedAttentionGpu, AVisibleKeyOnAMissingPageIsReported) {
  G4_REQUIRE_GPU();
  const Case c{"missing page", 4, 2, 64, 64, 4, 0, decode_batch({6, 30})};
  Inputs in = make_inputs(c, 5);
  in.table[0] = -1;  // sequence 0's first page holds visible keys
  (void)run_gpu(in, c, 1.0);
  expect_reported("paged_attention: sequence 0 sees keys on page -1");
  // Out of the window, the page is not needed: no error.
  Case windowed = c;
  windowed.window = 2;
  (void)run_gpu(in, windowed, 1.0);
  EXPECT_NO_THROW(ops::check_device_index_errors());
}

TEST(PagedAttentionGpu, WritesKeysAndValuesLikeTheCpu) {
  G4_REQUIRE_GPU();
  for (const bool aligned : {true, false}) {  // 16-byte copies, and the fallback for an unaligned view
    SCOPED_TRACE(aligned ? "aligned" : "unaligned");
    const int64_t pool = 9, page = 4, kv_heads = 2, tokens = 20, d = 256, dv = 24;
    Tensor k_cpu = test::randn_bf16_exact({pool, page, kv_heads, d}, 1);
    Tensor v_cpu = test::randn_bf16_exact({pool, page, kv_heads, dv}, 2);
    const Tensor k = test::randn_bf16_exact({tokens, kv_heads, d}, 3), v = test::randn_bf16_exact({tokens, kv_heads, dv}, 4);
    std::vector<int64_t> slots(static_cast<size_t>(pool * page));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937_64(aligned ? 1 : 2));
    slots.resize(tokens);
    slots[3] = slots[11] = -1;  // tokens a layer kind does not keep
    Tensor k_gpu = test::gpu_bf16(k_cpu), v_gpu = test::gpu_bf16(v_cpu);
    Tensor k_src = test::gpu_bf16(k);
    if (!aligned) {  // the same values one bf16 into a buffer
      k_src = Tensor::empty({k.numel() + 1}, DType::BF16, Device::CUDA).slice0(1, k.numel()).reshape(k.shape());
      k_src.copy_from(test::gpu_bf16(k));
    }
    const Tensor slots_t = index_tensor(slots, {tokens}, DType::I64);
    ops::write_kv_pages(k_src, test::gpu_bf16(v), k_gpu, v_gpu, slots_t.to(Device::CUDA));
    ops::write_kv_pages(k, v, k_cpu, v_cpu, slots_t);
    test::expect_close_scaled(k_gpu, k_cpu, 0, 0, "k_pages");
    test::expect_close_scaled(v_gpu, v_cpu, 0, 0, "v_pages");
  }
  Tensor k_pages = Tensor::zeros({2, 2, 1, 8}, DType::BF16, Device::CUDA), v_pages = k_pages.clone();
  const Tensor k = test::gpu_bf16(test::randn_bf16_exact({1, 1, 8}, 5));
  ops::write_kv_pages(k, k, k_pages, v_pages, index_tensor({4}, {1}, DType::I64).to(Device::CUDA));
  expect_reported("write_kv_pages: token 0 goes to slot 4 of a pool of 4 rows");
}

}  // namespace
}  // namespace g4

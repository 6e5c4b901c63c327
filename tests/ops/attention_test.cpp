#include "ops/attention.h"

#include <cmath>
#include <utility>
#include <vector>

#include "gradcheck.h"
#include "ops/elementwise.h"

namespace g4 {
namespace {

using ops::AttentionMask;
using test::expect_close;
using test::expect_error;
using test::expect_gradients;

struct Case {
  const char* name;
  int64_t batch, sq, sk, heads, kv_heads, d, dv;
  AttentionMask mask;
  double scale;  // 0: 1/sqrt(d)
};

// Visibility of key j for query i of batch row b, spelled out from the header's definition.
bool visible(const AttentionMask& m, int64_t b, int64_t i, int64_t j) {
  const int64_t qpos = m.q_start + i, kpos = m.k_start + j;
  bool ok = true;
  if (m.causal) {
    // transformers' vision rule: (causal OR same image block) AND the one-sided window.
    const bool same_block = m.q_block.defined() && element_as_int(m.q_block, b * m.q_block.size(1) + i) >= 0 &&
                            element_as_int(m.q_block, b * m.q_block.size(1) + i) ==
                                element_as_int(m.k_block, b * m.k_block.size(1) + j);
    ok = (kpos <= qpos || same_block) && (m.window == 0 || kpos > qpos - m.window);
  } else if (m.window > 0) {
    ok = kpos > qpos - m.window && kpos < qpos + m.window;
  }
  if (m.key_valid.defined()) ok = ok && element_as_int(m.key_valid, b * m.key_valid.size(1) + j) != 0;
  if (m.q_doc.defined()) {
    ok = ok && element_as_int(m.q_doc, b * m.q_doc.size(1) + i) == element_as_int(m.k_doc, b * m.k_doc.size(1) + j);
  }
  return ok;
}

// softmax(q·kᵀ·scale + mask)·v in double, with a dense mask; also returns lse [B, nH, Sq].
Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& m, double scale,
                       Tensor& lse) {
  const int64_t B = q.size(0), Sq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Sk = k.size(1), KV = k.size(2), Dv = v.size(3);
  Tensor out = Tensor::zeros({B, Sq, H, Dv}, DType::F64);
  lse = Tensor::empty({B, H, Sq}, DType::F64);
  const auto at = [](const Tensor& t, int64_t b, int64_t s, int64_t h, int64_t c) {
    return element_as_double(t, ((b * t.size(1) + s) * t.size(2) + h) * t.size(3) + c);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t kvh = h * KV / H;
        std::vector<double> s(static_cast<size_t>(Sk), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          if (!visible(m, b, i, j)) continue;
          double dot = 0;
          for (int64_t c = 0; c < D; ++c) dot += at(q, b, i, h, c) * at(k, b, j, kvh, c);
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < Sk; ++j) z += mx == -INFINITY ? 0.0 : std::exp(s[j] - mx);
        lse.data<double>()[(b * H + h) * Sq + i] = mx == -INFINITY ? -INFINITY : mx + std::log(z);
        if (mx == -INFINITY) continue;
        for (int64_t j = 0; j < Sk; ++j)
          for (int64_t c = 0; c < Dv; ++c)
            out.data<double>()[((b * Sq + i) * H + h) * Dv + c] += std::exp(s[j] - mx) / z * at(v, b, j, kvh, c);
      }
  return out;
}

// lse may hold -inf, which the tolerance comparison cannot subtract; compare those exactly.
void expect_lse_close(const Tensor& got, const Tensor& want, double tol) {
  ASSERT_EQ(got.shape(), want.shape());
  Tensor g = got.to(DType::F64), w = want.clone();
  for (int64_t i = 0; i < w.numel(); ++i) {
    if (std::isinf(w.data<double>()[i])) {
      EXPECT_EQ(g.data<double>()[i], w.data<double>()[i]) << "lse at " << i;
      g.data<double>()[i] = w.data<double>()[i] = 0;
    }
  }
  expect_close(g, w, tol, "lse");
}

void run_case(const Case& c) {
  SCOPED_TRACE(c.name);
  const uint64_t seed = static_cast<uint64_t>(c.d * 131 + c.sq * 17 + c.sk);
  const Tensor q = randn({c.batch, c.sq, c.heads, c.d}, seed, DType::F64);
  const Tensor k = randn({c.batch, c.sk, c.kv_heads, c.d}, seed + 1, DType::F64);
  const Tensor v = randn({c.batch, c.sk, c.kv_heads, c.dv}, seed + 2, DType::F64);
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.d));

  Tensor lse, want_lse;
  const Tensor want = naive_attention(q, k, v, c.mask, scale, want_lse);
  const Tensor out = ops::attention(q, k, v, c.mask, scale, &lse);
  expect_close(out, want, 1e-13, "out f64");
  expect_lse_close(lse, want_lse, 1e-13);

  Tensor lse32;
  const Tensor out32 = ops::attention(q.to(DType::F32), k.to(DType::F32), v.to(DType::F32), c.mask, scale, &lse32);
  EXPECT_EQ(lse32.dtype(), DType::F32);
  expect_close(out32, want, 1e-5, "out f32");
  expect_lse_close(lse32, want_lse, 1e-5);

  const auto f = [&](const std::vector<Tensor>& in) { return ops::attention(in[0], in[1], in[2], c.mask, scale); };
  const Tensor dout = randn(out.shape(), seed + 3, DType::F64);
  Tensor dq, dk, dv;
  ops::attention_backward(dout, q, k, v, out, lse, c.mask, scale, dq, dk, dv);
  expect_gradients(f, {q, k, v}, dout, {dq, dk, dv}, 1e-6);

  // The f32 backward agrees with the f64 one.
  Tensor dq32, dk32, dv32;
  ops::attention_backward(dout.to(DType::F32), q.to(DType::F32), k.to(DType::F32), v.to(DType::F32), out32, lse32,
                          c.mask, scale, dq32, dk32, dv32);
  expect_close(dq32, dq, 1e-5, "dq f32");
  expect_close(dk32, dk, 1e-5, "dk f32");
  expect_close(dv32, dv, 1e-5, "dv f32");
}

AttentionMask causal(int64_t window = 0) {
  AttentionMask m;
  m.window = window;
  return m;
}

AttentionMask bidirectional(int64_t window = 0) {
  AttentionMask m;
  m.causal = false;
  m.window = window;
  return m;
}

TEST(Attention, CausalGqa) { run_case({"causal nH=4 nKV=2", 2, 6, 6, 4, 2, 16, 16, causal(), 0}); }

TEST(Attention, CausalMqaHeadDim32WithDvDifferent) {
  run_case({"causal nKV=1 d=32 dv=16", 1, 5, 5, 4, 1, 32, 16, causal(), 1.0});
}

TEST(Attention, SlidingWindow) { run_case({"causal window 3", 2, 7, 7, 4, 2, 16, 8, causal(3), 0}); }

TEST(Attention, BidirectionalWithWindow) {
  run_case({"bidirectional window 2", 1, 6, 6, 2, 1, 16, 16, bidirectional(2), 0});
  run_case({"bidirectional full", 1, 4, 5, 2, 2, 16, 16, bidirectional(), 0});
}

TEST(Attention, DecodeQueriesAtTheEnd) {
  AttentionMask one = causal();
  one.q_start = 6;  // one query at position 6 over a cache of 7 keys
  run_case({"decode Sq=1", 2, 1, 7, 4, 2, 16, 16, one, 0});
  AttentionMask three = causal(4);
  three.q_start = 4;  // three queries (positions 4..6), window 4
  run_case({"decode Sq=3 window 4", 1, 3, 7, 4, 1, 32, 32, three, 0});
}

TEST(Attention, KeyOffsetShard) {
  AttentionMask m = causal();
  m.q_start = 8;  // queries 8..11 against keys 4..11, as a context-parallel shard sees them
  m.k_start = 4;
  run_case({"q_start 8 k_start 4", 1, 4, 8, 2, 1, 16, 16, m, 0});
}

TEST(Attention, KeyPadding) {
  AttentionMask m = causal();
  // Batch 0 left-padded by two keys, batch 1 has one padding key in the middle.
  m.key_valid = Tensor::from_vector<int32_t>({0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1}, {2, 6});
  run_case({"key_valid causal", 2, 6, 6, 4, 2, 16, 16, m, 0});
  AttentionMask bi = bidirectional();
  bi.key_valid = Tensor::from_vector<uint8_t>({1, 1, 1, 0, 0, 1, 1, 1, 1, 1}, {2, 5}).to(DType::Bool);
  run_case({"key_valid bidirectional", 2, 5, 5, 2, 1, 16, 16, bi, 0});
}

TEST(Attention, PackedDocuments) {
  AttentionMask m = causal();
  m.q_doc = Tensor::from_vector<int32_t>({0, 0, 0, 1, 1, 2, 2, 2}, {1, 8});
  m.k_doc = m.q_doc;
  run_case({"documents causal", 1, 8, 8, 4, 2, 16, 16, m, 0});
  AttentionMask bi = bidirectional();
  bi.q_doc = Tensor::from_vector<int32_t>({5, 5, 7, 7, 7, 9}, {1, 6});
  bi.k_doc = bi.q_doc;
  run_case({"documents bidirectional", 1, 6, 6, 2, 2, 16, 16, bi, 0});
}

TEST(Attention, ImageBlocks) {
  // Two images in one row (a block of 6 longer than the window 3, then one of 2) and key padding.
  AttentionMask m = causal(3);
  m.q_block = Tensor::from_vector<int32_t>({-1, -1, 0, 0, 0, 0, 0, 0, -1, -1, 1, 1}, {1, 12});
  m.k_block = m.q_block;
  run_case({"image blocks window 3", 1, 12, 12, 2, 1, 16, 16, m, 0});
  AttentionMask packed = causal();
  packed.q_block = Tensor::from_vector<int64_t>({-1, 0, 0, 0, -1, 1, 1, -1, 0, 0, -1, 2, 2, 2}, {2, 7});
  packed.k_block = packed.q_block;
  packed.q_doc = Tensor::from_vector<int32_t>({0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0}, {2, 7});
  packed.k_doc = packed.q_doc;
  packed.key_valid = Tensor::from_vector<int32_t>({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, {2, 7});
  run_case({"image blocks, documents and padding", 2, 7, 7, 4, 2, 16, 8, packed, 0});
}

TEST(Attention, FullyMaskedRowGivesZerosNotNaN) {
  AttentionMask m = causal();
  m.key_valid = Tensor::from_vector<int64_t>({0, 1, 1, 1, 1}, {1, 5});  // query 0 sees only key 0: padding
  const Case c{"fully masked row", 1, 5, 5, 2, 1, 16, 16, m, 0};
  run_case(c);

  const Tensor q = randn({1, 5, 2, 16}, 1, DType::F32), k = randn({1, 5, 1, 16}, 2, DType::F32);
  const Tensor v = randn({1, 5, 1, 16}, 3, DType::F32), dout = randn({1, 5, 2, 16}, 4, DType::F32);
  Tensor lse, dq, dk, dv;
  const Tensor out = ops::attention(q, k, v, m, 0.25, &lse);
  ops::attention_backward(dout, q, k, v, out, lse, m, 0.25, dq, dk, dv);
  for (int64_t h = 0; h < 2; ++h) {
    EXPECT_EQ(lse.data<float>()[h * 5], -INFINITY);
    for (int64_t c2 = 0; c2 < 16; ++c2) {
      EXPECT_EQ(out.data<float>()[h * 16 + c2], 0.0f);
      EXPECT_EQ(dq.data<float>()[h * 16 + c2], 0.0f);
    }
  }
  for (const Tensor& t : {out, dq, dk, dv})
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_TRUE(std::isfinite(t.data<float>()[i])) << t.describe() << " " << i;
  // Key 0 is seen by nobody: no gradient reaches it.
  for (int64_t c2 = 0; c2 < 16; ++c2) EXPECT_EQ(dk.data<float>()[c2], 0.0f);
}

// attention_merge_ folds key blocks into a running (out, lse): over blocks with their offsets it is
// the attention over all keys, output and lse. Queries 0 and 1 see nothing of the first block (it
// lies after them), query 0 nothing of the second either: rows that start or stay at lse = -inf.
TEST(AttentionMerge, KeyBlocksMergeToTheWholeAttention) {
  const Tensor q = randn({2, 6, 4, 16}, 51, DType::F64), k = randn({2, 9, 2, 16}, 52, DType::F64);
  const Tensor v = randn({2, 9, 2, 8}, 53, DType::F64);
  AttentionMask whole = causal();
  whole.q_start = 4;  // queries at 4..9, keys at 0..8
  Tensor want_lse;
  const Tensor want = ops::attention(q, k, v, whole, 0.3, &want_lse);
  Tensor out = Tensor::zeros({2, 6, 4, 8}, DType::F64), lse = Tensor::full({2, 4, 6}, -INFINITY, DType::F64);
  for (const auto& [start, len] : std::vector<std::pair<int64_t, int64_t>>{{6, 3}, {5, 1}, {0, 5}}) {
    AttentionMask m = whole;
    m.k_start = start;
    Tensor lse_b;
    const Tensor out_b = ops::attention(q, ops::narrow(k, 1, start, len), ops::narrow(v, 1, start, len), m, 0.3, &lse_b);
    ops::attention_merge_(out, lse, out_b, lse_b);
  }
  expect_close(out, want, 1e-12, "merged out");
  expect_close(lse, want_lse, 1e-12, "merged lse");

  Tensor f32_out = out.to(DType::F32);
  expect_error([&] { ops::attention_merge_(f32_out, lse, out, lse); },
               {"attention_merge_", "one dtype", "f32[2, 6, 4, 8]", "f64[2, 4, 6]"});
  Tensor short_lse = Tensor::zeros({2, 4, 5}, DType::F64);
  expect_error([&] { ops::attention_merge_(out, short_lse, out, lse); }, {"attention_merge_", "[B, nH, Sq] = [2, 4, 6]"});
}

TEST(Attention, Errors) {
  const Tensor q = randn({1, 4, 3, 16}, 1), k = randn({1, 4, 2, 16}, 2), v = randn({1, 4, 2, 16}, 3);
  expect_error([&] { ops::attention(q, k, v, {}, 1.0); }, {"attention", "f32[1, 4, 3, 16]", "f32[1, 4, 2, 16]"});
  const Tensor q4 = randn({1, 4, 4, 16}, 4);
  expect_error([&] { ops::attention(q4, randn({1, 4, 2, 8}, 5), v, {}, 1.0); }, {"f32[1, 4, 2, 8]", "f32[1, 4, 4, 16]"});
  AttentionMask m;
  m.key_valid = Tensor::zeros({1, 3}, DType::I32);
  expect_error([&] { ops::attention(q4, k, v, m, 1.0); }, {"key_valid", "i32[1, 3]", "[1, 4]"});
  AttentionMask docs;
  docs.q_doc = Tensor::zeros({1, 4}, DType::I32);
  expect_error([&] { ops::attention(q4, k, v, docs, 1.0); }, {"q_doc", "k_doc"});
  expect_error([&] { ops::attention(q4.to(DType::BF16), k.to(DType::BF16), v.to(DType::BF16), {}, 1.0); },
               {"attention", "bf16[1, 4, 4, 16]"});
}

}  // namespace
}  // namespace g4

namespace g4 {
namespace {

// A NaN in a query row makes that row's output and lse NaN, as in PyTorch, instead of a finite
// row (or "no visible key"); the other rows are untouched.
TEST(Attention, NanScoresPropagate) {
  Tensor q = randn({1, 4, 2, 8}, 41, DType::F32);
  const Tensor k = randn({1, 4, 2, 8}, 42, DType::F32), v = randn({1, 4, 2, 8}, 43, DType::F32);
  q.data<float>()[(2 * 2 + 0) * 8 + 3] = std::nanf("");  // query 2, head 0
  Tensor lse;
  const Tensor out = ops::attention(q, k, v, causal(), 1.0 / std::sqrt(8.0), &lse);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t h = 0; h < 2; ++h) {
      const bool poisoned = i == 2 && h == 0;
      EXPECT_EQ(std::isnan(lse.data<float>()[h * 4 + i]), poisoned) << i << " " << h;
      for (int64_t c = 0; c < 8; ++c)
        EXPECT_EQ(std::isnan(out.data<float>()[(i * 2 + h) * 8 + c]), poisoned) << i << " " << h << " " << c;
    }
}

}  // namespace
}  // namespace g4

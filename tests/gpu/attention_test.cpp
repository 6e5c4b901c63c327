// The CUDA flash attention (forward: out and lse; backward: dq, dk, dv) against the CPU reference
// on bf16-exact random inputs. Tolerances (max |error| <= atol + rtol * max |reference|):
//   out: atol 2e-3, rtol 1e-2 — P is rounded to bf16 before P·V and out is stored in bf16;
//   lse: atol 1e-3, rtol 1e-4 — fp32 scores from exact bf16 inputs, -inf rows must match exactly;
//   dq, dk, dv (each backward kernel): atol 1e-3, rtol 2e-2 — P and dS are rounded to bf16 before
//   their products, the gradients are stored in bf16, and the GPU backward uses its own bf16 out.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "gpu_test.h"
#include "ops/attention.h"
#include "ops/cuda/attention.h"

namespace g4 {
namespace {

using ops::AttentionMask;

struct Case {
  std::string name;
  int64_t batch, sq, sk, heads, kv_heads, d, dv;
  AttentionMask mask;
  double scale = 0;       // 0: 1 / sqrt(d)
  double std = 1.0;       // of q and k
  bool same_kv = false;   // pass k as v (d == dv)
};

AttentionMask causal(int64_t window = 0) {
  AttentionMask m;
  m.causal = true;
  m.window = window;
  return m;
}
AttentionMask bidirectional(int64_t window = 0) {
  AttentionMask m;
  m.causal = false;
  m.window = window;
  return m;
}

// Compares lse with -inf entries compared exactly (the tolerance check cannot subtract them).
void expect_lse_close(const Tensor& gpu_lse, const Tensor& ref_lse, const std::string& what) {
  Tensor g = test::host_f32(gpu_lse), r = ref_lse.to(DType::F32).clone();
  ASSERT_EQ(g.shape(), r.shape()) << what;
  int64_t inf_rows = 0;
  for (int64_t i = 0; i < r.numel(); ++i) {
    float& gv = g.data<float>()[i];
    float& rv = r.data<float>()[i];
    if (std::isinf(rv) || std::isinf(gv)) {
      EXPECT_EQ(gv, rv) << what << ": lse at " << i;
      gv = rv = 0;
      ++inf_rows;
    }
  }
  test::expect_close_scaled(g, r, 1e-3, 1e-4, what + " lse (" + std::to_string(inf_rows) + " -inf rows)");
}

void run_case(const Case& c, uint64_t seed = 1) {
  G4_REQUIRE_GPU();  // most tests are this call alone: without a GPU they skip rather than throw
  std::printf("[%s] B=%lld Sq=%lld Sk=%lld nH=%lld nKV=%lld d=%lld dv=%lld\n", c.name.c_str(),
              static_cast<long long>(c.batch), static_cast<long long>(c.sq), static_cast<long long>(c.sk),
              static_cast<long long>(c.heads), static_cast<long long>(c.kv_heads), static_cast<long long>(c.d),
              static_cast<long long>(c.dv));
  const double scale = c.scale != 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.d));
  const Tensor q = test::randn_bf16_exact({c.batch, c.sq, c.heads, c.d}, seed, c.std);
  const Tensor k = test::randn_bf16_exact({c.batch, c.sk, c.kv_heads, c.d}, seed + 1, c.std);
  const Tensor v = c.same_kv ? k : test::randn_bf16_exact({c.batch, c.sk, c.kv_heads, c.dv}, seed + 2);
  const Tensor dout = test::randn_bf16_exact({c.batch, c.sq, c.heads, c.dv}, seed + 3);

  Tensor ref_lse;
  const Tensor ref_out = ops::attention(q, k, v, c.mask, scale, &ref_lse);
  Tensor ref_dq, ref_dk, ref_dv;
  ops::attention_backward(dout, q, k, v, ref_out, ref_lse, c.mask, scale, ref_dq, ref_dk, ref_dv);

  const Tensor gq = test::gpu_bf16(q), gk = test::gpu_bf16(k), gdout = test::gpu_bf16(dout);
  const Tensor gv = c.same_kv ? gk : test::gpu_bf16(v);
  Tensor lse;
  const Tensor out = ops::attention(gq, gk, gv, c.mask, scale, &lse);
  EXPECT_EQ(out.device(), Device::CUDA);
  EXPECT_EQ(lse.dtype(), DType::F32);
  test::expect_close_scaled(out, ref_out, 2e-3, 1e-2, c.name + " out");
  expect_lse_close(lse, ref_lse, c.name);
  // At head dims 256 and 512 every forward must agree: FlashAttention-2 and both wgmma schedules
  // (the op takes the serial wgmma one at 512, FlashAttention-2 at 256).
  if (c.d == c.dv && (c.d == 256 || c.d == 512)) {
    using ops::cuda::ForwardKernel;
    for (const auto& [kernel, tag] : {std::pair{ForwardKernel::flash2, " (flash2 forward)"},
                                      std::pair{ForwardKernel::wgmma, " (serial wgmma forward)"},
                                      std::pair{ForwardKernel::wgmma_pipelined, " (pipelined wgmma forward)"}}) {
      Tensor lse2;
      const Tensor out2 = ops::cuda::attention(gq, gk, gv, c.mask, scale, &lse2, kernel);
      test::expect_close_scaled(out2, ref_out, 2e-3, 1e-2, c.name + " out" + tag);
      expect_lse_close(lse2, ref_lse, c.name + tag);
    }
  }

  // Every backward kernel: the one the op picks, the flash one, and the chunked one with its
  // smallest chunk (128 keys), so that the cases span several chunks.
  using ops::cuda::BackwardKernel;
  const struct {
    const char* name;
    BackwardKernel kernel;
    int key_chunk;
  } kernels[] = {{"automatic", BackwardKernel::automatic, 0},
                 {"flash", BackwardKernel::flash, 0},
                 {"key-chunked", BackwardKernel::key_chunked, 128}};
  for (const auto& kern : kernels) {
    Tensor dq, dk, dv;
    ops::cuda::attention_backward(gdout, gq, gk, gv, out, lse, c.mask, scale, dq, dk, dv, kern.kernel,
                                  kern.key_chunk);
    const std::string what = c.name + " (" + kern.name + " backward)";
    test::expect_close_scaled(dq, ref_dq, 1e-3, 2e-2, what + " dq");
    test::expect_close_scaled(dk, ref_dk, 1e-3, 2e-2, what + " dk");
    test::expect_close_scaled(dv, ref_dv, 1e-3, 2e-2, what + " dv");
  }
}

TEST(GpuAttention, CausalHeadDim256Gqa2) { run_case({"d256 causal gqa2", 2, 300, 300, 4, 2, 256, 256, causal()}); }

TEST(GpuAttention, CausalHeadDim512Gqa4) { run_case({"d512 causal gqa4", 1, 200, 200, 4, 1, 512, 512, causal()}); }

TEST(GpuAttention, SlidingWindowHeadDim512Gqa8) {
  run_case({"d512 window100 gqa8", 1, 300, 300, 8, 1, 512, 512, causal(100)});
}

TEST(GpuAttention, SlidingWindowHeadDim64Gqa8) {
  run_case({"d64 window100 gqa8", 2, 300, 300, 8, 1, 64, 64, causal(100)});
}

TEST(GpuAttention, SlidingWindowHeadDim256) {
  run_case({"d256 window100 gqa1", 1, 300, 300, 2, 2, 256, 256, causal(100)});
}

TEST(GpuAttention, BidirectionalHeadDim16) {
  run_case({"d16 bidirectional", 2, 70, 90, 2, 2, 16, 16, bidirectional()});
}

TEST(GpuAttention, BidirectionalWindowHeadDim256) {
  run_case({"d256 bidirectional window50", 1, 260, 260, 4, 2, 256, 256, bidirectional(50)});
}

TEST(GpuAttention, BidirectionalWindowHeadDim512) {
  run_case({"d512 bidirectional window70", 1, 150, 180, 2, 1, 512, 512, bidirectional(70)});
}

TEST(GpuAttention, OddHeadDims) { run_case({"d40 dv24 causal gqa2", 2, 77, 77, 4, 2, 40, 24, causal()}); }

TEST(GpuAttention, PackedDocuments) {
  AttentionMask m = causal();
  const int64_t S = 200;
  std::vector<int32_t> doc(2 * S);
  for (int64_t i = 0; i < S; ++i) {
    doc[i] = i < 37 ? 0 : i < 150 ? 1 : 2;      // row 0: three documents
    doc[S + i] = i < 100 ? 4 : 5;               // row 1: two
  }
  m.q_doc = Tensor::from_vector<int32_t>(doc, {2, S});
  m.k_doc = m.q_doc;
  run_case({"d64 packed documents", 2, S, S, 4, 2, 64, 64, m});
  AttentionMask m256 = m;
  run_case({"d256 packed documents", 2, S, S, 2, 1, 256, 256, m256});
  AttentionMask bi = bidirectional();
  bi.q_doc = m.q_doc;
  bi.k_doc = m.k_doc;
  run_case({"d512 packed documents bidirectional", 2, S, S, 2, 2, 512, 512, bi});
}

// Gemma 4's image blocks on sliding layers (causal, window, block ids): blocks longer than a tile
// and than the window, blocks on tile edges, two rows with packed documents and key padding; the
// same ids on a bidirectional mask, which ignores them as the CPU does.
TEST(GpuAttention, ImageBlocks) {
  const int64_t S = 300;
  std::vector<int32_t> block(2 * S, -1), doc(2 * S), valid(2 * S, 1);
  for (int64_t i = 0; i < S; ++i) {
    if (i >= 10 && i < 170) block[i] = 0;    // longer than two 64-query tiles
    if (i >= 192 && i < 256) block[i] = 1;   // exactly one tile
    if (i >= 40 && i < 49) block[S + i] = 0;
    if (i >= 120 && i < 250) block[S + i] = 1;
    doc[i] = 0;
    doc[S + i] = i < 100 ? 3 : 4;            // block 1 of row 1 lies in the second document
    valid[S + i] = i < 280;                  // right padding
  }
  AttentionMask m = causal(48);  // shorter than the long blocks: the window clips them
  m.q_block = Tensor::from_vector<int32_t>(block, {2, S});
  m.k_block = m.q_block;
  run_case({"d64 image blocks, window 48", 2, S, S, 4, 2, 64, 64, m});
  AttentionMask packed = m;
  packed.window = 512;
  packed.q_doc = Tensor::from_vector<int32_t>(doc, {2, S});
  packed.k_doc = packed.q_doc;
  packed.key_valid = Tensor::from_vector<int32_t>(valid, {2, S});
  run_case({"d256 image blocks, documents, padding", 2, S, S, 2, 1, 256, 256, packed});
  AttentionMask no_window = m;
  no_window.window = 0;
  run_case({"d16 image blocks, no window", 2, S, S, 2, 2, 16, 16, no_window});
  AttentionMask bi = bidirectional(40);
  bi.q_block = m.q_block;
  bi.k_block = m.k_block;
  run_case({"d64 bidirectional ignores blocks", 2, S, S, 2, 2, 64, 64, bi});
}

// Long packed rows, where sorted document ids let the kernels skip other documents' tiles (a
// document shorter than a tile, one spanning several, boundaries inside and on tile edges), and
// the same ids out of order, where every tile is visited and masked element by element.
TEST(GpuAttention, PackedDocumentsSkipOtherDocumentsTiles) {
  const int64_t S = 700;
  const std::vector<int64_t> ends = {5, 64, 200, 256, 262, 530, 700};
  std::vector<int32_t> sorted(2 * S), shuffled(2 * S);
  for (int64_t i = 0; i < S; ++i) {
    int32_t d = 0;
    while (i >= ends[static_cast<size_t>(d)]) ++d;
    sorted[i] = d;
    sorted[S + i] = i < 350 ? 10 : 11;
    shuffled[i] = static_cast<int32_t>((i / 45) % 3);  // documents interleaved: not contiguous runs
    shuffled[S + i] = static_cast<int32_t>((i * 7) % 5);
  }
  for (const auto& [ids, tag] : {std::pair{sorted, "sorted"}, std::pair{shuffled, "unsorted"}}) {
    AttentionMask m = causal();
    m.q_doc = Tensor::from_vector<int32_t>(ids, {2, S});
    m.k_doc = m.q_doc;
    run_case({std::string("d256 packed documents causal, ") + tag + " ids", 2, S, S, 4, 2, 256, 256, m});
    run_case({std::string("d512 packed documents causal, ") + tag + " ids", 2, S, S, 2, 1, 512, 512, m});
    AttentionMask w = causal(100);
    w.q_doc = m.q_doc;
    w.k_doc = m.k_doc;
    run_case({std::string("d256 packed documents window 100, ") + tag + " ids", 2, S, S, 2, 1, 256, 256, w});
    AttentionMask bi = bidirectional();
    bi.q_doc = m.q_doc;
    bi.k_doc = m.k_doc;
    run_case({std::string("d512 packed documents bidirectional, ") + tag + " ids", 2, S, S, 2, 1, 512, 512, bi});
  }
  // A context-parallel shard: queries 300..499 of the row against all of its keys.
  AttentionMask shard = causal();
  shard.q_start = 300;
  std::vector<int32_t> qd(sorted.begin() + 300, sorted.begin() + 500);
  shard.q_doc = Tensor::from_vector<int32_t>(qd, {1, 200});
  shard.k_doc = Tensor::from_vector<int32_t>(std::vector<int32_t>(sorted.begin(), sorted.begin() + S), {1, S});
  run_case({"d256 packed documents, shard q_start 300", 1, 200, S, 4, 2, 256, 256, shard});
}

TEST(GpuAttention, KeyPaddingAndRowsWithoutKeys) {
  const int64_t S = 130;
  std::vector<uint8_t> valid(2 * S, 1);
  for (int64_t j = 0; j < 20; ++j) valid[j] = 0;           // row 0: left padding (its first queries see nothing)
  for (int64_t j = 100; j < S; ++j) valid[S + j] = 0;      // row 1: right padding
  AttentionMask m = causal();
  m.key_valid = Tensor::from_vector<uint8_t>(valid, {2, S}).to(DType::Bool);
  run_case({"d256 key_valid causal", 2, S, S, 4, 2, 256, 256, m});
  run_case({"d16 key_valid causal", 2, S, S, 4, 4, 16, 16, m});
  AttentionMask bi = bidirectional();
  std::vector<int64_t> none(2 * S, 1);
  for (int64_t j = 0; j < S; ++j) none[S + j] = 0;  // batch row 1 has no valid key at all
  bi.key_valid = Tensor::from_vector<int64_t>(none, {2, S});
  run_case({"d512 key_valid, a batch row without keys", 2, S, S, 2, 1, 512, 512, bi});
  // Longer rows: the tiles whose keys are all valid skip the element-wise mask, the others keep it
  // (padding inside a tile, on a tile edge, a tile of padding only).
  const int64_t L = 333;
  std::vector<int32_t> padded(2 * L, 1);
  for (int64_t j = 0; j < 70; ++j) padded[j] = 0;            // row 0: left padding past the first tile
  for (int64_t j = 256; j < L; ++j) padded[L + j] = 0;       // row 1: right padding from a tile edge
  AttentionMask lc = causal();
  lc.key_valid = Tensor::from_vector<int32_t>(padded, {2, L});
  run_case({"d512 key_valid causal, 333 keys", 2, L, L, 2, 1, 512, 512, lc});
  run_case({"d256 key_valid causal, 333 keys", 2, L, L, 4, 2, 256, 256, lc});
  AttentionMask lb = bidirectional();
  lb.key_valid = lc.key_valid;
  run_case({"d256 key_valid bidirectional, 333 keys", 2, L, L, 4, 2, 256, 256, lb});
  run_case({"d64 key_valid bidirectional, 333 keys", 2, L, L, 4, 2, 64, 64, lb});
}

TEST(GpuAttention, QueriesBeforeTheirFirstKey) {
  AttentionMask m = causal();
  m.k_start = 5;  // queries 0..4 see no key: out 0, lse -inf, zero gradients
  run_case({"d64 k_start 5", 1, 40, 40, 2, 1, 64, 64, m});
}

TEST(GpuAttention, DecodeAgainstACache) {
  for (int64_t sq = 1; sq <= 3; ++sq) {
    AttentionMask m = causal();
    m.q_start = 200 - sq;
    run_case({"d256 decode sq=" + std::to_string(sq), 2, sq, 200, 8, 4, 256, 256, m});
    run_case({"d512 decode sq=" + std::to_string(sq), 1, sq, 200, 8, 1, 512, 512, m});
    AttentionMask w = causal(64);
    w.q_start = 200 - sq;
    run_case({"d256 decode window64 sq=" + std::to_string(sq), 1, sq, 200, 4, 2, 256, 256, w});
  }
}

TEST(GpuAttention, ContextParallelShardOffsets) {
  AttentionMask m = causal(90);
  m.q_start = 256;
  m.k_start = 128;
  run_case({"d256 shard q_start 256 k_start 128 window 90", 1, 128, 256, 4, 2, 256, 256, m});
}

TEST(GpuAttention, KeysEqualValues) {
  Case c{"d256 k = v (one tensor)", 1, 150, 150, 4, 2, 256, 256, causal()};
  c.same_kv = true;
  run_case(c);
  Case c512{"d512 k = v (one tensor)", 1, 100, 100, 2, 1, 512, 512, causal()};
  c512.same_kv = true;
  run_case(c512);
}

TEST(GpuAttention, GemmaScaleOne) {
  // Gemma 4 uses scale 1 on RMS-normed q and k: inputs with std d^-1/4 keep the scores O(1).
  Case c{"d512 scale 1", 1, 160, 160, 4, 2, 512, 512, causal()};
  c.scale = 1.0;
  c.std = std::pow(512.0, -0.25);
  run_case(c);
  Case c256{"d256 scale 1 window 64", 1, 160, 160, 4, 2, 256, 256, causal(64)};
  c256.scale = 1.0;
  c256.std = std::pow(256.0, -0.25);
  run_case(c256);
}

// The wgmma forward shares each K/V load among the CTAs of 1, 2 or 4 query heads of a KV head
// (a thread-block cluster, TMA multicast): every size gives the reference's answer, on a causal
// mask over several key tiles with a ragged last one.
TEST(GpuAttention, WgmmaForwardEveryClusterSize) {
  G4_REQUIRE_GPU();
  setenv("G4_ATTENTION_SOFTMAX_GROUP", "0", 1);  // the serial schedule, also in clusters of 1
  for (const char* cluster : {"1", "2", "4"}) {
    setenv("G4_ATTENTION_CLUSTER", cluster, 1);
    run_case({std::string("d512 causal gqa4, clusters of ") + cluster, 2, 230, 230, 8, 2, 512, 512, causal()});
  }
  setenv("G4_ATTENTION_CLUSTER", "3", 1);
  const Tensor q = test::gpu_bf16(test::randn_bf16_exact({1, 64, 8, 512}, 5));
  const Tensor k = test::gpu_bf16(test::randn_bf16_exact({1, 64, 2, 512}, 6));
  EXPECT_THROW(ops::attention(q, k, k, causal(), 1.0), Error);  // the override is checked
  unsetenv("G4_ATTENTION_CLUSTER");
  unsetenv("G4_ATTENTION_SOFTMAX_GROUP");
}

// Every mask kind through the head-dim-512 schedule that `flag` = `value` selects: causal, windowed,
// bidirectional and packed-document masks, with ragged tiles; a bad setting of the switch (`bad`) is
// refused.
void run_schedule_cases(const char* flag, const char* value, const std::string& name, const char* bad = "2") {
  setenv(flag, value, 1);
  run_case({name + ", causal gqa4", 2, 230, 230, 8, 2, 512, 512, causal()});
  run_case({name + ", window100 gqa8", 1, 300, 300, 8, 1, 512, 512, causal(100)});
  run_case({name + ", bidirectional window70", 1, 150, 180, 2, 1, 512, 512, bidirectional(70)});
  AttentionMask docs = causal();
  const int64_t S = 200;
  std::vector<int32_t> doc(2 * S);
  for (int64_t i = 0; i < S; ++i) {
    doc[i] = i < 37 ? 0 : i < 150 ? 1 : 2;
    doc[S + i] = i < 100 ? 4 : 5;
  }
  docs.q_doc = Tensor::from_vector<int32_t>(doc, {2, S});
  docs.k_doc = docs.q_doc;
  run_case({name + ", packed documents", 2, S, S, 4, 2, 512, 512, docs});
  // Rows without a visible key (output 0, log-sum-exp -inf): left padding under a causal mask, and
  // a batch row whose keys are all padding.
  std::vector<int64_t> valid(2 * 90, 0);
  for (int64_t j = 20; j < 90; ++j) valid[j] = 1;
  AttentionMask padded = causal();
  padded.key_valid = Tensor::from_vector<int64_t>(valid, {2, 90});
  run_case({name + ", padding", 2, 90, 90, 2, 1, 512, 512, padded});
  setenv(flag, bad, 1);
  const Tensor q = test::gpu_bf16(test::randn_bf16_exact({1, 64, 8, 512}, 5));
  const Tensor k = test::gpu_bf16(test::randn_bf16_exact({1, 64, 2, 512}, 6));
  EXPECT_THROW(ops::attention(q, k, k, causal(), 1.0), Error);
  unsetenv(flag);
}

// The head-dim-512 serial schedule (G4_ATTENTION_SOFTMAX_GROUP=0): the warpgroups split the head
// dim and exchange their partial S.
TEST(GpuAttention, WgmmaForwardSerial) {
  G4_REQUIRE_GPU();
  run_schedule_cases("G4_ATTENTION_SOFTMAX_GROUP", "0", "d512 serial");
}

// The head-dim-512 softmax-group schedule (the default): a third warpgroup computes S, its softmax and
// P for the two P·V warpgroups. Every case below has an even GQA group, so it runs in pairs: the CTAs
// of two query heads of one KV head share each K and V load (TMA multicast) and release each buffer
// to both. An odd group runs one CTA a cluster.
TEST(GpuAttention, WgmmaForwardSoftmaxGroup) {
  G4_REQUIRE_GPU();
  run_schedule_cases("G4_ATTENTION_SOFTMAX_GROUP", "1", "d512 softmax group");
  run_case({"d512 softmax group, causal gqa3 (one CTA a cluster)", 1, 200, 200, 3, 1, 512, 512, causal()});
}

// The softmax group in other cluster sizes (G4_ATTENTION_CLUSTER): one CTA a cluster at even GQA
// groups too, and fours.
TEST(GpuAttention, WgmmaForwardSoftmaxGroupInClusters) {
  G4_REQUIRE_GPU();
  run_schedule_cases("G4_ATTENTION_CLUSTER", "1", "d512 softmax group, one CTA a cluster", "3");
  setenv("G4_ATTENTION_CLUSTER", "4", 1);
  run_case({"d512 softmax group, clusters of 4, causal gqa4", 2, 230, 230, 8, 2, 512, 512, causal()});
  run_case({"d512 softmax group, clusters of 4, window100 gqa8", 1, 300, 300, 8, 1, 512, 512, causal(100)});
  unsetenv("G4_ATTENTION_CLUSTER");
}

// The softmax group's trace (bench_attention --trace), in pairs as the op runs it at GQA 2: every step
// of every traced key tile recorded, in the order each warpgroup passes them; other head dims refused.
TEST(GpuAttention, SoftmaxGroupTraceRecordsEachStepInOrder) {
  G4_REQUIRE_GPU();
  const int64_t S = 512, tiles = S / 64;
  const Tensor q = test::gpu_bf16(test::randn_bf16_exact({1, S, 4, 512}, 7));
  const Tensor k = test::gpu_bf16(test::randn_bf16_exact({1, S, 2, 512}, 8));
  const Tensor v = test::gpu_bf16(test::randn_bf16_exact({1, S, 2, 512}, 9));
  const Tensor trace = ops::cuda::attention_trace(q, k, v, causal(), 1.0).to(Device::CPU);
  ASSERT_EQ(trace.size(0), 3);
  const int64_t* t = static_cast<const int64_t*>(trace.raw());
  const int64_t events = trace.size(2), per_group = trace.size(1) * events;
  for (int group = 0; group < 3; ++group) {
    const int last_event = group == 2 ? 6 : 4;  // the softmax warpgroup's steps, or a P·V warpgroup's
    for (int64_t it = 0; it < tiles; ++it) {
      const int64_t* row = t + group * per_group + it * events;
      EXPECT_GT(row[0], 0) << "group " << group << " tile " << it;
      for (int e = 1; e <= last_event; ++e) {
        EXPECT_GE(row[e], row[e - 1]) << "group " << group << " tile " << it;
      }
      if (it + 1 < tiles) {
        EXPECT_GE(row[events], row[last_event]) << "group " << group << " tile " << it;
      }
      if (group < 2 && it + 1 < tiles) {  // in pairs (GQA 2) the P·V warpgroup refills K before it waits for P
        EXPECT_GE(row[5], row[0]) << "group " << group << " tile " << it;
        EXPECT_LE(row[5], row[1]) << "group " << group << " tile " << it;
      }
    }
    EXPECT_EQ(t[group * per_group + tiles * events], 0) << "no tile past the last one";
  }
  const Tensor q256 = test::gpu_bf16(test::randn_bf16_exact({1, 64, 4, 256}, 7));
  EXPECT_THROW(ops::cuda::attention_trace(q256, q256, q256, causal(), 1.0), Error);
}

TEST(GpuAttention, RejectsBadArguments) {
  G4_REQUIRE_GPU();
  const Tensor q = Tensor::zeros({1, 4, 2, 16}, DType::BF16, Device::CUDA);
  const Tensor k = Tensor::zeros({1, 4, 1, 16}, DType::BF16, Device::CUDA);
  const Tensor k3 = Tensor::zeros({1, 4, 3, 16}, DType::BF16, Device::CUDA);
  const Tensor k12 = Tensor::zeros({1, 4, 1, 12}, DType::BF16, Device::CUDA);
  const Tensor qf = Tensor::zeros({1, 4, 2, 16}, DType::F32, Device::CUDA);
  EXPECT_THROW(ops::attention(q, k3, k3, causal(), 1.0), Error);
  EXPECT_THROW(ops::attention(qf, k, k, causal(), 1.0), Error);
  EXPECT_THROW(ops::attention(q, k12, k12, causal(), 1.0), Error);
  // The wgmma forward takes head dims 256 and 512 only.
  EXPECT_THROW(ops::cuda::attention(q, k, k, causal(), 1.0, nullptr, ops::cuda::ForwardKernel::wgmma), Error);
  EXPECT_THROW(ops::cuda::attention(q, k, k, causal(), 1.0, nullptr, ops::cuda::ForwardKernel::wgmma_pipelined),
               Error);
  AttentionMask m = causal();
  m.key_valid = Tensor::zeros({1, 5}, DType::I32);
  EXPECT_THROW(ops::attention(q, k, k, m, 1.0), Error);
  Tensor lse, dq, dk, dv;
  const Tensor out = ops::attention(q, k, k, causal(), 1.0, &lse);
  EXPECT_THROW(ops::cuda::attention_backward(out, q, k, k, out, lse, causal(), 1.0, dq, dk, dv,
                                             ops::cuda::BackwardKernel::key_chunked, 100),
               Error);  // chunks come in multiples of 128 keys
}

// A NaN in one key makes every query that sees it NaN (as PyTorch and the CPU reference do); the
// queries before it stay finite. fmaxf in the row maximum used to drop it and give a finite row.
TEST(GpuAttention, NanScorePropagates) {
  G4_REQUIRE_GPU();
  for (const int64_t d : {64, 256, 512}) {
    const int64_t S = 96, nan_key = 40;
    Tensor k = test::randn_bf16_exact({1, S, 1, d}, 11);
    k.data<float>()[nan_key * d + 3] = NAN;
    const Tensor q = test::gpu_bf16(test::randn_bf16_exact({1, S, 2, d}, 12));
    const Tensor v = test::gpu_bf16(test::randn_bf16_exact({1, S, 1, d}, 13));
    Tensor lse;
    const Tensor out = test::host_f32(ops::attention(q, test::gpu_bf16(k), v, causal(), 1.0 / std::sqrt(d), &lse));
    const Tensor l = test::host_f32(lse);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t h = 0; h < 2; ++h) {
        const float o = out.data<float>()[(i * 2 + h) * d], li = l.data<float>()[h * S + i];
        EXPECT_EQ(std::isnan(o), i >= nan_key) << "d " << d << " query " << i << " head " << h << " out " << o;
        EXPECT_EQ(std::isnan(li), i >= nan_key) << "d " << d << " query " << i << " head " << h << " lse " << li;
      }
  }
}

}  // namespace
}  // namespace g4

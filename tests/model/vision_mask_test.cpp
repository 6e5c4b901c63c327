// The decoder's mask with images (MULTIMODAL.md §4.4): block ids from mm_token_type_ids, the rule
// (sliding window ∧ (causal ∨ same image)) on hand-made rows, including a window shorter than an
// image and two images in one packed row, and transformers' recorded masks of the fixtures.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/vision_tower.h"
#include "ops/attention.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

// Which keys each query sees, read off the attention op itself: q = k = 0 gives every visible key
// the same weight, and v = one-hot key index turns the output into that weight per key.
std::vector<std::vector<bool>> visible(const ops::AttentionMask& m, int64_t B, int64_t S) {
  const Tensor q = Tensor::zeros({B, S, 1, 8}, DType::F64);
  Tensor v = Tensor::zeros({B, S, 1, S}, DType::F64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < S; ++j) v.data<double>()[(b * S + j) * S + j] = 1;
  const Tensor out = ops::attention(q, q, v, m, 1.0);
  std::vector<std::vector<bool>> rows;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i) {
      std::vector<bool> r;
      for (int64_t j = 0; j < S; ++j) r.push_back(out.data<double>()[(b * S + i) * S + j] > 0);
      rows.push_back(r);
    }
  return rows;
}

std::vector<std::vector<bool>> parse(const std::vector<std::string>& rows) {
  std::vector<std::vector<bool>> out;
  for (const std::string& r : rows) {
    std::vector<bool> v;
    for (char c : r) v.push_back(c == '1');
    out.push_back(v);
  }
  return out;
}

ops::AttentionMask sliding_with_blocks(const Tensor& types, int64_t window) {
  ops::AttentionMask m;
  m.window = window;
  m.q_block = model::vision_block_ids(types);
  m.k_block = m.q_block;
  return m;
}

TEST(VisionMask, BlockIdsFromTokenTypes) {
  // Image, audio (causal), video frame, image: boi/eoi (type 0) separate runs.
  const Tensor types = Tensor::from_vector<int64_t>({0, 1, 1, 0, 3, 3, 0, 2, 2, 1, 0, 1}, {1, 12});
  const Tensor ids = model::vision_block_ids(types);
  const std::vector<int32_t> want = {-1, 0, 0, -1, -1, -1, -1, 1, 1, 1, -1, 2};
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(ids.data<int32_t>()[i], want[i]) << i;
  EXPECT_THROW(model::vision_block_ids(Tensor::from_vector<int64_t>({0, 4}, {1, 2})), Error);
}

TEST(VisionMask, WindowShorterThanAnImage) {
  // transformers 5.17 on the GPU box (MULTIMODAL.md §4.4): w = 3, image blocks of 6 and 2 tokens.
  const Tensor types = Tensor::from_vector<int64_t>({0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1}, {1, 12});
  const auto want = parse({"100000000000", "110000000000", "111111110000", "011111110000", "001111110000",
                           "000111110000", "000011110000", "000001110000", "000000111000", "000000011100",
                           "000000001111", "000000000111"});
  EXPECT_EQ(visible(sliding_with_blocks(types, 3), 1, 12), want);
}

TEST(VisionMask, TwoImagesInOnePackedRow) {
  // Two documents in one row, an image in each, window 4; the second row is padded at its end.
  const Tensor types = Tensor::from_vector<int64_t>({0, 1, 1, 1, 0, 0, 1, 1, 0, 0,  //
                                                     0, 0, 1, 1, 1, 1, 1, 0, 0, 0},
                                                    {2, 10});
  ops::AttentionMask m = sliding_with_blocks(types, 4);
  m.q_doc = Tensor::from_vector<int32_t>({0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {2, 10});
  m.k_doc = m.q_doc;
  m.key_valid = Tensor::from_vector<int32_t>({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {2, 10});
  const auto want = parse({// row 0: image 0 at 1..3 (document 0), image 1 at 6..7 (document 1)
                           "1000000000", "1111000000", "1111000000", "1111000000", "0111100000", "0000010000",
                           "0000011100", "0000011100", "0000011110", "0000001111",
                           // row 1: one image of 5 at 2..6, longer than the window; keys 8, 9 padding
                           "1000000000", "1100000000", "1111111000", "1111111000", "0111111000", "0011111000",
                           "0001111000", "0000111100", "0000011100", "0000001100"});
  EXPECT_EQ(visible(m, 2, 10), want);
}

// The fixtures' masks as transformers built them (eager attention, batch with padding).
TEST(VisionMask, MatchesTransformersMasks) {
  for (const char* name : {"tiny-mm-bidir", "tiny-mm-e"}) {
    SCOPED_TRACE(name);
    const io::SafetensorsReader ref =
        io::SafetensorsReader::open(test::data_dir() + "/hf-gemma4-mm/" + name + "/reference.safetensors");
    const Tensor types = ref.get("mm_token_type_ids").clone(), valid = ref.get("attention_mask").clone();
    const int64_t B = types.size(0), S = types.size(1);
    const bool bidir = std::string(name) == "tiny-mm-bidir";
    for (const char* kind : {"sliding_attention", "full_attention"}) {
      SCOPED_TRACE(kind);
      const bool sliding = std::string(kind) == "sliding_attention";
      ops::AttentionMask m;
      if (sliding) m.window = 8;
      if (sliding && bidir) m = sliding_with_blocks(types, 8);
      m.key_valid = valid;
      const auto got = visible(m, B, S);
      const Tensor want = ref.get(std::string("text.mask.") + kind);
      int64_t wrong = 0, seen = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < S; ++i) {
          if (element_as_int(valid, b * S + i) == 0) continue;  // padded queries: meaningless in transformers
          for (int64_t j = 0; j < S; ++j) {
            const bool w = element_as_int(want, (b * S + i) * S + j) != 0;
            wrong += got[b * S + i][j] != w;
            seen += w;
          }
        }
      EXPECT_EQ(wrong, 0);
      EXPECT_GT(seen, 0);
    }
  }
}

}  // namespace
}  // namespace g4

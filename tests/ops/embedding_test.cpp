#include "ops/embedding.h"

#include "gradcheck.h"

namespace g4 {
namespace {

using test::expect_error;
using test::expect_gradients;

TEST(Embedding, GathersRowsForAnyIndexDtype) {
  const Tensor w = randn({10, 4}, 1, DType::F64);
  for (DType idt : {DType::I32, DType::I64}) {
    const Tensor ids = randint({2, 3}, 2, 0, 10, idt);
    const Tensor y = ops::embedding(w, ids);
    ASSERT_EQ(y.shape(), Shape({2, 3, 4}));
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t c = 0; c < 4; ++c)
        EXPECT_EQ(y.data<double>()[i * 4 + c], w.data<double>()[element_as_int(ids, i) * 4 + c]);
  }
  // A pure gather: bf16 weights come back bit for bit.
  const Tensor wb = w.to(DType::F32).to(DType::BF16);
  const Tensor ids = Tensor::from_vector<int64_t>({3, 9}, {2});
  const Tensor yb = ops::embedding(wb, ids);
  EXPECT_EQ(yb.dtype(), DType::BF16);
  for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(element_as_double(yb, 4 + c), element_as_double(wb, 36 + c));
}

TEST(Embedding, GradientScatterAddsAndSkipsPadding) {
  const Tensor w = randn({6, 3}, 3, DType::F64);
  const Tensor ids = Tensor::from_vector<int64_t>({1, 4, 1, 0, 5, 1}, {2, 3});  // repeated id 1
  const auto f = [&](const std::vector<Tensor>& in) { return ops::embedding(in[0], ids); };
  expect_gradients(f, {w}, 4, [&](const Tensor& dy) {
    return std::vector<Tensor>{ops::embedding_backward(dy, ids, 6, -1)};
  });
  // padding_idx = 1: that row gets no gradient, the others are unchanged.
  const Tensor dy = randn({2, 3, 3}, 5, DType::F64);
  const Tensor dw_all = ops::embedding_backward(dy, ids, 6, -1);
  const Tensor dw_pad = ops::embedding_backward(dy, ids, 6, 1);
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(dw_pad.data<double>()[r * 3 + c], r == 1 ? 0.0 : dw_all.data<double>()[r * 3 + c]);
  const Tensor dw32 = ops::embedding_backward(dy.to(DType::F32), ids.to(DType::I32), 6, -1);
  test::expect_close(dw32, dw_all, 1e-6);
}

TEST(Embedding, OutOfRangeIdNamesIdPositionAndVocab) {
  const Tensor w = randn({7, 4}, 1);
  const Tensor ids = Tensor::from_vector<int32_t>({1, 2, 3, 4, 9, 0}, {2, 3});
  expect_error([&] { ops::embedding(w, ids); }, {"id 9", "position 4", "7"});
  const Tensor neg = Tensor::from_vector<int64_t>({-1}, {1});
  expect_error([&] { ops::embedding(w, neg); }, {"id -1", "position 0", "7"});
  expect_error([&] { ops::embedding(w, Tensor::zeros({2}, DType::F32)); }, {"embedding", "ids", "f32[2]"});
  expect_error([&] { ops::embedding_backward(randn({2, 5}, 2), Tensor::zeros({2, 2}, DType::I64), 7, -1); },
               {"embedding_backward", "f32[2, 5]", "i64[2, 2]"});
  expect_error([&] { ops::embedding_backward(randn({3, 5}, 2), Tensor::zeros({2}, DType::I64), 7, -1); },
               {"f32[3, 5]", "i64[2]"});
}

TEST(Embedding, BackwardAccumulatesIntoAnExistingBuffer) {
  const Tensor ids = Tensor::from_vector<int64_t>({1, 4, 1, 0, 5, 1}, {2, 3});
  const Tensor dy = randn({2, 3, 3}, 5);
  const Tensor once = ops::embedding_backward(dy, ids, 6, 4);
  Tensor dw = Tensor::zeros({6, 3}, DType::F32);
  ops::embedding_backward_accumulate(dw, dy, ids, 4);
  ops::embedding_backward_accumulate(dw, dy, ids, 4);
  Tensor twice = once.clone();
  for (int64_t i = 0; i < twice.numel(); ++i) twice.data<float>()[i] *= 2;
  test::expect_close(dw, twice, 1e-6, "accumulated twice");  // a repeated id's sums round differently
  Tensor wrong = Tensor::zeros({6, 4}, DType::F32);
  expect_error([&] { ops::embedding_backward_accumulate(wrong, dy, ids, -1); }, {"dw", "f32[6, 4]"});
  Tensor small = Tensor::zeros({3, 3}, DType::F32);
  expect_error([&] { ops::embedding_backward_accumulate(small, dy, ids, -1); }, {"id 4", "position 1", "[0, 3)"});
}

}  // namespace
}  // namespace g4

// Embedding on the GPU against the CPU: bit-exact gathers for bf16/f32 weights and every row-size
// alignment, the f32 scatter-add gradient (repeated ids, padding_idx), accumulation, and a bad id.
#include "gpu_test.h"
#include "ops/device_checks.h"
#include "ops/embedding.h"

namespace g4 {
namespace {

TEST(GpuEmbedding, GatherIsExact) {
  G4_REQUIRE_GPU();
  // Row bytes 5120 (16-byte units), 12 (4-byte), 6 (2-byte), 4 (f32, 4-byte).
  for (const auto& [d, dt] : {std::pair<int64_t, DType>{2560, DType::BF16}, {6, DType::BF16}, {3, DType::BF16},
                             {1, DType::F32}, {260, DType::F32}}) {
    const Tensor w = randn({1000, d}, 3).to(dt);
    for (DType idt : {DType::I32, DType::I64}) {
      const Tensor ids = randint({4, 33}, 4, 0, 1000, idt);
      const Tensor want = ops::embedding(w, ids);
      for (bool ids_on_gpu : {false, true}) {
        const Tensor got = ops::embedding(w.to(Device::CUDA), ids_on_gpu ? ids.to(Device::CUDA) : ids);
        EXPECT_EQ(got.shape(), want.shape());
        EXPECT_EQ(got.dtype(), dt);
        test::expect_close_scaled(got, want, 0, 0, "embedding D=" + std::to_string(d));
      }
    }
  }
}

TEST(GpuEmbedding, BackwardMatchesCpu) {
  G4_REQUIRE_GPU();
  const int64_t vocab = 500, d = 136;
  Tensor ids = randint({3, 64}, 5, 0, 50, DType::I64);  // many repeats
  ids.data<int64_t>()[0] = 7;
  ids.data<int64_t>()[1] = 7;
  const Tensor dy = test::randn_bf16_exact({3, 64, d}, 6);
  for (int64_t padding : {int64_t{-1}, int64_t{7}}) {
    const Tensor want = ops::embedding_backward(dy, ids, vocab, padding);
    for (DType dt : {DType::BF16, DType::F32}) {
      const Tensor got = ops::embedding_backward(dy.to(dt).to(Device::CUDA), ids.to(Device::CUDA), vocab, padding);
      EXPECT_EQ(got.dtype(), DType::F32);
      test::expect_close_scaled(got, want, 1e-5, 1e-6, "embedding_backward pad=" + std::to_string(padding));
      if (padding == 7) {
        const Tensor host = test::host_f32(got);
        for (int64_t c = 0; c < d; ++c) ASSERT_EQ(host.data<float>()[7 * d + c], 0.0f);
      }
    }
  }
  Tensor acc = Tensor::zeros({vocab, d}, DType::F32, Device::CUDA);
  ops::embedding_backward_accumulate(acc, test::gpu_bf16(dy), ids, -1);
  ops::embedding_backward_accumulate(acc, test::gpu_bf16(dy), ids, -1);
  Tensor twice = ops::embedding_backward(dy, ids, vocab, -1);
  for (int64_t i = 0; i < twice.numel(); ++i) twice.data<float>()[i] *= 2;
  test::expect_close_scaled(acc, twice, 1e-5, 1e-6, "accumulated twice");
}

TEST(GpuEmbedding, BadIdIsRaisedAtTheNextCheck) {
  G4_REQUIRE_GPU();
  const Tensor w = test::gpu_bf16(randn({7, 8}, 1));
  const Tensor ids = Tensor::from_vector<int32_t>({1, 2, 3, 4, 9, 0}, {2, 3});
  const Tensor y = test::host_f32(ops::embedding(w, ids));
  for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(y.data<float>()[4 * 8 + c], 0.0f);
  try {
    ops::check_device_index_errors();
    ADD_FAILURE() << "expected the bad id to be raised";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* part : {"embedding", "id 9", "position 4", "[0, 7)"})
      EXPECT_NE(msg.find(part), std::string::npos) << part << " not in: " << msg;
  }
  ops::check_device_index_errors();  // cleared
  // Found by the backward too; -1 is a bad id even when padding_idx is -1.
  ops::embedding_backward(test::gpu_f32(randn({1, 8}, 2)), Tensor::from_vector<int64_t>({-1}, {1}), 7, -1);
  EXPECT_THROW(ops::check_device_index_errors(), Error);
}

}  // namespace
}  // namespace g4

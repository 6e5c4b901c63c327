// The diffusion_gemma forward against transformers 5.17's own numbers (tests/data/hf-diffusion-gemma,
// fp32, eager): the causal encoder's next-token logits and the denoiser's logits over [cache ;
// canvas], without and with self-conditioning, with a per-example self-conditioning mask, and with a
// left-padded row. The context is longer than the sliding window, so the sliding layers' trimmed
// cache (sliding_window - 1 keys) is exercised.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "diffusion/model.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/logit_diff.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::string fixture(const std::string& name) { return test::data_dir() + "/hf-diffusion-gemma/" + name; }

using test::max_diff;

class DiffusionForward : public ::testing::TestWithParam<std::string> {};

TEST_P(DiffusionForward, EncoderAndDenoiserLogitsMatchTransformers) {
  const std::string dir = fixture(GetParam());
  const auto m = model::load_hf_model(dir);
  ASSERT_TRUE(m->config().diffusion);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const Tensor ids = ref.get("fwd.input_ids").clone(), canvas = ref.get("fwd.canvas_ids").clone();

  diffusion::EncoderCache cache;
  const Tensor enc = m->logits(diffusion::encode(*m, ids, {}, cache)).value();
  EXPECT_LT(max_diff(enc, ref.get_f32("fwd.encoder_logits", enc.shape())), 1e-4) << "encoder logits";

  const Tensor plain = diffusion::denoise(*m, canvas, cache);
  EXPECT_LT(max_diff(plain, ref.get_f32("fwd.logits", plain.shape())), 1e-4) << "denoiser logits";

  const Tensor sc = ref.get_f32("fwd.sc_logits", plain.shape());
  const Tensor with_sc = diffusion::denoise(*m, canvas, cache, sc);
  EXPECT_LT(max_diff(with_sc, ref.get_f32("fwd.logits_sc", plain.shape())), 1e-4) << "self-conditioned logits";
  EXPECT_GT(max_diff(with_sc, plain), 1e-2) << "self-conditioning changes the logits";

  const Tensor masked = diffusion::denoise(*m, canvas, cache, sc, ref.get("fwd.sc_mask").clone());
  EXPECT_LT(max_diff(masked, ref.get_f32("fwd.logits_sc_masked", plain.shape())), 1e-4) << "masked self-conditioning";
}

TEST_P(DiffusionForward, LeftPaddedRowsMatchTransformers) {
  const std::string dir = fixture(GetParam());
  const auto m = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const Tensor ids = ref.get("fwdpad.input_ids").clone(), mask = ref.get("fwdpad.attention_mask").clone();
  const Tensor dec_mask = ref.get("fwdpad.decoder_attention_mask").clone();
  const int64_t S = ids.size(1);
  const Tensor canvas = ref.get("fwd.canvas_ids").clone();
  const int64_t B = canvas.size(0), C = canvas.size(1);
  Tensor canvas_valid = Tensor::empty({B, C}, DType::I64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < C; ++j) canvas_valid.data<int64_t>()[b * C + j] = element_as_int(dec_mask, b * (S + C) + S + j);

  diffusion::EncoderCache cache;
  const Tensor enc = m->logits(diffusion::encode(*m, ids, mask, cache)).value();
  // Padded queries' logits are never read (transformers' are garbage there).
  EXPECT_LT(max_diff(enc, ref.get_f32("fwdpad.encoder_logits", enc.shape()), mask), 1e-4) << "encoder logits";
  const Tensor logits = diffusion::denoise(*m, canvas, cache, {}, {}, canvas_valid);
  EXPECT_LT(max_diff(logits, ref.get_f32("fwdpad.logits", logits.shape())), 1e-4) << "denoiser logits";
}

TEST_P(DiffusionForward, ChunkedEncodingEqualsOnePass) {
  // Encoding a prompt in pieces (as sampling appends each finished block) gives the cache one pass
  // gives: the denoiser's logits agree.
  const std::string dir = fixture(GetParam());
  const auto m = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const Tensor ids = ref.get("fwd.input_ids").to(DType::I64), canvas = ref.get("fwd.canvas_ids").clone();
  const int64_t B = ids.size(0), S = ids.size(1);
  diffusion::EncoderCache whole, pieces;
  diffusion::encode(*m, ids, {}, whole);
  for (int64_t start = 0; start < S;) {
    const int64_t n = std::min<int64_t>(start == 0 ? 3 : 4, S - start);
    Tensor part = Tensor::empty({B, n}, DType::I64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n; ++j) part.data<int64_t>()[b * n + j] = ids.data<int64_t>()[b * S + start + j];
    diffusion::encode(*m, part, {}, pieces);
    start += n;
  }
  ASSERT_EQ(pieces.length(), S);
  EXPECT_LT(max_diff(diffusion::denoise(*m, canvas, pieces), diffusion::denoise(*m, canvas, whole)), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DiffusionForward, ::testing::Values("tiny-dg-a", "tiny-dg-b"));

}  // namespace
}  // namespace g4

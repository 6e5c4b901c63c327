// The diffusion_gemma forward against transformers 5.17's own numbers (tests/data/hf-diffusion-gemma,
// fp32, eager): the causal encoder's next-token logits and the denoiser's logits over [cache ;
// canvas], without and with self-conditioning, with a per-example self-conditioning mask, and with a
// left-padded row. The context is longer than the sliding window, so the sliding layers' trimmed
// cache (sliding_window - 1 keys) is exercised.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "diffusion/model.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/g4_process.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::string fixture(const std::string& name) { return test::data_dir() + "/hf-diffusion-gemma/" + name; }

using nlohmann::json;
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
  // The same cache up to fp32 rounding, which depends on OpenBLAS's kernels (the products of 3 and 4
  // rows are not those of all S): below 2e-5 with its AVX-512 kernels, 3.7e-5 with its AVX2 ones
  // (Haswell, Zen), on logits up to the softcap of 20.
  EXPECT_LT(max_diff(diffusion::denoise(*m, canvas, pieces), diffusion::denoise(*m, canvas, whole)), 1e-4);
}

TEST_P(DiffusionForward, GradsOfAutomodelsStepMatchItsRecordedGradients) {
  // g4 forward on Automodel's recorded batch and draws: its loss, logits and, in Hugging Face
  // layout, the gradient of every parameter. The fixture records Automodel's native tensors:
  // gate_and_up_projs[e] = gate_up_proj[e]^T and down_projs[e] = down_proj[e]^T * per_expert_scale[e].
  const std::string dir = fixture(GetParam());
  const auto m = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const json am = io::read_json_file(dir + "/reference.json", "reference", 1 << 24).at("automodel");
  const std::filesystem::path tmp = test::scratch_dir("forward_dllm_" + GetParam());
  const std::string in = (tmp / "in.safetensors").string(), out = (tmp / "out.safetensors").string();
  io::save_safetensors(in, {{"input_ids", ref.get("train.input_ids").clone()},
                            {"attention_mask", ref.get("train.attention_mask").clone()},
                            {"loss_mask", ref.get("train.loss_mask").clone()},
                            {"noisy_input_ids", ref.get("train.noisy_ids").clone()},
                            {"selected_block", ref.get("train.sel_block").clone()},
                            {"self_conditioning_mask", ref.get("train.sc_coins").clone()}});
  const test::ProcessResult r = test::run_g4("forward " + dir + " --inputs " + in + " --out " + out + " --grads");
  ASSERT_EQ(r.code, 0) << r.output;
  const io::SafetensorsReader o = io::SafetensorsReader::open(out);
  EXPECT_NEAR(o.get_f32("loss", {1}).item(), am.at("loss").get<double>(), 1e-5);
  EXPECT_NEAR(o.get_f32("diffusion_loss", {1}).item(), am.at("loss_diff").get<double>(), 1e-5);
  EXPECT_NEAR(o.get_f32("ar_loss", {1}).item(), am.at("loss_ar").get<double>(), 1e-5);
  const Tensor logits = o.get("logits").clone(), sc = o.get("sc_logits").clone();
  const Tensor valid = ref.get("train.decoder_padding_mask").to(DType::I64);
  Tensor keep = Tensor::empty(valid.shape(), DType::I64);
  for (int64_t i = 0; i < valid.numel(); ++i) keep.data<int64_t>()[i] = valid.data<int64_t>()[i] == 0;
  EXPECT_LT(max_diff(sc, ref.get_f32("train.sc_logits", sc.shape()), keep), 1e-4);
  EXPECT_LT(max_diff(logits, ref.get_f32("train.logits", logits.shape()), keep), 2.5e-4);  // see objective_test

  const io::ModelConfig& cfg = m->config();
  const io::SafetensorsReader weights = io::SafetensorsReader::open(dir + "/model.safetensors");
  int checked = 0;
  for (const std::string& key : ref.names()) {
    if (key.rfind("train.grad.", 0) != 0 || key == "train.grad_norm") continue;
    const std::string native = key.substr(std::string("train.grad.").size()), hf = model::hf_name(cfg, native);
    ASSERT_TRUE(o.has("grad." + hf)) << native << " as " << hf;
    const Tensor want = ref.get(key).to(DType::F64);
    Tensor mine = o.get("grad." + hf).to(DType::F64).clone();
    const bool gate_up = native.ends_with("gate_and_up_projs"), down = native.ends_with("down_projs");
    if (gate_up || down) {
      const int64_t E = mine.size(0), rows = mine.size(1), cols = mine.size(2);
      Tensor t = Tensor::empty({E, cols, rows}, DType::F64);
      Tensor scale;
      if (down) {
        std::string s = hf;
        s.replace(s.find("experts.down_proj"), std::string("experts.down_proj").size(), "router.per_expert_scale");
        scale = weights.get(s).to(DType::F64);
      }
      for (int64_t e = 0; e < E; ++e)
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j)
            t.data<double>()[(e * cols + j) * rows + i] =
                mine.data<double>()[(e * rows + i) * cols + j] / (down ? scale.data<double>()[e] : 1.0);
      mine = t;
    }
    ASSERT_EQ(mine.shape(), want.shape()) << native;
    const test::L2Error e = test::l2_error(mine, want);
    EXPECT_LE(e.diff, 1e-4 * e.norm + 1e-12) << native;
    ++checked;
  }
  EXPECT_GT(checked, 20);
  EXPECT_TRUE(o.has("grad.model.decoder.layers.0.router.proj.weight")) << "every parameter, the router included";

  // A batch without its draws is refused by name, and so is a mix with transformers' inputs.
  io::save_safetensors(in, {{"input_ids", ref.get("train.input_ids").clone()},
                            {"loss_mask", ref.get("train.loss_mask").clone()},
                            {"noisy_input_ids", ref.get("train.noisy_ids").clone()}});
  const test::ProcessResult missing =
      test::run_g4("forward " + dir + " --inputs " + in + " --out " + out + " --overwrite");
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.output.find("selected_block"), std::string::npos) << missing.output;
  io::save_safetensors(in, {{"input_ids", ref.get("train.input_ids").clone()},
                            {"loss_mask", ref.get("train.loss_mask").clone()},
                            {"noisy_input_ids", ref.get("train.noisy_ids").clone()},
                            {"selected_block", Tensor::full({ref.get("train.sel_block").numel()}, 7.0, DType::I64)}});
  const test::ProcessResult beyond =
      test::run_g4("forward " + dir + " --inputs " + in + " --out " + out + " --overwrite");
  EXPECT_NE(beyond.code, 0);
  EXPECT_NE(beyond.output.find("selected_block[0] = 7"), std::string::npos) << beyond.output;
  std::filesystem::remove_all(tmp);
}

TEST(DiffusionForwardCommand, TakesTheCanvasUnderTransformersName) {
  const std::string dir = fixture("tiny-dg-b");
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const std::filesystem::path tmp = test::scratch_dir("forward_decoder_input_ids");
  const std::string in = (tmp / "in.safetensors").string(), out = (tmp / "out.safetensors").string();
  const Tensor canvas = ref.get("fwd.canvas_ids").clone();
  io::save_safetensors(in, {{"input_ids", ref.get("fwd.input_ids").clone()}, {"decoder_input_ids", canvas}});
  const test::ProcessResult r = test::run_g4("forward " + dir + " --inputs " + in + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor logits = io::SafetensorsReader::open(out).get("logits").clone();
  EXPECT_LT(max_diff(logits, ref.get_f32("fwd.logits", logits.shape())), 1e-4);
  io::save_safetensors(
      in, {{"input_ids", ref.get("fwd.input_ids").clone()}, {"decoder_input_ids", canvas}, {"canvas_ids", canvas}});
  const test::ProcessResult both =
      test::run_g4("forward " + dir + " --inputs " + in + " --out " + out + " --overwrite");
  EXPECT_NE(both.code, 0);
  EXPECT_NE(both.output.find("exactly one of 'decoder_input_ids' and 'canvas_ids'"), std::string::npos) << both.output;
  std::filesystem::remove_all(tmp);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DiffusionForward, ::testing::Values("tiny-dg-a", "tiny-dg-b"));

}  // namespace
}  // namespace g4

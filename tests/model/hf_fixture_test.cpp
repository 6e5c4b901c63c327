// The engine against Hugging Face transformers' own numbers (tests/data/hf-gemma4/*, made by
// transformers 5.17 in fp32 with eager attention): logits, loss, every parameter gradient and a
// greedy generation with the paged KV cache.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "generate/generator.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "support/hf_fixtures.h"

namespace g4 {
namespace {

using test::hf_fixture_dir;

// ‖g − g_hf‖ ≤ 1e-4 ‖g_hf‖, with an absolute floor of 1e-7 for gradients that are exactly zero in
// exact arithmetic (top-1 routing renormalises its single weight to 1, so the router's gradient
// is 0 and transformers' ~1e-8 values are rounding noise).
double grad_tolerance(double ref_norm_squared) { return std::max(1e-4 * std::sqrt(ref_norm_squared), 1e-7); }

class HfFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixture, LogitsLossAndGradientsMatchTransformers) {
  const std::string dir = hf_fixture_dir(GetParam());
  auto model = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");

  model::ForwardInputs in = test::hf_reference_inputs(ref);
  model->params().zero_grad();
  model::ForwardOutputs out = model->forward(in);
  ag::backward(out.loss);

  // Logits at valid positions (HF's logits at padded queries are meaningless).
  const Tensor& logits = out.logits.value();
  const Tensor ref_logits = ref.get_f32("logits", logits.shape());
  const int64_t B = logits.size(0), S = logits.size(1), V = logits.size(2);
  double max_err = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      if (element_as_int(in.attention_mask, b * S + s) == 0) continue;
      for (int64_t v = 0; v < V; ++v) {
        const int64_t i = (b * S + s) * V + v;
        max_err = std::max(max_err, std::abs(double(logits.data<float>()[i]) - ref_logits.data<float>()[i]));
      }
    }
  EXPECT_LT(max_err, 1e-4) << "max |logit - hf| at valid positions";

  const double ref_loss = ref.get_f32("loss", {1}).data<float>()[0];
  EXPECT_NEAR(out.loss.value().item(), ref_loss, 1e-5);

  int64_t compared = 0;
  for (const auto& [name, g] : model::hf_gradients(*model)) {
    const std::string key = "grad." + name;
    ASSERT_TRUE(ref.has(key)) << "transformers has no gradient for " << name;
    const Tensor want = ref.get_f32(key, g.shape());
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double a = g.data<float>()[i], w = want.data<float>()[i];
      diff += (a - w) * (a - w);
      norm += w * w;
    }
    EXPECT_LE(std::sqrt(diff), grad_tolerance(norm)) << "gradient of " << name;
    ++compared;
  }
  int64_t ref_grads = 0;
  for (const std::string& n : ref.names()) ref_grads += n.rfind("grad.", 0) == 0;
  EXPECT_EQ(compared, ref_grads) << "every parameter transformers has a gradient for is compared";
}

TEST_P(HfFixture, GreedyGenerationMatchesTransformers) {
  const std::string dir = hf_fixture_dir(GetParam());
  auto model = model::load_hf_model(dir);
  const io::SafetensorsReader ref = io::SafetensorsReader::open(dir + "/reference.safetensors");
  const Tensor prompt = ref.get("generate.prompt");
  const Tensor expected = ref.get("generate.output");
  std::vector<int64_t> p;
  for (int64_t i = 0; i < prompt.numel(); ++i) p.push_back(element_as_int(prompt, i));
  gen::GenerateOptions opt;
  opt.max_new_tokens = expected.size(1) - prompt.size(1);
  const auto out = gen::generate(*model, {p}, opt);
  std::vector<int64_t> want;
  for (int64_t i = 0; i < expected.numel(); ++i) want.push_back(element_as_int(expected, i));
  EXPECT_EQ(out[0], want);
}

// A paged step's layout for sequences that each own pages b * max_pages .. (b + 1) * max_pages - 1
// of both kinds, feeding tokens [pos, pos + chunk) of every sequence.
model::PagedStep paged_step(const Tensor& ids, int64_t pos, int64_t chunk, int64_t page, int64_t max_pages) {
  const int64_t B = ids.size(0), S = ids.size(1);
  Tensor step_ids = Tensor::empty({B * chunk}, DType::I64), positions = Tensor::empty({B * chunk}, DType::I64);
  Tensor slots = Tensor::empty({B * chunk}, DType::I64), rows = Tensor::empty({B * chunk}, DType::I64);
  Tensor cu_q = Tensor::empty({B + 1}, DType::I32), kv_len = Tensor::empty({B}, DType::I32);
  Tensor table = Tensor::empty({B, max_pages}, DType::I32);
  cu_q.data<int32_t>()[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < chunk; ++s) {
      const int64_t t = b * chunk + s, p = pos + s;
      step_ids.data<int64_t>()[t] = ids.data<int64_t>()[b * S + p];
      positions.data<int64_t>()[t] = p;
      slots.data<int64_t>()[t] = (b * max_pages + p / page) * page + p % page;
      rows.data<int64_t>()[t] = t;
    }
    cu_q.data<int32_t>()[b + 1] = static_cast<int32_t>((b + 1) * chunk);
    kv_len.data<int32_t>()[b] = static_cast<int32_t>(pos + chunk);
    for (int64_t p = 0; p < max_pages; ++p) table.data<int32_t>()[b * max_pages + p] = static_cast<int32_t>(b * max_pages + p);
  }
  model::PagedStep st;
  st.ids = step_ids;
  st.positions = positions;
  st.logit_rows = rows;
  for (size_t kind = 0; kind < model::kAttnKinds; ++kind) {
    st.layout[kind] = ops::PagedLayout{cu_q, kv_len, table, Tensor(), 0, Tensor()};
    st.slots[kind] = slots;
  }
  return st;
}

// How a paged step attends: the paged kernel, or the dense op (model::PagedStep::dense) over the
// step's own keys (every sequence starting at its first token) or over one sequence's held keys.
enum class StepKeys { kPaged, kFresh, kHeld };

// The dense keys of a paged_step() chunk at `pos`: its own rows with the sequences as documents, or
// (one sequence) the rows from position 0, or from the first one the sliding window shows.
model::PagedStep::DenseKeys dense_keys(const model::PagedStep& st, StepKeys how, int64_t B, int64_t pos, int64_t chunk,
                                       int64_t page, int64_t window) {
  model::PagedStep::DenseKeys d;
  if (how == StepKeys::kFresh) {
    d.rows = st.slots;
    d.docs = Tensor::empty({B * chunk}, DType::I32);
    for (int64_t t = 0; t < B * chunk; ++t) d.docs.data<int32_t>()[t] = static_cast<int32_t>(t / chunk);
    return d;
  }
  d.q_start = pos;
  for (size_t kind = 0; kind < model::kAttnKinds; ++kind) {
    const bool sliding = kind == static_cast<size_t>(model::AttnKind::kSliding) && window > 0;
    const int64_t lo = sliding ? std::max<int64_t>(0, pos - window + 1) : 0;
    d.rows[kind] = Tensor::empty({pos + chunk - lo}, DType::I64);
    for (int64_t p = lo; p < pos + chunk; ++p) d.rows[kind].data<int64_t>()[p - lo] = (p / page) * page + p % page;
    d.k_start[kind] = lo;
  }
  return d;
}

// Feeds B sequences of S tokens (`seed` picks their ids) through paged steps of the given chunk
// lengths, each attending as `keys` says, and checks every step's logits against a full forward
// over the prefix.
void expect_paged_steps_match_full_forward(const std::string& fixture, int64_t B, int64_t S, int64_t seed,
                                           const std::vector<int64_t>& chunks, const std::vector<StepKeys>& keys) {
  auto model = model::load_hf_model(hf_fixture_dir(fixture));
  Tensor ids = Tensor::empty({B, S}, DType::I64);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int64_t>()[i] = 3 + (i * seed) % 250;
  ag::NoGrad no_grad;
  model::ForwardInputs in;
  in.input_ids = ids;
  const Tensor full = model->forward(in).logits.value();
  const int64_t page = 4, max_pages = (S + page - 1) / page;
  model::PagedKV kv = model::allocate_paged_kv(model->config(), model->dtype(), model->device(),
                                               {B * max_pages, B * max_pages}, page);
  const int64_t V = full.size(2);
  int64_t pos = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t chunk = chunks[c];
    model::PagedStep st = paged_step(ids, pos, chunk, page, max_pages);
    if (keys[c] != StepKeys::kPaged)
      st.dense = dense_keys(st, keys[c], B, pos, chunk, page, model->config().sliding_window);
    const Tensor logits = model->forward_paged(st, kv);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < chunk; ++s)
        for (int64_t v = 0; v < V; ++v)
          ASSERT_NEAR(logits.data<float>()[(b * chunk + s) * V + v], full.data<float>()[(b * S + pos + s) * V + v], 1e-4)
              << "position " << pos + s << ", step " << c;
    pos += chunk;
  }
}

TEST_P(HfFixture, CachedDecodingMatchesFullForward) {
  // Every step of incremental decoding over the paged KV must give the logits of a full forward
  // over the prefix: 19 tokens, longer than the sliding window, decoded in uneven chunks.
  const StepKeys paged = StepKeys::kPaged;
  expect_paged_steps_match_full_forward(GetParam(), 2, 19, 37, {5, 1, 3, 1, 1, 8}, {paged, paged, paged, paged, paged, paged});
}

TEST_P(HfFixture, PrefillStepsAttendThroughTheDenseOpAndLeaveThePagesRight) {
  // Prefill steps through ops::attention (model::PagedStep::dense): whole-prompt starts with the
  // sequences as documents (13 tokens, longer than the sliding window), then one sequence's chunk
  // after keys it holds (from position 8, the sliding layers' keys from inside the window): their
  // logits are the full forward's, and the pages they wrote serve the paged steps after them.
  const StepKeys paged = StepKeys::kPaged;
  expect_paged_steps_match_full_forward(GetParam(), 2, 19, 53, {13, 1, 5}, {StepKeys::kFresh, paged, paged});
  expect_paged_steps_match_full_forward(GetParam(), 1, 23, 41, {7, 1, 11, 1, 3},
                                        {StepKeys::kFresh, paged, StepKeys::kHeld, paged, StepKeys::kHeld});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfFixture,
                         ::testing::Values("tiny-dense-ple", "tiny-dense-keqv", "tiny-moe", "var-moe-untied",
                                           "var-ple-shared", "var-moe-top1"));

TEST(HfPackedFixture, PackedDocumentsMatchDocumentsRunAlone) {
  // Three documents in one row with restarting position ids: logits equal each document run on
  // its own; loss and gradients equal transformers' packed forward.
  auto model = model::load_hf_model(hf_fixture_dir("var-ple-shared"));
  const io::SafetensorsReader ref = io::SafetensorsReader::open(hf_fixture_dir("var-ple-shared-packed") + "/reference.safetensors");
  model::ForwardInputs in;
  in.input_ids = ref.get("input_ids").clone();
  in.position_ids = ref.get("position_ids").clone();
  in.labels = ref.get("labels").clone();
  model::ForwardOutputs out = model->forward(in);
  ag::backward(out.loss);
  const Tensor& logits = out.logits.value();
  const Tensor want = ref.get_f32("logits", logits.shape());
  double max_err = 0;
  for (int64_t i = 0; i < logits.numel(); ++i)
    max_err = std::max(max_err, std::abs(double(logits.data<float>()[i]) - want.data<float>()[i]));
  EXPECT_LT(max_err, 1e-4);
  EXPECT_NEAR(out.loss.value().item(), ref.get_f32("loss", {1}).data<float>()[0], 1e-5);
  for (const auto& [name, g] : model::hf_gradients(*model)) {
    const Tensor w = ref.get_f32("grad." + name, g.shape());
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      diff += std::pow(double(g.data<float>()[i]) - w.data<float>()[i], 2);
      norm += std::pow(double(w.data<float>()[i]), 2);
    }
    EXPECT_LE(std::sqrt(diff), grad_tolerance(norm)) << "gradient of " << name;
  }
}

}  // namespace
}  // namespace g4

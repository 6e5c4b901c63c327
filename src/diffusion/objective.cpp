#include "diffusion/objective.h"

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"
#include "diffusion/model.h"
#include "io/json_input.h"
#include "train/checkpoint.h"

namespace g4::diffusion {

namespace {

constexpr const char* kEmbedding = "model.embed_tokens.weight";

// Mean CE of the LM head over `hidden` against targets (-100: ignored; `count` counted), times
// count / denominator: this micro-batch's share of a step-wide mean. The GPU runs the head and the
// loss fused (no [N, V] logits); the CPU, or a caller that wants the logits, materialises them.
ag::Var share_of_mean(const model::Gemma4& m, const ag::Var& hidden, const Tensor& targets, int64_t count,
                      double denominator, bool keep_logits, Tensor* logits_out) {
  const std::optional<double> cap = m.config().final_logit_softcapping;
  ag::Var ce;
  if (!keep_logits && m.device() != Device::CPU && count > 0) {
    ce = ag::linear_cross_entropy(hidden, m.params().at(kEmbedding), targets.to(m.device()), count, cap.value_or(0.0));
  } else {
    const ag::Var logits = m.logits(hidden);
    if (keep_logits) *logits_out = logits.value().to(Device::CPU);
    ce = ag::cross_entropy_mean(logits, targets.to(m.device()));
  }
  return ag::scale(ce, static_cast<double>(count) / denominator);
}

double item(const ag::Var& v) {
  return v.value().to(Device::CPU).to(DType::F64).item();
}

}  // namespace

DllmStep prepare_step(const DllmBatch& batch, uint64_t base_seed, const SamplePlace& place, int64_t vocab_size,
                      int64_t block_size, double eps, double self_conditioning_p) {
  const int64_t B = batch.rows();
  const Tensor noisy = corrupt(batch, corruption_draws(base_seed, place, B, batch.length(), vocab_size, eps));
  TorchGenerator selection(automodel_selection_seed(base_seed, place.step, place.microbatch));
  TorchGenerator coin(automodel_coin_seed(base_seed, place.step, place.microbatch));
  const Tensor sel_u = selection.rand({B}), coin_u = coin.rand({B});
  DllmStep s{batch, response_window(batch, noisy, block_size, sel_u), Tensor::empty({B}, DType::I64)};
  // torch compares a float32 tensor with a Python float in float32.
  for (int64_t b = 0; b < B; ++b)
    s.coins.data<int64_t>()[b] = coin_u.data<float>()[b] < static_cast<float>(self_conditioning_p);
  return s;
}

DllmForward dllm_forward(const model::Gemma4& m, const DllmStep& s, double n_diff, double n_ar, double ar_weight,
                         bool training, bool keep_logits) {
  const io::ModelConfig& cfg = m.config();
  G4_CHECK(cfg.diffusion, "dllm_forward: not a diffusion_gemma model");
  const int64_t B = s.batch.rows(), S = s.batch.length();
  DllmForward out;

  // The encoder: causal over the clean rows, pad keys masked; its K/V (with their graph) are the
  // denoiser's prefix, so the diffusion loss trains the encoder pass too.
  model::StackAttention enc;
  model::StackAttention::Block all{0, S, {}};
  all.key_valid = {s.batch.attention_mask, s.batch.attention_mask};
  enc.blocks = {all};
  std::vector<model::LayerKV> kv;
  const ag::Var enc_hidden = m.run_stack(m.embed(s.batch.input_ids), model::arange_positions(B, S, 0), enc, true, &kv);

  model::StackAttention dec;
  dec.causal = false;
  dec.q_start = S;
  dec.prefix = std::move(kv);
  dec.blocks = training_blocks(s.window, S, cfg.sliding_window);
  auto denoise_hidden = [&](const Tensor& sc_logits, const Tensor& sc_mask) {
    return m.run_stack(canvas_input(m, s.window.canvas_ids, sc_logits, sc_mask), s.window.positions, dec, false,
                       nullptr);
  };

  Tensor sc_logits;
  if (training) {
    // Pass 1 is always run, without a tape; its raw softcapped logits (no temperature) are a
    // constant input of pass 2, gated per example by the coins.
    ag::NoGrad no_grad;
    sc_logits = m.logits(denoise_hidden({}, {})).value();
    if (keep_logits) out.sc_logits = sc_logits.to(Device::CPU);
  }
  const ag::Var hidden = training ? denoise_hidden(sc_logits, s.coins) : denoise_hidden({}, {});

  Tensor diff_targets = s.window.target_ids.clone();
  for (int64_t i = 0; i < diff_targets.numel(); ++i)
    if (s.window.loss_sel.data<int64_t>()[i] == 0) diff_targets.data<int64_t>()[i] = -100;
  out.loss = share_of_mean(m, hidden, diff_targets, s.window.scored(), n_diff, keep_logits, &out.logits);
  out.diffusion = item(out.loss);
  if (training) {
    const ag::Var ar =
        share_of_mean(m, enc_hidden, ar_targets(s.batch), ar_count(s.batch), n_ar, keep_logits, &out.encoder_logits);
    out.ar = item(ar);
    out.loss = ag::add(out.loss, ag::scale(ar, ar_weight));
  }
  return out;
}

namespace {

struct DiffusionBatch final : train::StepBatch {
  std::vector<DllmStep> micro;
  double n_diff = 1, n_ar = 1;
  int64_t micro_batches() const override { return static_cast<int64_t>(micro.size()); }
};

}  // namespace

DiffusionObjective::DiffusionObjective(DiffusionOptions options, parallel::Communicator& world)
    : opt_(std::move(options)), world_(world) {
  G4_CHECK(!opt_.train.empty(), "diffusion training: no training examples");
  G4_CHECK(opt_.batch_size > 0 && opt_.grad_accumulation > 0, "diffusion training: train.batch_size (", opt_.batch_size,
           ") and train.grad_accumulation (", opt_.grad_accumulation, ") must be positive");
  G4_CHECK(opt_.eps >= 0 && opt_.eps < 1, "diffusion training: dllm.eps must be in [0, 1), got ", opt_.eps);
}

void DiffusionObjective::configure(model::Gemma4& model) {
  const io::ModelConfig& cfg = model.config();
  G4_CHECK(cfg.diffusion, "diffusion training needs a diffusion_gemma model (model.path: a diffusion checkpoint)");
  vocab_ = cfg.vocab_size;
  if (opt_.block_size == 0) opt_.block_size = cfg.canvas_length;
  if (opt_.collate.pad_block_size == 0) opt_.collate.pad_block_size = opt_.block_size;
  G4_CHECK(opt_.block_size > 0, "diffusion training: dllm.block_size must be positive, got ", opt_.block_size);
}

std::vector<DllmExample> DiffusionObjective::examples(const std::vector<DllmExample>& from,
                                                      const SamplePlace& place) const {
  std::vector<DllmExample> rows;
  const auto n = static_cast<int64_t>(from.size());
  for (int64_t j = 0; j < place.local_batch_size; ++j)
    rows.push_back(from[static_cast<size_t>(place.global_index(j) % n)]);
  return rows;
}

std::unique_ptr<train::StepBatch> DiffusionObjective::next_batch() {
  G4_CHECK(vocab_ > 0, "DiffusionObjective: configure() before next_batch()");
  auto b = std::make_unique<DiffusionBatch>();
  SamplePlace place{step_, world_.rank(), world_.size(), opt_.batch_size, opt_.grad_accumulation, 0};
  Tensor counts = Tensor::zeros({2}, DType::F64);
  for (place.microbatch = 0; place.microbatch < opt_.grad_accumulation; ++place.microbatch) {
    const DllmBatch rows = collate(examples(opt_.train, place), opt_.collate);
    b->micro.push_back(
        prepare_step(rows, opt_.seed, place, vocab_, opt_.block_size, opt_.eps, opt_.self_conditioning_p));
    counts.data<double>()[0] += static_cast<double>(b->micro.back().window.scored());
    counts.data<double>()[1] += static_cast<double>(ar_count(rows));
  }
  if (world_.size() > 1) parallel::all_reduce_values(world_, counts);
  b->n_diff = std::max(1.0, counts.data<double>()[0]);
  b->n_ar = std::max(1.0, counts.data<double>()[1]);
  ++step_;
  return b;
}

train::MicroLoss DiffusionObjective::forward(const model::Gemma4& model, const train::StepBatch& batch, int64_t i) {
  const auto& b = static_cast<const DiffusionBatch&>(batch);
  DllmForward f =
      dllm_forward(model, b.micro[static_cast<size_t>(i)], b.n_diff, b.n_ar, opt_.encoder_loss_weight, true);
  train::MicroLoss r;
  r.loss = f.loss;
  r.metrics = {
      {"loss", f.diffusion + opt_.encoder_loss_weight * f.ar}, {"diffusion_loss", f.diffusion}, {"ar_loss", f.ar}};
  return r;
}

train::Metrics DiffusionObjective::validate(const model::Gemma4& model) {
  if (opt_.validation.empty()) return {};
  ag::NoGrad no_grad;
  const auto n = static_cast<int64_t>(opt_.validation.size());
  int64_t batches = (n + opt_.batch_size - 1) / opt_.batch_size;
  if (opt_.validation_batches > 0) batches = std::min(batches, opt_.validation_batches);
  // Every rank evaluates the same examples with the same draws (a replicated validation).
  std::vector<DllmStep> steps;
  double scored = 0;
  for (int64_t mb = 0; mb < batches; ++mb) {
    const SamplePlace place{0, 0, 1, opt_.batch_size, batches, mb};
    const DllmBatch rows = collate(examples(opt_.validation, place), opt_.collate);
    steps.push_back(prepare_step(rows, opt_.seed, place, vocab_, opt_.block_size, opt_.eps, 0.0));
    scored += static_cast<double>(steps.back().window.scored());
  }
  double loss = 0;
  for (const DllmStep& s : steps) loss += dllm_forward(model, s, std::max(1.0, scored), 1.0, 0.0, false).diffusion;
  return {{"validation_loss", loss}, {"validation_perplexity", std::exp(loss)}};
}

void DiffusionObjective::save(const std::filesystem::path&, nlohmann::json& state) {
  state["diffusion_step"] = step_;
}

void DiffusionObjective::load(const std::filesystem::path& dir, const nlohmann::json& state) {
  step_ = io::json_int(state, "diffusion_step", train::trainer_state_path(dir));
}

}  // namespace g4::diffusion

#include "model/gemma4.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "core/device_memory.h"
#include "core/env.h"
#include "core/random.h"
#include "model/audio_tower.h"
#include "model/rope_freqs.h"
#include "model/vision_tower.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/fused.h"
#include "ops/matmul.h"
#include "ops/moe.h"
#include "ops/paged_attention.h"

namespace g4::model {

// What one forward pass shares between layers: positions, masks and the K/V each layer
// produced (KV-shared layers read their source's entry).
struct Gemma4::Context {
  Tensor positions;   // [B, S] i64
  Tensor key_valid;   // optional [B, Sk]
  Tensor docs;        // optional [B, S] i32
  Tensor blocks;      // optional [B, S] i32: image blocks of sliding layers (vision_block_ids)
  // Context parallelism with media: the whole rows' input ids [B, S_all] (host), which say where
  // the slice's placeholders sit in the order the towers' soft tokens follow.
  Tensor whole_ids;
  // The multimodal inputs of a forward (run embeds them inside the prologue block).
  const ForwardInputs* mm = nullptr;
  // Generation (forward_paged): keys and values go through the pages instead of kv below.
  const PagedStep* step = nullptr;
  PagedKV* pages = nullptr;
  int64_t q_start = 0;
  // Block diffusion (run_stack): what attention sees, and which copy of the layer scalars applies.
  const StackAttention* stack = nullptr;
  bool encoder = false;
  // LoRA dropout: on in training forwards, with this forward's call number (model/lora.h).
  bool lora_dropout = false;
  uint64_t lora_call = 0;
  struct KV {
    ag::Var k, v;
    int64_t k_start = 0;
  };
  std::vector<KV> kv;
  std::vector<ag::Var> router_aux;  // per MoE layer, when the aux loss is on
  // Per MoE layer, the rows each held expert processed. Shared with the copies recomputed layers
  // get, so their counts reach the outputs too (a recomputation writes the same values again).
  std::shared_ptr<std::map<int64_t, std::vector<int64_t>>> expert_tokens =
      std::make_shared<std::map<int64_t, std::vector<int64_t>>>();
  // Per MoE layer whose plan skipped the host copy: its row offsets, still on the device; read into
  // expert_tokens once the forward has synchronised anyway (forward's loss).
  std::shared_ptr<std::map<int64_t, Tensor>> expert_offsets =
      std::make_shared<std::map<int64_t, Tensor>>();
  // Set by a fused inference layer that run_layers calls directly (chain_norms): the norm of its
  // output that comes next (the next layer's input norm, or after the last layer the final norm),
  // made in the kernel that made the output. A checkpointed layer runs on a copy of the context
  // without it: its recomputation, later and with gradients, must make its own input norm.
  bool chain_norms = false;
  ag::Var next_input;
};

Gemma4::Gemma4(io::ModelConfig config, ExpertRange experts, DType dtype, Device device,
               const std::function<bool(const std::string&)>& allocate)
    : cfg_(std::move(config)), experts_(experts), dtype_(dtype), device_(device) {
  fused_inference_ = env_int("G4_DECODE_FUSED", 1, 0, 1, "on") == 1;
  experts_beside_mlp_ = env_int("G4_DECODE_SIDE_STREAM", 1, 0, 1, "on") == 1;
  // A power of two (rounded down), as the engine's CUDA-graph buckets are: a decode step of n rows
  // then takes the same experts path eagerly and padded to its bucket, so both give the same bits.
  // The default, 32: on an H100 the grouped GEMMs tie the decode experts kernels at 32 tokens and win
  // above (1.07x at 64, 1.52x at 128; docs/performance.md).
  decode_experts_max_tokens_ = static_cast<int64_t>(std::bit_floor(static_cast<unsigned>(env_int(
      "G4_DECODE_EXPERTS_TOKENS", 32, 1, static_cast<int>(ops::kMoeExpertsMaxTokens), "32"))));
  if (device == Device::CPU)
    G4_CHECK(dtype == DType::F32 || dtype == DType::F64, "the CPU model computes in f32 or f64, not ", dtype_name(dtype));
  else
    G4_CHECK(dtype == DType::BF16 || dtype == DType::F32, "the GPU model computes in bf16 or f32, not ",
             dtype_name(dtype));
  G4_CHECK(static_cast<int64_t>(cfg_.layers.size()) == cfg_.num_layers, "model config has ", cfg_.layers.size(),
           " resolved layers for num_hidden_layers ", cfg_.num_layers);
  if (experts_.count == 0) experts_ = ExpertRange{0, cfg_.num_experts};
  G4_CHECK(experts_.begin >= 0 && experts_.count >= 0 && experts_.begin + experts_.count <= cfg_.num_experts &&
               (cfg_.enable_moe_block || experts.count == 0),
           "the model holds experts [", experts_.begin, ", ", experts_.begin + experts_.count, "), but its config has ",
           cfg_.enable_moe_block ? cfg_.num_experts : 0, " routed experts");
  for (const ParamSpec& s : native_param_specs(cfg_, experts_))
    params_.add(s.name, s.kind, !allocate || allocate(s.name) ? Tensor::zeros(s.shape, dtype_, device_) : Tensor());
  kv_source_.assign(static_cast<size_t>(cfg_.num_layers), false);
  for (const io::LayerSpec& ls : cfg_.layers)
    if (ls.kv_shared) kv_source_[static_cast<size_t>(ls.kv_source)] = true;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    params_.set_buffer(layer_prefix(l) + "layer_scalar", ParamKind::kLayerScalar, Tensor::full({1}, 1.0));
    if (cfg_.diffusion)
      params_.set_buffer(encoder_layer_scalar_name(l), ParamKind::kLayerScalar, Tensor::full({1}, 1.0));
    inv_freq_.push_back(rope_inv_freq(cfg_.layers[static_cast<size_t>(l)].rope,
                                      cfg_.layers[static_cast<size_t>(l)].head_dim)
                            .to(device_));
  }
  if (cfg_.vision) set_default_vision_buffers(params_, *cfg_.vision, Device::CPU);
  if (cfg_.has_audio && !cfg_.diffusion) set_default_audio_buffers(params_, cfg_.audio);
}

void Gemma4::init_weights(uint64_t seed, double std) {
  const std::vector<ParamSpec> specs = native_param_specs(cfg_, experts_);
  for (size_t i = 0; i < specs.size(); ++i) {
    Tensor& t = params_.at(specs[i].name).mutable_value();
    if (specs[i].kind == ParamKind::kNorm || specs[i].kind == ParamKind::kRouterScale) {
      t.fill(1.0);
      continue;
    }
    // As transformers' _init_weights: the vision position table starts at ones, the audio
    // attention's per-dimension scale at zero (softplus(0) for every dimension), biases at zero.
    const std::string& name = specs[i].name;
    if (name.ends_with("position_embedding_table") || name.ends_with("per_dim_scale") || name.ends_with(".bias")) {
      t.fill(name.ends_with("position_embedding_table") ? 1.0 : 0.0);
      continue;
    }
    // Drawn on the parameter's own device, element j of stream i, as f32 then rounded to dtype.
    fill_philox_normal(t, seed, i, std);
    if (is_embedding(specs[i].kind) && cfg_.pad_token_id >= 0 && cfg_.pad_token_id < t.size(0)) {
      Tensor pad_row = t.slice0(cfg_.pad_token_id, 1);
      pad_row.copy_from(Tensor::zeros(pad_row.shape(), t.dtype()));
    }
  }
  for (auto& [name, b] : params_.buffers)
    if (!is_tower_buffer(b.kind)) b.value.fill(1.0);
  // Unbounded clips and the identity standardisation, as transformers initialises them.
  if (cfg_.vision) set_default_vision_buffers(params_, *cfg_.vision, Device::CPU);
  if (cfg_.has_audio && !cfg_.diffusion) set_default_audio_buffers(params_, cfg_.audio);
}

std::unique_ptr<Gemma4> Gemma4::copy_to(Device device, DType dtype) const {
  auto m = std::make_unique<Gemma4>(cfg_, experts_, dtype, device);
  if (lora_) m->enable_lora(*lora_);
  for (const std::string& name : params_.order)
    m->params_.at(name).mutable_value().copy_from(params_.at(name).value().to(dtype));
  m->params_.buffers = params_.buffers;
  m->lora_calls_ = lora_calls_;
  m->recompute_ = recompute_;
  m->router_aux_coef_ = router_aux_coef_;
  return m;
}

void Gemma4::enable_lora(const LoraConfig& lora) {
  G4_CHECK(!lora_, "enable_lora: the model already has LoRA adapters");
  validate_lora(lora, "LoRA");
  const std::vector<LoraModule> modules = lora_modules(cfg_, lora);
  for (size_t i = 0; i < modules.size(); ++i) {
    const LoraModule& m = modules[i];
    // PEFT's kaiming_uniform_(a = sqrt(5)) on A [r, in]: bound = sqrt(6 / ((1 + 5) * in)) = 1 / sqrt(in).
    // An expert weight [E, in, out] gets A [E, in, r] and B [E, r, out]; its A is PEFT's [E·r, in], drawn alike.
    // A model holding an expert range (expert parallelism) keeps those experts' rows of the whole
    // draw, so every EP size starts from the same adapters.
    const double bound = 1.0 / std::sqrt(static_cast<double>(m.in));
    const uint64_t seed = lora.seed * 0x9E3779B97F4A7C15ull + i;
    const Shape a = m.experts ? Shape{m.experts, m.in, lora.rank} : Shape{lora.rank, m.in};
    const Shape b = m.experts ? Shape{experts_.count, lora.rank, m.out} : Shape{m.out, lora.rank};
    Tensor a_value = rand_uniform(a, seed, -bound, bound);
    if (m.experts && experts_.count != m.experts) a_value = a_value.slice0(experts_.begin, experts_.count).clone();
    params_.add(lora_a_name(m.name), m.experts ? ParamKind::kExpertLoraA : ParamKind::kLoraA,
                a_value.to(dtype_).to(device_));
    params_.add(lora_b_name(m.name), m.experts ? ParamKind::kExpertLoraB : ParamKind::kLoraB,
                Tensor::zeros(b, dtype_, device_));
  }
  lora_ = lora;
}

void Gemma4::start_lora_dropout(Context& ctx) const {
  if (!lora_ || lora_->dropout == 0 || !ag::grad_enabled()) return;
  ctx.lora_dropout = true;
  ctx.lora_call = lora_calls_++;
}

ag::Var Gemma4::proj(const ag::Var& x, const std::string& module, const Context& ctx) const {
  ag::Var y = ag::linear(x, p(module + ".weight"));
  if (!lora_active()) return y;
  const std::string a = lora_a_name(module);
  if (!params_.has(a)) return y;
  ag::Var in = x;
  if (ctx.lora_dropout)
    in = ag::mul(x, ag::Var(lora_dropout_mask(x.shape(), lora_->dropout, lora_->seed, ctx.lora_call, module,
                                              x.value().dtype(), device_)));
  return ag::add(y, ag::scale(ag::linear(ag::linear(in, p(a)), p(lora_b_name(module))), lora_->scaling()));
}

bool Gemma4::adapted(const std::string& module) const { return lora_active() && params_.has(lora_a_name(module)); }

std::vector<std::vector<std::string>> Gemma4::parameter_blocks() const {
  const int64_t L = cfg_.num_layers;
  std::vector<std::vector<std::string>> blocks(static_cast<size_t>(L + 2));
  for (const std::string& name : params_.order) {
    if (name.rfind("model.layers.", 0) == 0) {
      const int64_t l = std::stoll(name.substr(13));
      blocks[static_cast<size_t>(1 + l)].push_back(name);
    } else if (name == "model.norm.weight" || name == "lm_head.weight") {
      blocks[static_cast<size_t>(L + 1)].push_back(name);
    } else {
      blocks[0].push_back(name);
      if (name == "model.embed_tokens.weight" && cfg_.tie_word_embeddings)
        blocks[static_cast<size_t>(L + 1)].push_back(name);  // the LM head
    }
  }
  return blocks;
}

Tensor shift_labels(const Tensor& labels) {
  G4_CHECK(labels.dim() == 2, "labels must be [B, S], got ", labels.describe());
  const int64_t B = labels.size(0), S = labels.size(1);
  Tensor t = Tensor::empty({B, S}, DType::I64);
  int64_t* o = t.data<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) o[b * S + s] = s + 1 < S ? element_as_int(labels, b * S + s + 1) : -100;
  return t;
}

Tensor document_ids_from_positions(const Tensor& pos) {
  G4_CHECK(pos.dim() == 2, "position_ids must be [B, S], got ", pos.describe());
  const int64_t B = pos.size(0), S = pos.size(1);
  Tensor t = Tensor::empty({B, S}, DType::I32);
  int32_t* o = t.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int32_t doc = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (s > 0 && element_as_int(pos, b * S + s) != element_as_int(pos, b * S + s - 1) + 1) ++doc;
      o[b * S + s] = doc;
    }
  }
  return t;
}

namespace {
// Columns [start, start + len) of host rows [B, S] (a context-parallel slice of whole-row ids).
Tensor local_columns(const Tensor& rows, int64_t start, int64_t len) {
  return ops::narrow(rows, 1, start, len).clone();
}
}  // namespace

Tensor arange_positions(int64_t B, int64_t S, int64_t start) {
  Tensor t = Tensor::empty({B, S}, DType::I64);
  int64_t* p = t.data<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) p[b * S + s] = start + s;
  return t;
}

ForwardOutputs Gemma4::forward(const ForwardInputs& in) const {
  G4_CHECK(in.input_ids.defined() && in.input_ids.dim() == 2, "input_ids must be [B, S], got ",
           in.input_ids.describe());
  const int64_t B = in.input_ids.size(0), S = in.input_ids.size(1);
  for (const Tensor* t : {&in.attention_mask, &in.position_ids, &in.labels, &in.targets})
    if (t->defined())
      G4_CHECK(t->shape() == in.input_ids.shape(), "attention_mask/position_ids/labels/targets must match input_ids ",
               shape_str(in.input_ids.shape()), ", got ", t->describe());
  G4_CHECK(!(in.labels.defined() && in.targets.defined()), "give labels or targets (labels already shifted), not both");
  G4_CHECK(!in.return_token_logprobs || in.labels.defined() || in.targets.defined(),
           "return_token_logprobs: the log-probs are of the targets; give labels or targets");
  Context ctx;
  ctx.encoder = cfg_.diffusion;  // a diffusion model's plain forward is its causal encoder (AR logits)
  start_lora_dropout(ctx);
  if (context_) {
    G4_CHECK(in.position_ids.defined(), "context parallelism: forward needs the global position_ids of its slice");
    G4_CHECK(!in.labels.defined(), "context parallelism: pass targets (labels shifted over the whole sequence "
             "before sharding, parallel::shard_batch), not labels");
    ctx.q_start = context_->slice_start(S);
    ctx.positions = in.position_ids.to(DType::I64);
    ctx.docs = local_columns(document_ids_from_positions(context_->whole_rows(ctx.positions)), ctx.q_start, S);
    // The towers' soft tokens follow the placeholders of whole rows (every rank's media are the whole
    // batch's: parallel::enable_context_parallel).
    const bool media = in.pixel_values.defined() || in.pixel_values_videos.defined() || in.input_features.defined();
    if (media) ctx.whole_ids = context_->whole_rows(in.input_ids);
  } else {
    ctx.positions = in.position_ids.defined() ? in.position_ids.to(DType::I64) : arange_positions(B, S, 0);
    if (in.position_ids.defined()) ctx.docs = document_ids_from_positions(ctx.positions);
  }
  if (in.attention_mask.defined()) ctx.key_valid = in.attention_mask;
  if (in.mm_token_type_ids.defined()) {
    G4_CHECK(in.mm_token_type_ids.shape() == in.input_ids.shape(), "mm_token_type_ids ",
             in.mm_token_type_ids.describe(), " must match input_ids ", shape_str(in.input_ids.shape()));
    // transformers' create_masks_for_vision_model: only "vision" models, only sliding layers.
    // Under context parallelism the blocks are numbered over whole rows, so an image crossing a
    // slice boundary has one id on both sides.
    if (cfg_.bidirectional == "vision")
      ctx.blocks = context_ ? local_columns(vision_block_ids(context_->whole_rows(in.mm_token_type_ids)), ctx.q_start, S)
                            : vision_block_ids(in.mm_token_type_ids);
  }
  ctx.mm = &in;
  // The batch is prepared on the host (positions, document ids, counts) and uploaded once.
  if (device_ != Device::CPU) {
    ctx.positions = ctx.positions.to(device_);
    if (ctx.docs.defined()) ctx.docs = ctx.docs.to(device_);
    if (ctx.key_valid.defined()) ctx.key_valid = ctx.key_valid.to(device_);
    if (ctx.blocks.defined()) ctx.blocks = ctx.blocks.to(device_);
  }
  ForwardOutputs out;
  // The placeholders are mapped on the host, before the ids are uploaded (no copy back).
  const ag::Var hidden = run(text_ids(in.input_ids).to(device_), ctx.positions, ctx);
  out.expert_tokens = *ctx.expert_tokens;
  const bool has_targets = in.labels.defined() || in.targets.defined();
  if (in.return_logits || !has_targets) out.logits = logits_of(hidden);
  if (has_targets) {
    const Tensor targets = in.targets.defined() ? in.targets.to(DType::I64) : shift_labels(in.labels);
    for (int64_t i = 0; i < targets.numel(); ++i) out.counted_tokens += targets.data<int64_t>()[i] != -100;
    const double softcap = cfg_.final_logit_softcapping.value_or(0.0);
    if (in.return_token_logprobs) {
      // Always the fused LM head, on every device: the RL losses take only these log-probs, so
      // there is no loss here (out.loss undefined, and no router aux term is added to anything).
      out.token_logprobs = ag::reshape(
          ag::linear_token_logprobs(hidden, lm_head(), targets.to(device_), softcap, in.logprob_temperature), {B, S});
    } else if (out.logits.defined() && device_ == Device::CPU) {
      out.loss = ag::cross_entropy_mean(out.logits, targets.to(device_));
    } else {
      // On the GPU the loss always takes the fused path: softcap and cross-entropy in fp32 from the
      // bf16 matmul, never from rounded bf16 logits (the logits returned are for the caller).
      out.loss = ag::linear_cross_entropy(hidden, lm_head(), targets.to(device_), out.counted_tokens, softcap);
    }
    if (out.loss.defined()) out.cross_entropy = out.loss.value().item();
    if (!ctx.router_aux.empty()) {
      ag::Var aux = ctx.router_aux[0];
      for (size_t i = 1; i < ctx.router_aux.size(); ++i) aux = ag::add(aux, ctx.router_aux[i]);
      aux = ag::scale(aux, 1.0 / static_cast<double>(ctx.router_aux.size()));
      out.router_aux = aux.value().item();  // reported either way
      if (out.loss.defined()) out.loss = ag::add(out.loss, ag::scale(aux, router_aux_coef_));
    }
  }
  for (const auto& [layer, offsets] : *ctx.expert_offsets) {
    const Tensor host = offsets.to(Device::CPU);
    std::vector<int64_t>& counts = out.expert_tokens[layer];
    counts.clear();
    for (int64_t e = 0; e + 1 < host.numel(); ++e)
      counts.push_back(host.data<int64_t>()[e + 1] - host.data<int64_t>()[e]);
  }
  exit_block(cfg_.num_layers + 1);
  return out;
}

Tensor Gemma4::forward_paged(const PagedStep& step, PagedKV& kv) const {
  G4_CHECK(step.ids.defined() && step.ids.dim() == 1, "forward_paged: ids must be [T], got ", step.ids.describe());
  const int64_t T = step.ids.size(0);
  G4_CHECK(step.positions.defined() && step.positions.shape() == step.ids.shape(), "forward_paged: positions ",
           step.positions.describe(), " must match ids ", step.ids.describe());
  G4_CHECK(static_cast<int64_t>(kv.k.size()) == cfg_.num_layers, "forward_paged: the paged KV was made for another model");
  G4_CHECK(!context_, "context parallelism is for training forwards; generation runs on one rank");
  G4_CHECK(cfg_.bidirectional != "all", "forward_paged: a model with bidirectional attention over all tokens cannot "
           "be decoded incrementally");
  ag::NoGrad no_grad;
  Context ctx;
  ctx.step = &step;
  ctx.pages = &kv;
  ctx.positions = step.positions.reshape({1, T});
  const Tensor hidden = run(step.ids.reshape({1, T}), ctx.positions, ctx).value().reshape({T, cfg_.hidden_size});
  if (step.logit_rows.numel() == 0) {  // a step of prompt chunks only: no product of no rows
    exit_block(cfg_.num_layers + 1);
    return Tensor::empty({0, cfg_.vocab_size}, DType::F32, device_);
  }
  const Tensor rows = ops::embedding(hidden, step.logit_rows);
  const Tensor logits = step.head_product_only ? ops::linear(rows, lm_head().value()) : head_logits(rows);
  exit_block(cfg_.num_layers + 1);
  return logits;
}

Tensor Gemma4::head_logits(const Tensor& hidden) const {
  Tensor logits = ops::linear(hidden, lm_head().value());
  // bf16 products are widened before the softcap (the training loss's arithmetic), in the same
  // pass; f64 stays f64 through it.
  if (cfg_.final_logit_softcapping) {
    logits = logits.dtype() == DType::BF16 ? ops::softcap_to_f32(logits, *cfg_.final_logit_softcapping)
                                           : ops::softcap(logits, *cfg_.final_logit_softcapping);
  }
  if (logits.dtype() != DType::F32) logits = logits.to(DType::F32);
  return logits;
}

ag::Var Gemma4::run(const Tensor& ids, const Tensor& positions, Context& ctx) const {
  const int64_t B = ids.size(0), S = ids.size(1), H = cfg_.hidden_size, L = cfg_.num_layers;
  const int64_t P = cfg_.hidden_size_per_layer_input;
  ctx.kv.assign(static_cast<size_t>(L), {});
  enter_block(0);
  const Tensor& llm_ids = ids;
  ag::Var h = embed(llm_ids);
  if (ctx.mm) h = merge_multimodal(h, ctx.mm->input_ids, *ctx.mm, ctx);
  if (ctx.step && ctx.step->soft_tokens.defined()) {
    // Each token takes its row of [embeddings ; soft tokens] (no tape: generation only).
    const Tensor table = ops::concat({h.value().reshape({S, H}), ctx.step->soft_tokens}, 0);
    h = ag::Var(ops::embedding(table, ctx.step->merge_rows).reshape({B, S, H}));
  }

  ag::Var ple;
  if (P > 0) {
    // The token half from the placeholder-free ids, the projection from the merged embeddings
    // (transformers' project_per_layer_inputs runs on the merged inputs_embeds).
    const double tok_scale = static_cast<float>(std::sqrt(static_cast<double>(P)));
    ag::Var tok =
        ag::scale(ag::embedding(p("model.embed_tokens_per_layer.weight"), llm_ids, cfg_.pad_token_id), tok_scale);
    ag::Var proj = ag::scale(ag::linear(h, p("model.per_layer_model_projection.weight")), std::pow(H, -0.5));
    proj = ag::rmsnorm(ag::reshape(proj, {B, S, L, P}), p("model.per_layer_projection_norm.weight"), cfg_.rms_norm_eps);
    ple = ag::scale(ag::add(proj, ag::reshape(tok, {B, S, L, P})), std::pow(2.0, -0.5));
  }
  exit_block(0);
  return run_layers(h, ple, ctx);
}

int64_t Gemma4::text_id(int64_t id) const {
  const bool placeholder =
      (cfg_.vision && (id == cfg_.vision->image_token_id || id == cfg_.vision->video_token_id)) ||
      (cfg_.conditional && cfg_.has_audio && id == cfg_.audio_token_id);
  return placeholder ? cfg_.pad_token_id : id;
}

std::vector<int64_t> Gemma4::placeholder_ids() const {  // the ids of text_id's test
  std::vector<int64_t> ids;
  if (cfg_.vision) ids = {cfg_.vision->image_token_id, cfg_.vision->video_token_id};
  if (cfg_.conditional && cfg_.has_audio) ids.push_back(cfg_.audio_token_id);
  return ids;
}

Tensor Gemma4::text_ids(const Tensor& ids) const {
  if (!cfg_.vision && !(cfg_.conditional && cfg_.has_audio)) return ids;
  Tensor host = ids.to(Device::CPU).to(DType::I64);
  bool changed = false;
  for (int64_t i = 0; i < host.numel(); ++i) {
    int64_t& id = host.data<int64_t>()[i];
    const int64_t mapped = text_id(id);
    changed = changed || mapped != id;
    id = mapped;
  }
  return changed ? host : ids;
}

SoftTokens Gemma4::soft_tokens(const ForwardInputs& in) const {
  G4_CHECK(in.pixel_values.defined() == in.image_position_ids.defined(),
           "give pixel_values and image_position_ids together");
  G4_CHECK(!in.pixel_values.defined() || cfg_.vision, "pixel_values given, but the model has no vision tower");
  G4_CHECK(in.pixel_values_videos.defined() == in.video_position_ids.defined(),
           "give pixel_values_videos and video_position_ids together");
  G4_CHECK(!in.pixel_values_videos.defined() || cfg_.vision,
           "pixel_values_videos given, but the model has no vision tower");
  G4_CHECK(in.input_features.defined() == in.input_features_mask.defined(),
           "give input_features and input_features_mask together");
  G4_CHECK(!in.input_features.defined() || (cfg_.conditional && cfg_.has_audio),
           "input_features given, but the model has no audio tower");
  SoftTokens out;
  if (in.pixel_values.defined())
    out.image = vision_forward(params_, *cfg_.vision, {in.pixel_values, in.image_position_ids}, dtype_, device_).projected;
  if (in.pixel_values_videos.defined()) {
    // get_video_features: videos x frames flattened into one batch of images for the same tower.
    const Tensor& pv = in.pixel_values_videos;
    const Tensor& pos = in.video_position_ids;
    G4_CHECK(pv.dim() == 4 && pos.dim() == 4 && pos.size(0) == pv.size(0) && pos.size(1) == pv.size(1),
             "pixel_values_videos ", pv.describe(), " and video_position_ids ", pos.describe(),
             " must be [videos, frames, P, 3·patch²] and [videos, frames, P, 2]");
    const int64_t frames = pv.size(0) * pv.size(1);
    out.video = vision_forward(params_, *cfg_.vision,
                               {pv.reshape({frames, pv.size(2), pv.size(3)}), pos.reshape({frames, pos.size(2), pos.size(3)})},
                               dtype_, device_)
                    .projected;
  }
  if (in.input_features.defined())
    out.audio = AudioTower::from_params(params_, cfg_).soft_tokens(in.input_features, in.input_features_mask);
  return out;
}

ag::Var Gemma4::merge_multimodal(const ag::Var& h, const Tensor& ids, const ForwardInputs& in, const Context& ctx) const {
  ag::Var out = h;
  const Tensor host_ids = ids.to(Device::CPU);
  const bool sliced = ctx.whole_ids.defined();
  const int64_t S = host_ids.size(1);
  auto holds = [](const Tensor& t, int64_t token_id) {
    for (int64_t i = 0; i < t.numel(); ++i)
      if (element_as_int(t, i) == token_id) return true;
    return false;
  };
  const int64_t image_id = cfg_.vision ? cfg_.vision->image_token_id : -1;
  const int64_t video_id = cfg_.vision ? cfg_.vision->video_token_id : -1;
  const int64_t audio_id = cfg_.audio_token_id;
  // A context-parallel slice skips a tower whose placeholders all lie on other slices (its soft
  // tokens would not be used here; the tower's gradient then comes from the ranks that use them).
  // Media without any placeholder in the whole rows still go through, so that the count check
  // below names the mismatch as on one rank.
  ForwardInputs media = in;
  if (sliced) {
    auto skip = [&](int64_t token_id) { return holds(ctx.whole_ids, token_id) && !holds(host_ids, token_id); };
    if (skip(image_id)) media.pixel_values = media.image_position_ids = Tensor();
    if (skip(video_id)) media.pixel_values_videos = media.video_position_ids = Tensor();
    if (skip(audio_id)) media.input_features = media.input_features_mask = Tensor();
  }
  const SoftTokens soft = soft_tokens(media);
  auto place = [&](const ag::Var& features, int64_t token_id) {
    if (!features.defined()) return;
    const ag::Var mine = sliced ? slice_soft_tokens(features, ctx.whole_ids, token_id, ctx.q_start, S) : features;
    if (mine.defined()) out = merge_soft_tokens(out, host_ids, token_id, mine);
  };
  // transformers' order: images, then videos, then audio (each fills its own placeholder id).
  place(soft.image, image_id);
  place(soft.video, video_id);
  place(soft.audio, audio_id);
  return out;
}

ag::Var Gemma4::run_layers(ag::Var h, const ag::Var& ple, Context& ctx) const {
  const int64_t L = cfg_.num_layers;
  for (int64_t l = 0; l < L; ++l) {
    enter_block(1 + l);
    // Layers whose K/V later layers reuse, or whose router feeds the aux loss, keep their graph;
    // so do block-diffusion calls, whose keys a later call reads.
    const bool keeps_graph = kv_source_[static_cast<size_t>(l)] || ctx.stack ||
                             (router_aux_coef_ > 0 && cfg_.layers[static_cast<size_t>(l)].moe);
    if (recompute_ && !ctx.step && !keeps_graph) {
      // The recomputation runs during backward, after this frame is gone: it gets its own copy
      // of the context (positions and masks; this layer's K/V slot is rewritten).
      ctx.next_input = ag::Var();
      auto saved = std::make_shared<Context>(ctx);
      saved->chain_norms = false;
      h = ag::checkpoint([this, l, saved](const std::vector<ag::Var>& in) { return layer(l, in[0], in[1], *saved); },
                         {h, ple});
    } else {
      ctx.chain_norms = true;
      h = layer(l, h, ple, ctx);
    }
    exit_block(1 + l);
  }
  // The epilogue block ends in forward / forward_paged, after the LM head and the loss.
  enter_block(L + 1);
  if (ctx.next_input.defined()) return std::exchange(ctx.next_input, ag::Var());
  return ag::rmsnorm(h, p("model.norm.weight"), cfg_.rms_norm_eps);
}

ag::Var Gemma4::embed(const Tensor& ids) const {
  G4_CHECK(ids.defined() && ids.dim() == 2, "embed: ids must be [B, n], got ", ids.describe());
  // The embedding scale is a weight-dtype number (bf16 rounds sqrt(3072) to 55.5); fp32 here.
  const double embed_scale = static_cast<float>(std::sqrt(static_cast<double>(cfg_.hidden_size)));
  return ag::scale(ag::embedding(p("model.embed_tokens.weight"), ids.to(device_), cfg_.pad_token_id), embed_scale);
}

ag::Var Gemma4::run_stack(const ag::Var& x, const Tensor& positions, const StackAttention& attn, bool encoder,
                          std::vector<LayerKV>* kv_out) const {
  G4_CHECK(x.defined() && x.shape().size() == 3 && x.shape()[2] == cfg_.hidden_size, "run_stack: x must be [B, n, ",
           cfg_.hidden_size, "], got ", shape_str(x.shape()));
  const int64_t B = x.shape()[0], n = x.shape()[1];
  G4_CHECK(positions.defined() && positions.shape() == Shape({B, n}), "run_stack: positions ", positions.describe(),
           " must be [", B, ", ", n, "]");
  G4_CHECK(cfg_.hidden_size_per_layer_input == 0 && cfg_.num_kv_shared_layers == 0,
           "run_stack: models with per-layer inputs or KV sharing are not run this way");
  G4_CHECK(!context_, "run_stack: context parallelism is not supported here");
  G4_CHECK(!hooks_ || hooks_->whole(),
           "run_stack: gather the sharded parameters first (the hooks that gather block by block are not called here)");
  G4_CHECK(attn.prefix.empty() || static_cast<int64_t>(attn.prefix.size()) == cfg_.num_layers, "run_stack: ",
           attn.prefix.size(), " prefix layers for a model of ", cfg_.num_layers);
  int64_t next = 0;
  for (const StackAttention::Block& b : attn.blocks) {
    G4_CHECK(b.begin == next && b.end > b.begin && b.end <= n, "run_stack: query blocks must cover [0, ", n,
             ") in order; got [", b.begin, ", ", b.end, ") after ", next);
    next = b.end;
  }
  G4_CHECK(next == n, "run_stack: the query blocks cover [0, ", next, ") of ", n, " rows");
  G4_CHECK(!attn.causal || attn.blocks.size() == 1, "run_stack: a causal call has one query block");
  Context ctx;
  ctx.stack = &attn;
  ctx.encoder = encoder;
  start_lora_dropout(ctx);
  ctx.positions = positions.to(DType::I64).to(device_);
  ctx.kv.assign(static_cast<size_t>(cfg_.num_layers), {});
  const ag::Var hidden = run_layers(x, ag::Var(), ctx);
  if (kv_out) {
    kv_out->clear();
    for (const Context::KV& kv : ctx.kv) kv_out->push_back({kv.k, kv.v, attn.q_start});
  }
  return hidden;
}

const ag::Var& Gemma4::lm_head() const {
  return cfg_.tie_word_embeddings ? p("model.embed_tokens.weight") : p("lm_head.weight");
}

ag::Var Gemma4::logits_of(const ag::Var& hidden) const {
  ag::Var logits = ag::linear(hidden, lm_head());
  if (cfg_.final_logit_softcapping) logits = ag::softcap(logits, *cfg_.final_logit_softcapping);
  return logits;
}

ag::Var Gemma4::layer(int64_t l, const ag::Var& h_in, const ag::Var& ple, Context& ctx) const {
  const std::string pre = layer_prefix(l);
  const double eps = cfg_.rms_norm_eps;
  const io::LayerSpec& ls = cfg_.layers[static_cast<size_t>(l)];
  // Without gradients the norm sequences may run fused (ops/fused.h): the same values, fewer kernels.
  const bool fused = fused_inference_ && !ag::grad_enabled();
  // residual + rmsnorm(a, w), then times `scale`.
  const auto add_normed = [&](const ag::Var& residual, const ag::Var& a, const std::string& w, double scale) {
    if (fused) return ag::Var(ops::add_rmsnorm(residual.value(), a.value(), p(w).value(), scale, eps));
    const ag::Var h = ag::add(residual, ag::rmsnorm(a, p(w), eps));
    return scale == 1.0 ? h : ag::scale(h, scale);
  };
  // The input norm, unless the layer before made it with its output.
  const ag::Var x = ctx.next_input.defined() ? std::exchange(ctx.next_input, ag::Var())
                                             : ag::rmsnorm(h_in, p(pre + "input_layernorm.weight"), eps);
  // Fused, the attention's output projection joins the residual in the op that makes the norms of the
  // sum (one GEMV launch at decode sizes).
  const std::string o_proj = pre + "self_attn.o_proj";
  const bool o_joins = fused && !adapted(o_proj);
  const ag::Var heads = attention_heads(l, x, ctx);
  const ag::Var a = o_joins ? ag::Var() : proj(heads, o_proj, ctx);
  ag::Var h, m;
  MoeInputs moe_in;
  if (fused) {
    // The residual and every norm that reads it in one pass: the MLP's input, and an MoE layer's
    // router input (its scale times H^-1/2, as route computes it) and experts input.
    std::vector<ops::NormOfSum> norms{{p(pre + "pre_feedforward_layernorm.weight").value(), 1.0}};
    if (ls.moe) {
      norms.push_back({p(pre + "moe.gate.scale").value(), std::pow(static_cast<double>(cfg_.hidden_size), -0.5)});
      norms.push_back({p(pre + "pre_feedforward_layernorm_2.weight").value(), 1.0});
    }
    const Tensor& post_attention = p(pre + "post_attention_layernorm.weight").value();
    std::vector<Tensor> outs =
        o_joins ? ops::linear_add_rmsnorm_norms(heads.value(), p(o_proj + ".weight").value(), h_in.value(),
                                                post_attention, eps, norms)
                : ops::add_rmsnorm_norms(h_in.value(), a.value(), post_attention, eps, norms);
    h = ag::Var(outs[0]);
    m = ag::Var(outs[1]);
    if (ls.moe) moe_in = {ag::Var(outs[2]), ag::Var(outs[3])};
  } else {
    h = add_normed(h_in, a, pre + "post_attention_layernorm.weight", 1.0);
    m = ag::rmsnorm(h, p(pre + "pre_feedforward_layernorm.weight"), eps);
  }
  const ag::Var residual = h;
  const double layer_scalar =
      params_.buffer(ctx.encoder ? encoder_layer_scalar_name(l) : pre + "layer_scalar").item();
  // Fused, the layer's output comes with the norm that reads it next (when every parameter is at
  // hand: hooks that gather block by block have not gathered the next block's yet).
  const bool chain = fused && ctx.chain_norms && !(hooks_ && !hooks_->whole());
  const auto next_norm = [&]() -> std::vector<ops::NormOfSum> {
    const std::string next = l + 1 < cfg_.num_layers ? layer_prefix(l + 1) + "input_layernorm.weight" : "model.norm.weight";
    return {{p(next).value(), 1.0}};
  };
  const auto chained = [&](std::vector<Tensor> outs) {
    ctx.next_input = ag::Var(outs[1]);
    return ag::Var(outs[0]);
  };
  // The layer's output, add_normed(residual, a, w, layer_scalar).
  const auto output = [&](const ag::Var& residual_in, const ag::Var& a_in, const std::string& w) {
    if (!chain) return add_normed(residual_in, a_in, w, layer_scalar);
    return chained(ops::add_rmsnorm_norms(residual_in.value(), a_in.value(), p(w).value(), eps, next_norm(), layer_scalar));
  };
  // residual + rmsnorm(in projected by `module`, w), as the layer's output when `last`; fused (unless
  // adapters change the product), one op: a GEMV launch at decode sizes. `lora`: the unfused product
  // takes the module's adapter.
  const auto joined = [&](const ag::Var& in, const std::string& module, const ag::Var& residual_in,
                          const std::string& w, bool last, bool lora) {
    if (fused && !adapted(module)) {
      const Tensor& wp = p(module + ".weight").value();
      if (last && chain)
        return chained(ops::linear_add_rmsnorm_norms(in.value(), wp, residual_in.value(), p(w).value(), eps,
                                                     next_norm(), layer_scalar));
      return ag::Var(ops::linear_add_rmsnorm_norms(in.value(), wp, residual_in.value(), p(w).value(), eps, {},
                                                   last ? layer_scalar : 1.0)[0]);
    }
    const ag::Var product = lora ? proj(in, module, ctx) : ag::linear(in, p(module + ".weight"));
    return last ? output(residual_in, product, w) : add_normed(residual_in, product, w, 1.0);
  };
  const auto gated_half = [&] {
    // Fused, the gate and up products and the gate run as one op (one pass over both weights at
    // decode sizes), unless adapters change those products.
    if (fused && !adapted(pre + "mlp.gate_proj") && !adapted(pre + "mlp.up_proj"))
      m = ag::Var(ops::gelu_gate_linear(m.value(), p(pre + "mlp.gate_proj.weight").value(),
                                        p(pre + "mlp.up_proj.weight").value()));
    else
      m = ag::gelu_gate(proj(m, pre + "mlp.gate_proj", ctx), proj(m, pre + "mlp.up_proj", ctx));
  };
  const std::string down = pre + "mlp.down_proj";
  const auto dense_mlp = [&] {
    gated_half();
    m = proj(m, down, ctx);
  };
  // A dense layer's down projection joins the residual with the norm after it (joined).
  const bool down_joins = !ls.moe && fused && !adapted(down);
  if (ls.moe) {
    const ag::Var& w1 = p(pre + "post_feedforward_layernorm_1.weight");
    const ag::Var& w2 = p(pre + "post_feedforward_layernorm_2.weight");
    if (fused) {
      // The dense MLP and the routed experts read the same residual and not each other: on the GPU
      // the experts (router, top-k, expert weights) go on a second stream beside the dense MLP, so
      // the router's latency-bound kernels overlap the MLP's weight reads. Not under expert
      // parallelism, whose exchanges run on their own schedule.
      ag::Var routed;
      const auto experts = [&] { routed = moe_block(l, residual, ctx, &moe_in); };
      if (device_ == Device::CUDA && !dispatcher_ && experts_beside_mlp_) {
        run_side_by_side(experts, dense_mlp);
      } else {
        dense_mlp();
        experts();
      }
      // Without per-layer inputs the two outputs' norms, their sum, the output and the next norm in one op.
      if (chain && !ple.defined())
        return chained(ops::rmsnorm_sum_add_norms(m.value(), w1.value(), routed.value(), w2.value(), residual.value(),
                                                  p(pre + "post_feedforward_layernorm.weight").value(), eps, next_norm(),
                                                  layer_scalar));
      m = ag::Var(ops::rmsnorm_sum(m.value(), w1.value(), routed.value(), w2.value(), eps));
    } else {
      dense_mlp();
      ag::Var dense = ag::rmsnorm(m, w1, eps);
      ag::Var routed = ag::rmsnorm(moe_block(l, residual, ctx), w2, eps);
      m = ag::add(dense, routed);
    }
  } else if (down_joins) {
    gated_half();
  } else {
    dense_mlp();
  }
  // Without per-layer inputs the layer scalar comes right after the residual sum.
  const std::string post_feedforward = pre + "post_feedforward_layernorm.weight";
  if (!ple.defined())
    return down_joins ? joined(m, down, residual, post_feedforward, true, true) : output(residual, m, post_feedforward);
  h = down_joins ? joined(m, down, residual, post_feedforward, false, true) : add_normed(residual, m, post_feedforward, 1.0);

  const int64_t B = h.shape()[0], S = h.shape()[1], P = cfg_.hidden_size_per_layer_input;
  if (fused) {
    // The same values in five kernels fewer: the gate's product, gelu and product with the per-layer
    // input in one op (one GEMV at decode sizes), the norm, the sum and the layer scalar in one, and
    // at one row (a batch-1 decode step) the layer's slice of the per-layer inputs as a view, not a
    // copy.
    const Tensor ple_l = B * S == 1 ? ple.value().reshape({-1, P}).slice0(l, 1).reshape({B, S, P})
                                    : ag::reshape(ag::narrow(ple, 2, l, 1), {B, S, P}).value();
    const Tensor gate = ops::gelu_tanh_mul_linear(h.value(), p(pre + "per_layer_input_gate.weight").value(), ple_l);
    return joined(ag::Var(gate), pre + "per_layer_projection", h, pre + "post_per_layer_input_norm.weight", true, false);
  }
  {
    ag::Var ple_l = ag::reshape(ag::narrow(ple, 2, l, 1), {B, S, P});
    ag::Var g = ag::mul(ag::gelu_tanh(ag::linear(h, p(pre + "per_layer_input_gate.weight"))), ple_l);
    g = ag::rmsnorm(ag::linear(g, p(pre + "per_layer_projection.weight")), p(pre + "post_per_layer_input_norm.weight"), eps);
    h = ag::add(h, g);
  }
  return layer_scalar == 1.0 ? h : ag::scale(h, layer_scalar);
}

ag::Var Gemma4::attention_heads(int64_t l, const ag::Var& x, Context& ctx) const {
  const std::string pre = layer_prefix(l) + "self_attn.";
  const io::LayerSpec& ls = cfg_.layers[static_cast<size_t>(l)];
  const int64_t B = x.shape()[0], S = x.shape()[1], d = ls.head_dim, nkv = ls.num_kv_heads;
  const double eps = cfg_.rms_norm_eps;
  const Tensor& inv_freq = inv_freq_[static_cast<size_t>(l)];

  // Without gradients the projections of x may run as one op (one launch at decode sizes) and
  // each norm and rotation as one kernel (ops/fused.h).
  const bool fused = fused_inference_ && !ag::grad_enabled();
  std::vector<std::string> modules = {pre + "q_proj"};
  if (!ls.kv_shared) modules.push_back(pre + "k_proj");
  if (!ls.kv_shared && !ls.k_eq_v) modules.push_back(pre + "v_proj");
  std::vector<ag::Var> projected;
  if (fused && std::none_of(modules.begin(), modules.end(), [&](const std::string& m) { return adapted(m); })) {
    std::vector<Tensor> weights;
    for (const std::string& m : modules) weights.push_back(p(m + ".weight").value());
    for (Tensor& t : ops::linear_many(x.value(), weights)) projected.emplace_back(std::move(t));
  }
  // Unfused, each projection runs where it is used (the tape's order as before).
  const auto projection = [&](size_t i) { return projected.empty() ? proj(x, modules[i], ctx) : projected[i]; };
  ag::Var q = ag::reshape(projection(0), {B, S, cfg_.num_heads, d});
  if (fused && ctx.step) {
    // A paged step: q's norm and rotation, and the keys' and values' norms, rotation and page
    // writes, in one op (one kernel on the GPU); paged_attention then only attends.
    Tensor k_raw, v_raw, wk;
    if (!ls.kv_shared) {
      k_raw = projection(1).value().reshape({B, S, nkv, d});
      v_raw = ls.k_eq_v ? k_raw : projection(2).value().reshape({B, S, nkv, d});
      wk = p(pre + "k_norm.weight").value();
    }
    const int64_t owner = ls.kv_shared ? ls.kv_source : l;
    const Tensor qn = ops::norm_rope_write_kv(q.value(), p(pre + "q_norm.weight").value(), k_raw, wk, v_raw,
                                              ctx.positions, inv_freq, eps, ctx.pages->k[static_cast<size_t>(owner)],
                                              ctx.pages->v[static_cast<size_t>(owner)],
                                              ctx.step->slots[static_cast<size_t>(layer_kind(cfg_, l))]);
    const ag::Var o(paged_attention(l, qn, Tensor(), Tensor(), ctx));
    return ag::reshape(o, {B, S, cfg_.num_heads * d});
  }
  const auto norm_rope = [&](const ag::Var& t, const std::string& w) {
    return fused ? ag::Var(ops::rmsnorm_rope(t.value(), p(w).value(), ctx.positions, inv_freq, eps))
                 : ag::rope(ag::rmsnorm(t, p(w), eps), ctx.positions, inv_freq);
  };
  q = norm_rope(q, pre + "q_norm.weight");

  // This step's keys and values (a KV-shared layer reads its source's, or its source's pages).
  Context::KV own;
  Context::KV& kv = ctx.step ? own : ctx.kv[static_cast<size_t>(l)];
  if (ls.kv_shared) {
    if (!ctx.step) kv = ctx.kv[static_cast<size_t>(ls.kv_source)];
  } else {
    ag::Var k_raw = ag::reshape(projection(1), {B, S, nkv, d});
    ag::Var v_raw = ls.k_eq_v ? k_raw : ag::reshape(projection(2), {B, S, nkv, d});
    kv.k = norm_rope(k_raw, pre + "k_norm.weight");
    kv.v = ag::rmsnorm(v_raw, ag::Var(), eps);
    kv.k_start = ctx.q_start;
  }

  ag::Var o;
  if (ctx.stack) {
    o = stack_attention(l, q, kv.k, kv.v, ctx);
  } else if (ctx.step) {
    o = ls.kv_shared ? ag::Var(paged_attention(l, q.value(), Tensor(), Tensor(), ctx))
                     : ag::Var(paged_attention(l, q.value(), kv.k.value(), kv.v.value(), ctx));
  } else {
    ops::AttentionMask mask;
    mask.causal = cfg_.bidirectional != "all";
    if (ls.sliding && cfg_.sliding_window > 0)
      mask.window = mask.causal ? cfg_.sliding_window : cfg_.sliding_window / 2 + 1;
    mask.q_start = ctx.q_start;
    mask.k_start = kv.k_start;
    mask.key_valid = ctx.key_valid;
    mask.q_doc = ctx.docs;
    mask.k_doc = ctx.docs;
    if (ls.sliding && ctx.blocks.defined()) {
      mask.q_block = ctx.blocks;
      mask.k_block = ctx.blocks;
    }
    // Gemma 4 normalises q and k per head instead of scaling the scores: scale is 1.
    o = context_ ? context_->attend(q, kv.k, kv.v, mask, 1.0) : ag::attention(q, kv.k, kv.v, mask, 1.0);
  }
  return ag::reshape(o, {B, S, cfg_.num_heads * d});
}

ag::Var Gemma4::stack_attention(int64_t l, const ag::Var& q, const ag::Var& k, const ag::Var& v,
                                const Context& ctx) const {
  const StackAttention& attn = *ctx.stack;
  const io::LayerSpec& ls = cfg_.layers[static_cast<size_t>(l)];
  const AttnKind kind = layer_kind(cfg_, l);
  const LayerKV* prefix = attn.prefix.empty() ? nullptr : &attn.prefix[static_cast<size_t>(l)];
  const int64_t rows = q.shape()[1];
  std::vector<ag::Var> outs;
  for (const StackAttention::Block& b : attn.blocks) {
    auto rows_of = [&](const ag::Var& t) {
      return b.begin == 0 && b.end == rows ? t : ag::narrow(t, 1, b.begin, b.end - b.begin);
    };
    ag::Var kb = rows_of(k), vb = rows_of(v);
    if (prefix) {
      kb = ag::concat({prefix->k, kb}, 1);
      vb = ag::concat({prefix->v, vb}, 1);
    }
    ops::AttentionMask mask;
    mask.causal = attn.causal;
    if (attn.causal && ls.sliding && cfg_.sliding_window > 0) mask.window = cfg_.sliding_window;
    mask.q_start = attn.q_start + b.begin;
    mask.k_start = prefix ? prefix->start : mask.q_start;
    mask.key_valid = b.key_valid[static_cast<size_t>(kind)];
    if (mask.key_valid.defined() && mask.key_valid.device() != device_) mask.key_valid = mask.key_valid.to(device_);
    outs.push_back(ag::attention(rows_of(q), kb, vb, mask, 1.0));
  }
  return outs.size() == 1 ? outs[0] : ag::concat(outs, 1);
}

Tensor Gemma4::paged_attention(int64_t l, const Tensor& q, const Tensor& k, const Tensor& v, const Context& ctx) const {
  const io::LayerSpec& ls = cfg_.layers[static_cast<size_t>(l)];
  const int64_t T = q.size(1), owner = ls.kv_shared ? ls.kv_source : l;
  const AttnKind kind = layer_kind(cfg_, l);
  Tensor& k_pages = ctx.pages->k[static_cast<size_t>(owner)];
  Tensor& v_pages = ctx.pages->v[static_cast<size_t>(owner)];
  if (k.defined())
    ops::write_kv_pages(k.reshape({T, ls.num_kv_heads, ls.head_dim}), v.reshape({T, ls.num_kv_heads, ls.head_dim}),
                        k_pages, v_pages,
                        ctx.step->slots[static_cast<size_t>(kind)]);
  ops::PagedLayout layout = ctx.step->layout[static_cast<size_t>(kind)];
  layout.window = kind == AttnKind::kSliding ? cfg_.sliding_window : 0;
  if (ls.sliding) layout.q_last = ctx.step->q_last;  // the image blocks' rule, as forward's q_block/k_block
  if (ctx.step->dense && !layout.q_last.defined()) {
    // A prefill step (model::PagedStep::dense): the keys read back from the pools (so a KV-shared
    // layer reads its source's), attended with the dense op.
    const PagedStep::DenseKeys& d = *ctx.step->dense;
    const Tensor& rows = d.rows[static_cast<size_t>(kind)];
    const int64_t nkv = k_pages.size(2), row = nkv * ls.head_dim, K = rows.size(0);
    const Tensor kd = ops::embedding(k_pages.reshape({-1, row}), rows).reshape({1, K, nkv, ls.head_dim});
    const Tensor vd = ops::embedding(v_pages.reshape({-1, row}), rows).reshape({1, K, nkv, ls.head_dim});
    ops::AttentionMask mask;
    mask.window = layout.window;
    mask.q_start = d.q_start;
    mask.k_start = d.k_start[static_cast<size_t>(kind)];
    if (d.docs.defined()) {
      mask.q_doc = d.docs.reshape({1, T});
      mask.k_doc = mask.q_doc;
    }
    return ops::attention(q.reshape({1, T, cfg_.num_heads, ls.head_dim}), kd, vd, mask, 1.0)
        .reshape({T, cfg_.num_heads, ls.head_dim});
  }
  return ops::paged_attention(q.reshape({T, cfg_.num_heads, ls.head_dim}), k_pages, v_pages, layout, 1.0);
}

ag::Var Gemma4::moe_block(int64_t l, const ag::Var& residual, Context& ctx, const MoeInputs* normed) const {
  const std::string pre = layer_prefix(l);
  const double eps = cfg_.rms_norm_eps;
  const Shape shape = residual.shape();
  ag::Var flat = ag::reshape(residual, {-1, cfg_.hidden_size});

  // Inference on the GPU at decode sizes: the routed experts in one op that keeps the routing on
  // the device (no host synchronisation per layer), streaming each picked expert's weights once.
  // Block diffusion's canvases (run_stack) are hundreds of tokens per row: the grouped GEMMs serve them better.
  // Expert LoRA adapters run through the grouped GEMMs too (ops::moe_experts has no adapter).
  const ExpertLora adapters =
      expert_lora(*this, l, ctx.lora_dropout ? std::optional<uint64_t>(ctx.lora_call) : std::nullopt);
  // Nothing needs the experts' row counts on the host while the layer runs when the grouped
  // matmuls read them on the device, unless expert parallelism (which sizes its exchanges by them)
  // or the load-balancing loss (a constant made from them) does: the plan then skips its copy, the
  // layer's one host synchronisation, and the counts for the report are read after the forward.
  const bool aux_loss = router_aux_coef_ > 0 && !ctx.step && ag::grad_enabled();
  const ag::Var& gate_up = p(pre + "moe.experts.gate_and_up_projs");
  const ag::Var& down = p(pre + "moe.experts.down_projs");
  // (Expert LoRA adapters keep the copy: their rank need not suit the device kernels.)
  const bool host_offsets = dispatcher_ || aux_loss || adapters.active() ||
                            !ops::grouped_matmul_takes_device_offsets(flat.value(), gate_up.value()) ||
                            !ops::grouped_matmul_takes_device_offsets(flat.value(), down.value());
  // Above decode_experts_max_tokens_ the grouped GEMMs take the rows, but only where they read their
  // offsets on the device: a decode step captured in a CUDA graph cannot wait for the host.
  const int64_t T = flat.shape()[0];
  const bool decode_sized = !ag::grad_enabled() && device_ == Device::CUDA && dtype_ == DType::BF16 && !dispatcher_ &&
                            !ctx.stack && !adapters.active() &&
                            (T <= decode_experts_max_tokens_ || (T <= ops::kMoeExpertsMaxTokens && host_offsets));
  // The router sees the raw residual; the experts see the pre_feedforward_layernorm_2 output.
  const auto rows = [&](const ag::Var& v) { return ag::reshape(v, {-1, cfg_.hidden_size}); };
  const auto experts_input = [&] {
    return normed ? rows(normed->experts) : ag::rmsnorm(flat, p(pre + "pre_feedforward_layernorm_2.weight"), eps);
  };
  if (decode_sized) {
    // The routing stays on the device. A fused layer keeps no router probabilities: its softmax and
    // top-k run with the experts (in their first kernel at batch-1 sizes).
    if (normed) {
      const ag::Var logits = ag::linear(rows(normed->router), p(pre + "moe.gate.proj.weight"));
      return ag::reshape(ag::Var(ops::moe_experts_from_logits(experts_input().value(), logits.value(),
                                                              cfg_.top_k_experts, gate_up.value(), down.value())),
                         shape);
    }
    const Routing r = route(flat, p(pre + "moe.gate.scale"), p(pre + "moe.gate.proj.weight"), cfg_.top_k_experts, eps,
                            /*make_plan=*/false, host_offsets);
    const Tensor out =
        ops::moe_experts(experts_input().value(), r.weights.value(), r.indices, gate_up.value(), down.value());
    return ag::reshape(ag::Var(out), shape);
  }
  Routing routing =
      normed ? route_normed(rows(normed->router), p(pre + "moe.gate.proj.weight"), cfg_.top_k_experts,
                            /*make_plan=*/true, host_offsets)
             : route(flat, p(pre + "moe.gate.scale"), p(pre + "moe.gate.proj.weight"), cfg_.top_k_experts, eps,
                     /*make_plan=*/true, host_offsets);
  const ag::Var experts_in = experts_input();
  if (aux_loss) ctx.router_aux.push_back(load_balancing_loss(routing));
  const Tensor device_offsets = routing.plan.device_offsets;
  const TokenDispatcher::Inputs in{l, experts_in, routing.weights, std::move(routing.plan), experts_};
  LocalDispatcher local;
  std::vector<int64_t> counts;
  const ag::Var routed = routed_experts(dispatcher_ ? *dispatcher_ : local, in, gate_up, down, &counts, adapters);
  if (host_offsets) {
    (*ctx.expert_tokens)[l] = std::move(counts);
  } else {
    (*ctx.expert_offsets)[l] = device_offsets;
  }
  return ag::reshape(routed, shape);
}

}  // namespace g4::model

// The Gemma 4 text decoder (dense, per-layer embeddings, KV sharing, K=V attention, routed
// experts) computed exactly as Hugging Face transformers does; see docs/gemma4.md.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "autograd/variable.h"
#include "io/hf_config.h"
#include "model/lora.h"
#include "model/moe.h"
#include "model/paged_kv.h"
#include "model/params.h"
#include "ops/attention.h"

namespace g4::model {

struct ForwardInputs {
  Tensor input_ids;       // [B, S] integer ids
  Tensor attention_mask;  // optional [B, S]: 0 = padding (masked as a key)
  Tensor position_ids;    // optional [B, S]; positions restarting mark packed documents
  Tensor labels;          // optional [B, S]; shifted left inside; -100 = ignored
  // optional [B, S]: labels already shifted (what the loss compares logits with), instead of
  // labels. Context parallelism needs them: the shift crosses shard boundaries, so it is done on
  // the whole sequence before sharding.
  Tensor targets{};
  // false: training only needs the loss. The LM head and the cross-entropy then run fused, chunk
  // by chunk (ag::linear_cross_entropy), and ForwardOutputs::logits stays undefined; the full
  // [B, S, V] logits (262 144 columns for Gemma 4) are never stored.
  bool return_logits = true;
  // true: ForwardOutputs::token_logprobs instead of the loss (RL: log-probs of the targets, from the
  // fused LM head, differentiable; no cross-entropy is computed: loss stays undefined, and the router
  // aux loss is only reported in router_aux). Needs labels or targets. The logits still follow
  // return_logits (set it false so that [B, S, V] is never stored).
  bool return_token_logprobs = false;
  double logprob_temperature = 1.0;  // the logits (after the final softcap) are divided by it
  // Multimodal inputs (Gemma4ForConditionalGeneration), under transformers' names. Images: the
  // image processor's pixel_values [N, P, 3·patch²] and image_position_ids [N, P, 2]; their soft
  // tokens replace the image_token_id placeholders of input_ids in order.
  Tensor pixel_values{}, image_position_ids{};
  // optional [B, S]: 0 text, 1 image, 2 video, 3 audio. On a use_bidirectional_attention "vision"
  // model each run of image/video tokens attends both ways on sliding layers (window permitting).
  Tensor mm_token_type_ids{};
  // Audio: the feature extractor's input_features [clips, frames, 128] and input_features_mask
  // [clips, frames] (bool, valid frames first). The tower's soft tokens where its output mask is
  // true, in (clip, frame) order, replace the audio_token_id placeholders of input_ids.
  Tensor input_features{}, input_features_mask{};
  // Videos: the video processor's pixel_values_videos [videos, frames, P, 3·patch²] and
  // video_position_ids [videos, frames, P, 2]. Every frame goes through the vision tower as an
  // image would; the soft tokens, frame by frame in (video, frame) order, replace the
  // video_token_id placeholders (after the images' merge, before the audio's).
  Tensor pixel_values_videos{}, video_position_ids{};
};

struct ForwardOutputs {
  ag::Var logits;  // [B, S, V]
  // [] mean cross-entropy over counted tokens (+ router aux loss) when labels or targets are given,
  // unless return_token_logprobs
  ag::Var loss;
  double cross_entropy = 0;  // the language-model part of loss
  double router_aux = 0;     // the load-balancing term (before its coefficient; training only)
  int64_t counted_tokens = 0;
  // [B, S] f32 (f64 for f64 models) log p(target) under the model (0 where the target is ignored),
  // when asked for. With context parallelism, of the local slice's rows.
  ag::Var token_logprobs;
  // Per MoE layer: how many token copies (T*K in all) each expert this model holds processed,
  // indexed from experts().begin. With expert parallelism these are the rows the local experts
  // received from every rank of the group.
  std::map<int64_t, std::vector<int64_t>> expert_tokens;
};

// The towers' outputs for a forward's media, what replaces the placeholders: image soft tokens
// [Σ n_i, H] in image order, video soft tokens [Σ frames · n, H] (every frame of every video, in
// order) and audio soft tokens [Σ m_c, H] in clip order (undefined when absent).
struct SoftTokens {
  ag::Var image, video, audio;
};

// Context parallelism: the model's input is one contiguous slice of each sequence, and attention
// reaches the keys of the other slices through this interface (parallel/context_parallel.h
// implements it as a ring). Every rank of the group calls it for each attention layer in order.
class ContextAttention {
 public:
  virtual ~ContextAttention() = default;
  // Absolute index of this slice's first token, for a slice of `local_len` tokens.
  virtual int64_t slice_start(int64_t local_len) const = 0;
  // The whole rows [B, S] (host, i64) of a per-token integer tensor given as this slice's
  // [B, local_len] (every rank's slice in order). What is defined over whole rows comes from them:
  // document ids from the global positions (a document may start on another slice), image block
  // ids from mm_token_type_ids (an image may cross a slice boundary), and which of the media's
  // soft tokens land in this slice from the input ids. Collective: every rank calls it alike.
  virtual Tensor whole_rows(const Tensor& local) = 0;
  // Attention of the local q over the keys of every slice; mask describes the local slice.
  virtual ag::Var attend(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ops::AttentionMask& mask,
                         double scale) = 0;
};

// Hooks around the blocks of parameters a forward pass reads in turn, so that sharded data
// parallelism (parallel::enable_sharded_parameters) can gather a block's weights just before it
// runs and free them after. Block 0 is the prologue (embeddings, per-layer inputs), block 1 + l
// decoder layer l, block L + 1 the epilogue (final norm, LM head, loss); Gemma4::parameter_blocks()
// says which parameters each reads. Every forward calls enter(b) and exit(b) for b = 0 .. L + 1
// in order, outside activation recompute, so a hook that records tape nodes at enter and exit
// sees them run in backward just after and just before the block's own backward (with the
// recomputation of a recomputed layer between them).
class ParameterHooks {
 public:
  virtual ~ParameterHooks() = default;
  virtual void enter(int64_t block) = 0;
  virtual void exit(int64_t block) = 0;
  // Whether every parameter is whole now (gathered: the hooks do nothing), so that a pass which
  // calls no hooks (run_stack) may read them.
  virtual bool whole() const = 0;
};

// Block diffusion (diffusion/model.h) runs the stack in two more ways, over keys an earlier call
// produced. One layer's keys and values: k [B, n, nKV, d] after RoPE, v after its norm, of the
// absolute positions [start, start + n).
struct LayerKV {
  ag::Var k, v;
  int64_t start = 0;
};

// What the attention of a Gemma4::run_stack call sees.
struct StackAttention {
  // Per layer, keys seen before the call's own (empty: none). All layers of one kind
  // (full / sliding) hold the same number of keys.
  std::vector<LayerKV> prefix;
  // true (the causal encoder): query i sits at absolute position q_start + i and sees keys at
  // positions up to its own, within the window on sliding layers. false (the denoiser): queries
  // see every key the block's key_valid allows (bidirectional, no window: a sliding layer's prefix
  // already holds only the keys its window keeps).
  bool causal = true;
  int64_t q_start = 0;
  // The queries in blocks of rows [begin, end) that cover the call's rows in order; each block
  // attends over [prefix ; its own rows' keys], the keys allowed by key_valid[kind]
  // ([B, prefix length + end - begin], nonzero = visible; undefined = all).
  struct Block {
    int64_t begin = 0, end = 0;
    std::array<Tensor, kAttnKinds> key_valid;
  };
  std::vector<Block> blocks;
};

class Gemma4 {
 public:
  // Parameters are allocated (zeros) in the native layout; load them with the state-dict
  // adapter or initialise them with init_weights(). experts: the routed experts this model holds
  // (the empty range: all of them); expert parallelism gives each rank its share
  // (parallel::expert_range).
  // On the CPU dtype is F32 (training masters, the default) or F64 (double-precision reference
  // runs). On the GPU (device CUDA) it is BF16 (compute copies of fp32 masters the optimizer
  // holds; gradients accumulate in f32) or F32.
  // `allocate` (optional) names the parameters to allocate; the others are added undefined, taking
  // no memory: the f32 host model of a GPU run keeps only what the optimizer needs (its trainable
  // parameters) and streams the frozen ones to the device (model::load_hf_weights' visitor).
  explicit Gemma4(io::ModelConfig config, ExpertRange experts = {}, DType dtype = DType::F32,
                  Device device = Device::CPU, const std::function<bool(const std::string&)>& allocate = {});

  const io::ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  ExpertRange experts() const { return experts_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // Full-sequence forward; records the tape when grad mode is on.
  ForwardOutputs forward(const ForwardInputs& in) const;
  // One generation step over paged K/V (no tape): the step's tokens of every sequence packed as
  // one row, each non-shared layer writing its k/v into its kind's pages and attending through
  // them (model/paged_kv.h). Causal models only. Returns the logits of step.logit_rows [R, V] in
  // f32, after the final softcap (with step.head_product_only: the LM head's product before it);
  // on bf16 the LM head's bf16 product is softcapped in fp32, as the training loss does, so
  // reported log-probs are the training forward's. step.ids are text ids:
  // multimodal placeholders already mapped by text_id (the engine does it on the host, so that a
  // decode step needs no copy back and can be captured in a CUDA graph). A prefill step with media
  // merges step.soft_tokens (the embeddings' PLE projection sees them, as forward's merge does) and
  // lets image blocks see their later keys on sliding layers (step.q_last).
  Tensor forward_paged(const PagedStep& step, PagedKV& kv) const;
  // The id the embeddings look up for token `id`: the pad token for a multimodal placeholder
  // (image, video, audio; Gemma4Model.forward embeds them as pad before the merge), else `id`.
  int64_t text_id(int64_t id) const;
  // The ids text_id maps to the pad token (the model's media placeholders; none for a text model).
  std::vector<int64_t> placeholder_ids() const;
  // The vision and audio towers over in's pixel_values, pixel_values_videos / input_features (checked against the
  // model: a medium without its tower is an error); records the tape in grad mode.
  SoftTokens soft_tokens(const ForwardInputs& in) const;

  // The stack alone, for block diffusion: the scaled token embedding of ids [B, n]; the layers
  // and the final norm over x [B, n, H] at positions [B, n] (i64) with the attention `attn`
  // describes, returning the normed hidden states and, in kv_out (if given), every layer's own
  // keys and values at those positions (with their graph: gradients flow back through a later
  // call that reads them as its prefix). `encoder` picks the encoder's copy of the layer scalars.
  // No activation recompute, sharding hooks or context parallelism on this path: sharded
  // parameters must be gathered first.
  ag::Var embed(const Tensor& ids) const;
  ag::Var run_stack(const ag::Var& x, const Tensor& positions, const StackAttention& attn, bool encoder,
                    std::vector<LayerKV>* kv_out) const;
  ag::Var logits(const ag::Var& hidden) const { return logits_of(hidden); }  // LM head and final softcap
  // Inference logits of hidden states [..., H] (no tape): f32, the LM head's bf16 product widened
  // before the softcap, as the training loss computes it.
  Tensor head_logits(const Tensor& hidden) const;

  // Activation recompute for every layer whose K/V no later layer reuses (those must keep their
  // graph so KV-shared layers can send gradients back into them).
  void set_recompute(bool on) { recompute_ = on; }
  // Forwards without gradients run each layer's norm sequences as the fused ops of ops/fused.h
  // (fewer kernels per decode step, the same roundings; +8-13% decode tokens/s at batch 1-4 on an
  // H200, docs/performance.md). On unless G4_DECODE_FUSED=0.
  void set_fused_inference(bool on) { fused_inference_ = on; }
  // Adds coef * (load-balancing loss averaged over MoE layers) to the training loss: per layer
  // E * sum_e f_e * P_e, f_e the fraction of top-k assignments to expert e, P_e its mean router
  // probability (Switch Transformer's auxiliary loss). 0 (the default) disables it.
  void set_router_aux_loss(double coef) { router_aux_coef_ = coef; }
  bool recompute() const { return recompute_; }
  // How MoE layers bring tokens to the experts this model holds (model/moe.h). nullptr (the
  // default): the identity dispatcher, LocalDispatcher, and the model must hold every expert.
  // Expert parallelism sets its own (parallel::enable_expert_parallel).
  void set_token_dispatcher(std::shared_ptr<TokenDispatcher> d) { dispatcher_ = std::move(d); }
  const std::shared_ptr<TokenDispatcher>& token_dispatcher() const { return dispatcher_; }

  // Context parallelism (see parallel::enable_context_parallel): forward gets one slice of each
  // sequence, with its global position_ids (required) and pre-shifted targets. nullptr (the
  // default): the whole sequence.
  void set_context_attention(std::shared_ptr<ContextAttention> cp) { context_ = std::move(cp); }
  const std::shared_ptr<ContextAttention>& context_attention() const { return context_; }

  // Sharded parameters (see ParameterHooks). nullptr (the default): the parameters are always
  // present and forward calls nothing.
  void set_parameter_hooks(std::shared_ptr<ParameterHooks> hooks) { hooks_ = std::move(hooks); }
  const std::shared_ptr<ParameterHooks>& parameter_hooks() const { return hooks_; }
  // The parameters each block reads (ParameterHooks), in the order of params().order. A tied
  // embedding is read by the prologue and the epilogue; every parameter is in some block.
  std::vector<std::vector<std::string>> parameter_blocks() const;

  // A copy of this model (parameters converted, buffers copied) on `device` in `dtype`, for
  // moving a loaded checkpoint to the GPU. Hooks (token dispatcher, context attention) are not copied.
  std::unique_ptr<Gemma4> copy_to(Device device, DType dtype) const;

  // LoRA (model/lora.h): adds adapters on the projections lora.targets selects, A drawn as PEFT
  // draws it (U(-1/sqrt(in), 1/sqrt(in)), Philox from lora.seed) and B zeros, so the model still
  // computes the base's function. Once per model.
  void enable_lora(const LoraConfig& lora);
  const std::optional<LoraConfig>& lora() const { return lora_; }
  // Training forwards drawn so far: each draws its LoRA dropout masks from its own call number,
  // which checkpoints keep so a resumed run draws the masks the uninterrupted one would.
  uint64_t lora_calls() const { return lora_calls_; }
  void set_lora_calls(uint64_t calls) { lora_calls_ = calls; }
  // Whether forwards add the adapters' terms: a model with LoRA computes its frozen base while
  // they are bypassed (LoraBypass; g4 rl's KL reference policy), with no second model.
  bool lora_active() const { return lora_.has_value() && !lora_bypassed_; }
  bool lora_bypassed() const { return lora_bypassed_; }
  void set_lora_bypassed(bool bypassed) const { lora_bypassed_ = bypassed; }

  // The transformers initialisation: N(0, initializer_range) for matrices and embeddings,
  // ones for norms and scales, layer scalars 1.
  void init_weights(uint64_t seed, double std = 0.02);

 private:
  struct Context;
  // The decoder up to the final norm: hidden states [B, S, H] from text ids (text_ids).
  ag::Var run(const Tensor& ids, const Tensor& positions, Context& ctx) const;
  ag::Var run_layers(ag::Var h, const ag::Var& ple, Context& ctx) const;  // layers + final norm
  // text_id of every id, on the host.
  Tensor text_ids(const Tensor& ids) const;
  // The embeddings h [B, S, H] with the images' and audio clips' soft tokens at their placeholders.
  // Under context parallelism ctx.whole_ids holds the whole rows' ids: the towers run over the
  // media of whole rows and the slice takes the soft tokens of its own placeholders.
  ag::Var merge_multimodal(const ag::Var& h, const Tensor& ids, const ForwardInputs& in, const Context& ctx) const;
  ag::Var stack_attention(int64_t l, const ag::Var& q, const ag::Var& k, const ag::Var& v, const Context& ctx) const;
  const ag::Var& lm_head() const;  // the tied embedding or lm_head.weight
  ag::Var logits_of(const ag::Var& hidden) const;  // LM head and final softcap
  ag::Var layer(int64_t l, const ag::Var& h, const ag::Var& ple, Context& ctx) const;
  // Layer l's attention of x up to its output projection: [B, S, num_heads · head_dim].
  ag::Var attention_heads(int64_t l, const ag::Var& x, Context& ctx) const;
  // forward_paged's attention of layer l: this step's k/v [1, T, nKV, d] into the pages (undefined:
  // a KV-shared layer, or k/v already written by ops::norm_rope_write_kv), q [1, T, nH, d] over
  // them; returns [T, nH, d].
  Tensor paged_attention(int64_t l, const Tensor& q, const Tensor& k, const Tensor& v, const Context& ctx) const;
  // The inputs of an MoE block's router and experts (the residual's two norms), when a fused
  // inference layer computed them with the residual.
  struct MoeInputs {
    ag::Var router, experts;
  };
  ag::Var moe_block(int64_t l, const ag::Var& residual, Context& ctx, const MoeInputs* normed = nullptr) const;
  void enter_block(int64_t b) const {
    if (hooks_) hooks_->enter(b);
  }
  void exit_block(int64_t b) const {
    if (hooks_) hooks_->exit(b);
  }
  const ag::Var& p(const std::string& name) const { return params_.at(name); }
  // Training forwards (grad mode on) of a model with LoRA dropout take the next call number.
  void start_lora_dropout(Context& ctx) const;
  // x·Wᵀ of a dense projection ("model.layers.0.mlp.up_proj"), plus its LoRA adapter if it has one.
  ag::Var proj(const ag::Var& x, const std::string& module, const Context& ctx) const;
  // Whether LoRA adds to this projection now (its adapters exist and are not bypassed).
  bool adapted(const std::string& module) const;

  io::ModelConfig cfg_;
  ExpertRange experts_;
  DType dtype_;
  Device device_;
  ParamStore params_;
  std::vector<Tensor> inv_freq_;  // per layer
  std::vector<bool> kv_source_;   // per layer: some KV-shared layer reads its K/V
  bool recompute_ = false;
  bool fused_inference_ = false;
  // A fused MoE layer's routed experts on a second stream beside its dense MLP (on the GPU);
  // G4_DECODE_SIDE_STREAM=0 runs them one after the other on one stream, for measuring (the same
  // speed at batch 1 and 4, 4% slower at 16 on an H100: docs/performance.md, session 38).
  bool experts_beside_mlp_ = true;
  // The most tokens per MoE layer that take ops::moe_experts at inference on the GPU (then the grouped
  // GEMMs where they read their offsets on the device); G4_DECODE_EXPERTS_TOKENS sets it, a power of
  // two up to ops::kMoeExpertsMaxTokens (default 32, docs/performance.md).
  int64_t decode_experts_max_tokens_ = 0;
  double router_aux_coef_ = 0;
  std::optional<LoraConfig> lora_;
  mutable uint64_t lora_calls_ = 0;
  mutable bool lora_bypassed_ = false;
  std::shared_ptr<TokenDispatcher> dispatcher_;
  std::shared_ptr<ContextAttention> context_;
  std::shared_ptr<ParameterHooks> hooks_;
};

// Positions [B, S] i64: start, start + 1, ... in every row.
Tensor arange_positions(int64_t B, int64_t S, int64_t start);
// Labels shifted left by one, -100 in the last column (what the loss compares logits with).
Tensor shift_labels(const Tensor& labels);
// Document ids [B, S] i32 from position ids: a new document starts where a position does not
// follow its predecessor by exactly 1 (as transformers detects packed sequences).
Tensor document_ids_from_positions(const Tensor& position_ids);

// The model computes its base (no adapter terms) while this lives.
class LoraBypass {
 public:
  explicit LoraBypass(const Gemma4& model) : model_(model), was_(model.lora_bypassed()) {
    model_.set_lora_bypassed(true);
  }
  ~LoraBypass() { model_.set_lora_bypassed(was_); }
  LoraBypass(const LoraBypass&) = delete;
  LoraBypass& operator=(const LoraBypass&) = delete;

 private:
  const Gemma4& model_;
  bool was_;
};

}  // namespace g4::model

// transformers 5.17's DiffusionGemma sampler (DiffusionGemmaGenerationMixin.generate, DIFFUSION.md
// §E): block by block, each block denoised from random tokens by the entropy-bound sampler under a
// linear temperature schedule, with renoising and stable-and-confident stopping; the block's
// argmax canvas is appended, EOS-finalised and encoded into the cache (docs/diffusion.md,
// "Sampling"). The per-step decisions are functions of host float arrays: they are the CPU
// reference a GPU sampler is compared against.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/torch_generator.h"
#include "diffusion/generation_config.h"
#include "diffusion/model.h"
#include "model/gemma4.h"

namespace g4::diffusion {

// ---- one step's arithmetic, on host rows ----

// LinearTemperatureScheduleLogitsProcessor's temperature at remaining step cur_step of `steps`, as
// torch computes it: f32(t_min) + f32(t_max - t_min) * (f32(cur_step) / f32(steps)), every
// operation rounded to float (no fused multiply-add).
float schedule_temperature(double t_min, double t_max, int64_t cur_step, int64_t steps);
// torch.argmax: the first index of the largest value.
int64_t argmax_first(const float* row, int64_t n);
// softmax in float: exp(x - max) / sum.
void softmax_row(const float* row, int64_t n, float* p);
// torch.distributions.Categorical(logits=row).entropy(): with l = row - logsumexp(row),
// -sum(max(l, lowest float) * softmax(l)); a one-hot row gives 0.
float categorical_entropy(const float* row, int64_t n);
// EntropyBoundSampler.accept_canvas for one canvas row: sort the C entropies ascending, accept
// the prefix whose (cumsum - own entropy) <= bound. As torch on the CPU, the cumulative sum runs in
// double, each partial sum and the difference are rounded to float and the bound is compared as a
// float. Ties keep the lower position first (a stable sort; see the .cpp for torch's order).
void entropy_bound_accept(const float* entropy, int64_t C, double bound, uint8_t* accept);
// _finalize_canvas on ids [B, L] (row-major, the block just appended at the end): marks the rows
// finished by EOS in their last C tokens or by max_length, then pads (if cfg.pad_token_id) the last
// C tokens of rows finished in earlier blocks and, when some row met EOS in this block, every
// token after the first EOS of every row's last C tokens. Updates `finished` [B].
void finalize_block(std::vector<int64_t>& ids, int64_t batch, int64_t C, const GenerationConfig& cfg,
                    std::vector<uint8_t>& finished);

// ---- random draws ----

// Where the sampler's random tokens and Exp(1) draws come from. `block` counts blocks from 0,
// `step` the denoising steps of the block from 0 (cur_step = N - step).
class CanvasDraws {
 public:
  virtual ~CanvasDraws() = default;
  // A block's initial canvas: out [B, C] tokens in [0, V).
  virtual void initial_canvas(int64_t block, int64_t batch, int64_t C, int64_t V, int64_t* out) = 0;
  // How a step samples its tokens. g4's draws race on the processed logits wherever they live
  // (diffusion::step_stats, on the CPU or the GPU): race_keys fills each canvas position's seed and
  // draw index and returns true. torch's draws return false and sample instead: torch.multinomial(p, 1)
  // of every position over host probabilities p [B*C, V], out [B*C].
  virtual bool race_keys(int64_t block, int64_t step, int64_t steps, int64_t batch, int64_t C,
                         std::vector<uint64_t>& seeds, std::vector<uint64_t>& draws) {
    return false;
  }
  virtual void sample(int64_t block, int64_t step, const float* p, int64_t rows, int64_t V, int64_t* out);
  // The renoise tokens of a step: out [B, C] in [0, V).
  virtual void renoise(int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) = 0;
};

// transformers' CPU draws from torch.manual_seed(seed) (DIFFUSION.md §E.3): one stream for the
// whole batch, in its order: per block randint [B, C]; per step Exp(1) [B*C, V] (multinomial as
// argmax(p / q)), then randint [B, C]. Same seed and batch: transformers' tokens.
class TorchCpuDraws : public CanvasDraws {
 public:
  explicit TorchCpuDraws(uint64_t seed) : gen_(seed) {}
  void initial_canvas(int64_t block, int64_t batch, int64_t C, int64_t V, int64_t* out) override;
  void sample(int64_t block, int64_t step, const float* p, int64_t rows, int64_t V, int64_t* out) override;
  void renoise(int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) override;

 private:
  TorchGenerator gen_;
};

// g4's default: Philox (core/philox.h) keyed by each row's own seed, the counter naming the draw
// (kind, block, step, position), so a row's draws depend on nothing else in the batch. Tokens:
// the high 64 bits of u64 * V. Samples: the exponential race of generate/sampling_math.h (token t
// wins where processed_t - ln E_t is largest, E_t ~ Exp(1)), the same on the CPU and the GPU.
class PhiloxDraws : public CanvasDraws {
 public:
  explicit PhiloxDraws(std::vector<uint64_t> row_seeds) : seeds_(std::move(row_seeds)) {}
  void initial_canvas(int64_t block, int64_t batch, int64_t C, int64_t V, int64_t* out) override;
  bool race_keys(int64_t block, int64_t step, int64_t steps, int64_t batch, int64_t C, std::vector<uint64_t>& seeds,
                 std::vector<uint64_t>& draws) override;
  void renoise(int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) override;

 private:
  void tokens(uint64_t kind, int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) const;
  std::vector<uint64_t> seeds_;
};

// ---- the sampler ----

// One denoising step's record, the fields of the fixtures' traces ([B, C] row-major, [B]).
struct StepTrace {
  int64_t block = 0, cur_step = 0;
  float temperature = 1;  // 1 when the schedule is off (t_min or t_max none)
  std::vector<int64_t> canvas_in, canvas_out, argmax;
  std::vector<uint8_t> accept;
  std::vector<float> entropy;  // of the step's temperature-scaled logits, before finished rows are frozen
  std::vector<uint8_t> finished_in, finished_out;
};

// The state of the block being denoised.
struct BlockState {
  int64_t batch = 0, C = 0, V = 0;
  std::vector<int64_t> canvas, argmax;  // [B, C]
  Tensor sc;  // [B * C, V] the previous step's processed logits (on the logits' device); undefined: none
  std::vector<uint8_t> finished;        // [B] finished denoising
  std::vector<int64_t> history;         // [stability_threshold, B, C] argmax canvases, -1 at first
};

// Starts a block: the initial canvas from `draws`, nothing finished, the history cleared.
BlockState start_block(const GenerationConfig& cfg, CanvasDraws& draws, int64_t block, int64_t batch, int64_t C,
                       int64_t V);
// One step of E.1 (steps 9-15) given the denoiser's logits [B, C, V] (f32, on the CPU or the GPU)
// at remaining step cur_step: temperature, sample, argmax, entropy-bound acceptance, renoise,
// adaptive stopping with finished rows frozen, and the next self-conditioning logits in sc_dtype
// (bf16 for a bf16 model: transformers casts them to the embedding's dtype). With g4's draws the
// vocabulary-wide work stays on the logits' device and only B*C numbers of each kind reach the host;
// torch's draws copy the logits to the host. `trace` (optional) is filled.
void denoise_step(const Tensor& logits, int64_t block, int64_t cur_step, const GenerationConfig& cfg, DType sc_dtype,
                  CanvasDraws& draws, BlockState& s, StepTrace* trace = nullptr);

struct GenerateOutput {
  Tensor sequences;                       // [B, P + blocks * C] i64, the prompt included
  std::vector<float> tokens_per_forward;  // [B] non-pad new tokens / decoder passes while unfinished
  std::vector<int64_t> steps_per_block;   // denoising steps run per block
};

// generate()'s inputs beside input_ids, under transformers' keyword names.
struct GenerateInputs {
  // [B, P] over the uncached ids (optional; 0 = padding, left padding as transformers pads; positions
  // are not shifted for it). Cached positions keep the validity they were encoded with.
  Tensor attention_mask;
  // [B, C]: the first block's starting canvas instead of random tokens. Its random canvas is drawn
  // all the same (transformers evaluates the default of model_kwargs.pop), so the draws that follow
  // are the unseeded run's. Later blocks start from random tokens.
  Tensor decoder_input_ids;
  // [B, C, V]: the self-conditioning input of the first block's first step (later steps take the
  // previous step's processed logits). Undefined: no signal, as at every block's first step.
  Tensor self_conditioning_logits;
  // A conversation's cache (transformers' past_key_values, a DynamicCache): the ids are then only
  // the uncached tokens, encoded at positions cache->length() onwards, and the cache grows by every
  // block but the last (never encoded), as the one transformers returns. The next turn passes the
  // same cache with the last block's tokens followed by its own. Null: a fresh cache.
  EncoderCache* past_key_values = nullptr;
};

// generate() of E.1 for ids [B, P]. cfg must be resolved (resolve_generation_config, with the
// cached length plus P as the prompt length, as transformers' cur_len). As transformers'
// MaxLengthCriteria, max_length is compared with the length of ids plus the new tokens, not
// counting the cache. The logits come from diffusion::denoise on the model's device and stay there
// with g4's draws (denoise_step). `trace` (optional) receives every step.
GenerateOutput generate(const model::Gemma4& m, const Tensor& ids, const GenerateInputs& inputs,
                        const GenerationConfig& cfg, CanvasDraws& draws, std::vector<StepTrace>* trace = nullptr);

}  // namespace g4::diffusion

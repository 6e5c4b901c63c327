#include "diffusion/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>

#include "core/dtype.h"
#include "core/philox.h"
#include "diffusion/model.h"
#include "diffusion/step_stats.h"

namespace g4::diffusion {

float schedule_temperature(double t_min, double t_max, int64_t cur_step, int64_t steps) {
  // torch: t_min + ((t_max - t_min) * (cur_step / N)) with cur_step an int32 tensor, so the ratio
  // is a float tensor and the Python doubles are rounded to float when they meet it. volatile keeps
  // the product rounded on its own: a compiler allowed to contract would fuse it into the addition.
  const float ratio = static_cast<float>(cur_step) / static_cast<float>(steps);
  volatile float scaled = static_cast<float>(t_max - t_min) * ratio;
  return static_cast<float>(t_min) + scaled;
}

int64_t argmax_first(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t v = 1; v < n; ++v)
    if (row[v] > row[best]) best = v;
  return best;
}

void softmax_row(const float* row, int64_t n, float* p) {
  const float m = row[argmax_first(row, n)];
  double sum = 0;
  for (int64_t v = 0; v < n; ++v) {
    p[v] = std::exp(row[v] - m);
    sum += p[v];
  }
  // torch multiplies by the reciprocal of the sum.
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t v = 0; v < n; ++v) p[v] *= inv;
}

float categorical_entropy(const float* row, int64_t n) {
  const float m = row[argmax_first(row, n)];
  double sum = 0;
  for (int64_t v = 0; v < n; ++v) sum += std::exp(static_cast<double>(row[v] - m));
  const float lse = m + static_cast<float>(std::log(sum));
  constexpr float lowest = std::numeric_limits<float>::lowest();
  double h = 0;
  for (int64_t v = 0; v < n; ++v) {
    const double p = std::exp(static_cast<double>(row[v] - m)) / sum;
    // 0 · finite = 0: the clamp keeps -inf logits (probability 0) from giving NaN.
    h -= static_cast<double>(std::max(row[v] - lse, lowest)) * p;
  }
  return static_cast<float>(h);
}

void entropy_bound_accept(const float* entropy, int64_t C, double bound, uint8_t* accept) {
  // torch.sort(stable=False) on the CPU has no defined order for equal keys (x86 builds use
  // x86-simd-sort's bitonic networks); equal entropies change the accepted set only when they
  // straddle the bound. g4 keeps the lower position first, as torch's stable sort does. NaN last.
  std::vector<int64_t> order(static_cast<size_t>(C));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return (!std::isnan(entropy[a]) && std::isnan(entropy[b])) || entropy[a] < entropy[b];
  });
  const float limit = static_cast<float>(bound);
  double cumulative = 0;
  for (int64_t i : order) {
    cumulative += entropy[i];
    const float below = static_cast<float>(cumulative) - entropy[i];
    accept[i] = below <= limit;
  }
}

void finalize_block(std::vector<int64_t>& ids, int64_t batch, int64_t C, const GenerationConfig& cfg,
                    std::vector<uint8_t>& finished) {
  const int64_t L = static_cast<int64_t>(ids.size()) / batch;
  auto is_eos = [&](int64_t id) {
    return cfg.eos_token_id &&
           std::find(cfg.eos_token_id->begin(), cfg.eos_token_id->end(), id) != cfg.eos_token_id->end();
  };
  const bool at_max_length = cfg.max_length && L >= *cfg.max_length;
  const std::vector<uint8_t> before = finished;
  bool any_this = false, any_finished = false;
  for (int64_t b = 0; b < batch; ++b) {
    bool this_block = at_max_length;
    for (int64_t j = L - C; j < L; ++j) this_block = this_block || is_eos(ids[b * L + j]);
    any_this = any_this || this_block;
    finished[b] = finished[b] || this_block;
    any_finished = any_finished || finished[b];
  }
  if (!cfg.pad_token_id || !any_finished) return;
  const int64_t pad = *cfg.pad_token_id;
  for (int64_t b = 0; b < batch; ++b)
    if (before[b]) std::fill(ids.begin() + b * L + L - C, ids.begin() + (b + 1) * L, pad);
  // Only rows that met EOS in this block change here, but transformers applies the rule to every
  // row (a pad id that is also an EOS id then pads the rows finished earlier from their first pad).
  if (!cfg.eos_token_id || !any_this) return;
  for (int64_t b = 0; b < batch; ++b) {
    bool seen = false;
    for (int64_t j = L - C; j < L; ++j) {
      int64_t& id = ids[b * L + j];
      if (seen) {
        id = pad;
      } else {
        seen = is_eos(id);
      }
    }
  }
}

// ---- draws ----

void TorchCpuDraws::initial_canvas(int64_t, int64_t batch, int64_t C, int64_t V, int64_t* out) {
  for (int64_t i = 0; i < batch * C; ++i) out[i] = gen_.randint(0, V);
}

void TorchCpuDraws::sample(int64_t, int64_t, const float* p, int64_t rows, int64_t V, int64_t* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = gen_.multinomial_one(p + r * V, V);
}

void TorchCpuDraws::renoise(int64_t, int64_t, int64_t batch, int64_t C, int64_t V, int64_t* out) {
  for (int64_t i = 0; i < batch * C; ++i) out[i] = gen_.randint(0, V);
}

namespace {

// Philox counter_hi of a token draw: its kind in the top 16 bits ("DI" initial canvas, "DR"
// renoise), the block in the next 24, the step in the low 24. counter_lo is the position.
constexpr uint64_t kInitialKind = 0x4449, kRenoiseKind = 0x4452;

uint64_t philox_stream(uint64_t kind, int64_t block, int64_t step) {
  constexpr int64_t kMax = int64_t(1) << 24;
  G4_CHECK(block >= 0 && block < kMax && step >= 0 && step < kMax, "diffusion sampler: block ", block, " / step ", step,
           " past the Philox stream layout's 2^24");
  return (kind << 48) | (static_cast<uint64_t>(block) << 24) | static_cast<uint64_t>(step);
}

uint64_t join64(uint32_t hi, uint32_t lo) {
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

void check_seeds(const std::vector<uint64_t>& seeds, int64_t batch) {
  G4_CHECK(static_cast<int64_t>(seeds.size()) == batch, "PhiloxDraws: ", seeds.size(), " row seeds for a batch of ",
           batch);
}

}  // namespace

void PhiloxDraws::tokens(uint64_t kind, int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V,
                         int64_t* out) const {
  check_seeds(seeds_, batch);
  const uint64_t stream = philox_stream(kind, block, step);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < C; ++j) {
      const Philox4 r = philox4x32(seeds_[b], static_cast<uint64_t>(j), stream);
      // Multiply-shift maps 64 random bits onto [0, V) with a bias below V / 2^64.
      const unsigned __int128 wide = static_cast<unsigned __int128>(join64(r.v[0], r.v[1])) * static_cast<uint64_t>(V);
      out[b * C + j] = static_cast<int64_t>(wide >> 64);
    }
}

void PhiloxDraws::initial_canvas(int64_t block, int64_t batch, int64_t C, int64_t V, int64_t* out) {
  tokens(kInitialKind, block, 0, batch, C, V, out);
}

void PhiloxDraws::renoise(int64_t block, int64_t step, int64_t batch, int64_t C, int64_t V, int64_t* out) {
  tokens(kRenoiseKind, block, step, batch, C, V, out);
}

bool PhiloxDraws::race_keys(int64_t block, int64_t step, int64_t steps, int64_t batch, int64_t C,
                            std::vector<uint64_t>& seeds, std::vector<uint64_t>& draws) {
  check_seeds(seeds_, batch);
  // The race's draw index is 32 bits (gen::detail::race_noise): every (block, step, position) of a
  // row gets its own while blocks * steps * C stays below 2^32 (350 thousand 256-token blocks of 48 steps).
  const uint64_t first = (static_cast<uint64_t>(block) * static_cast<uint64_t>(steps) + static_cast<uint64_t>(step)) *
                         static_cast<uint64_t>(C);
  G4_CHECK(first + static_cast<uint64_t>(C) <= (uint64_t(1) << 32), "diffusion sampler: block ", block,
           " is past the 2^32 race draws of a row (", steps, " steps of ", C, " positions per block)");
  seeds.resize(static_cast<size_t>(batch * C));
  draws.resize(seeds.size());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < C; ++j) {
      seeds[b * C + j] = seeds_[b];
      draws[b * C + j] = first + static_cast<uint64_t>(j);
    }
  return true;
}

void CanvasDraws::sample(int64_t, int64_t, const float*, int64_t, int64_t, int64_t*) {
  G4_FAIL("diffusion sampler: these draws sample by race (race_keys), not from host probabilities");
}

// ---- the sampler ----

BlockState start_block(const GenerationConfig& cfg, CanvasDraws& draws, int64_t block, int64_t batch, int64_t C,
                       int64_t V) {
  BlockState s;
  s.batch = batch;
  s.C = C;
  s.V = V;
  s.canvas.resize(static_cast<size_t>(batch * C));
  draws.initial_canvas(block, batch, C, V, s.canvas.data());
  s.argmax = s.canvas;
  s.finished.assign(static_cast<size_t>(batch), 0);
  if (cfg.adaptive_stopping()) s.history.assign(static_cast<size_t>(*cfg.stability_threshold * batch * C), -1);
  return s;
}

void denoise_step(const Tensor& logits, int64_t block, int64_t cur_step, const GenerationConfig& cfg, DType sc_dtype,
                  CanvasDraws& draws, BlockState& s, StepTrace* trace) {
  const int64_t B = s.batch, C = s.C, V = s.V, rows = B * C, N = *cfg.max_denoising_steps;
  G4_CHECK(logits.defined() && logits.dtype() == DType::F32 && logits.numel() == rows * V,
           "denoise_step: logits must be [", B, ", ", C, ", ", V, "] f32, got ", logits.describe());
  const int64_t step = N - cur_step;
  const bool tempered = cfg.t_min && cfg.t_max;
  const float T = tempered ? schedule_temperature(*cfg.t_min, *cfg.t_max, cur_step, N) : 1.0f;
  std::vector<int64_t> argmax, sampled;
  std::vector<float> entropy;
  Tensor proc;  // [rows, V]: the next step's self-conditioning logits
  std::vector<uint64_t> seeds, keys;
  if (draws.race_keys(block, step, N, B, C, seeds, keys)) {
    StepStats st = step_stats(logits.reshape({rows, V}), T, seeds, keys, sc_dtype);
    argmax = std::move(st.argmax);
    entropy = std::move(st.entropy);
    sampled = std::move(st.sample);
    proc = std::move(st.processed);
  } else {
    // torch's arithmetic on the host, row by row, as transformers' CPU generate does it.
    const Tensor host = logits.to(Device::CPU);
    std::vector<float> z(host.data<float>(), host.data<float>() + rows * V), p(z.size());
    if (tempered)
      for (float& x : z) x = x / T;
    argmax.resize(static_cast<size_t>(rows));
    entropy.resize(static_cast<size_t>(rows));
    sampled.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      softmax_row(&z[r * V], V, &p[r * V]);
      argmax[r] = argmax_first(&z[r * V], V);
      entropy[r] = categorical_entropy(&z[r * V], V);
    }
    draws.sample(block, step, p.data(), rows, V, sampled.data());
    proc = Tensor::from_vector(z, {rows, V}).to(sc_dtype).to(logits.device());
  }
  std::vector<uint8_t> accept(static_cast<size_t>(rows));
  for (int64_t b = 0; b < B; ++b) entropy_bound_accept(&entropy[b * C], C, *cfg.entropy_bound, &accept[b * C]);
  std::vector<int64_t> noise(static_cast<size_t>(rows));
  draws.renoise(block, step, B, C, V, noise.data());
  // The current canvas is never carried over: every position is the sample if accepted, else noise.
  std::vector<int64_t> canvas(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) canvas[r] = accept[r] ? sampled[r] : noise[r];
  if (trace) {
    *trace = StepTrace{};
    trace->block = block;
    trace->cur_step = cur_step;
    trace->temperature = T;
    trace->canvas_in = s.canvas;
    trace->accept = accept;
    trace->entropy = entropy;
    trace->finished_in = s.finished;
  }
  if (cfg.adaptive_stopping()) {
    const int64_t stab = *cfg.stability_threshold;
    for (int64_t b = 0; b < B; ++b) {
      if (!s.finished[b]) continue;
      // A finished row keeps its canvas and argmax; its logits are the self-conditioning ones. (The
      // entropy of those frozen logits decides nothing: a finished row stays finished.)
      std::copy_n(&s.argmax[b * C], C, &argmax[b * C]);
      std::copy_n(&s.canvas[b * C], C, &canvas[b * C]);
      proc.slice0(b * C, C).copy_from(s.sc.slice0(b * C, C));
    }
    for (int64_t b = 0; b < B; ++b) {
      if (s.finished[b]) continue;
      bool stable = true;
      for (int64_t h = 0; h < stab && stable; ++h)
        stable = std::equal(&argmax[b * C], &argmax[b * C] + C, &s.history[(h * B + b) * C]);
      double sum = 0;
      for (int64_t j = 0; j < C; ++j) sum += entropy[b * C + j];
      const bool confident =
          static_cast<float>(sum / static_cast<double>(C)) < static_cast<float>(*cfg.confidence_threshold);
      s.finished[b] = stable && confident;
    }
    if (stab > 0) {
      std::rotate(s.history.begin(), s.history.begin() + B * C, s.history.end());
      std::copy(argmax.begin(), argmax.end(), s.history.end() - B * C);
    }
  }
  s.sc = std::move(proc);
  s.canvas = std::move(canvas);
  s.argmax = std::move(argmax);
  if (trace) {
    trace->canvas_out = s.canvas;
    trace->argmax = s.argmax;
    trace->finished_out = s.finished;
  }
}

GenerateOutput generate(const model::Gemma4& m, const Tensor& ids, const GenerateInputs& inputs,
                        const GenerationConfig& cfg, CanvasDraws& draws, std::vector<StepTrace>* trace) {
  const io::ModelConfig& mc = m.config();
  G4_CHECK(mc.diffusion, "diffusion generate: not a diffusion_gemma model");
  G4_CHECK(ids.defined() && ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0,
           "diffusion generate: input_ids must be [B, P] with B, P >= 1, got ", ids.describe());
  G4_CHECK(cfg.max_new_tokens && cfg.max_denoising_steps && cfg.entropy_bound,
           "diffusion generate: the generation config is not resolved (resolve_generation_config)");
  const int64_t B = ids.size(0), P = ids.size(1), C = mc.canvas_length, V = mc.vocab_size;
  // ceil(max_new_tokens / C) without overflow: max_new_tokens near 2^63 (--max-new-tokens
  // 18446744073709551615, which the command line clamps) wrapped to a negative count, passed the
  // check below and generated nothing.
  const int64_t N = *cfg.max_denoising_steps, mnt = *cfg.max_new_tokens, blocks = mnt / C + (mnt % C != 0 ? 1 : 0);
  // Every block is a whole canvas: the positions run to P + blocks * C. Past the context the run
  // would be unbounded in time and memory (--max-new-tokens 10^9), as g4 refuses for the
  // autoregressive sampler (gen::validate).
  const int64_t fit = std::max<int64_t>(0, (mc.max_position_embeddings - P) / C);  // whole blocks that fit
  if (mc.max_position_embeddings > 0 && blocks > fit) {
    const std::string positions = blocks <= (INT64_MAX - P) / C ? std::to_string(P + blocks * C) : "over 2^63";
    G4_FAIL("diffusion generate: max_new_tokens ", mnt, " takes ", blocks, " canvas block(s) of ", C,
            " tokens after the ", P, "-token prompt, ", positions,
            " positions in all, past the model's context length (max_position_embeddings ",
            mc.max_position_embeddings, "): at most ", fit * C, " new tokens fit");
  }
  const Tensor prompt = ids.to(Device::CPU).to(DType::I64);
  std::vector<int64_t> seq(prompt.data<int64_t>(), prompt.data<int64_t>() + B * P);
  Tensor mask;
  if (inputs.attention_mask.defined()) {
    G4_CHECK(inputs.attention_mask.shape() == Shape({B, P}), "diffusion generate: attention_mask ",
             inputs.attention_mask.describe(), " must be [", B, ", ", P,
             "] like input_ids (the uncached tokens; the cache keeps its own)");
    mask = inputs.attention_mask.to(Device::CPU).to(DType::I64);
  }
  const Tensor& first_canvas = inputs.decoder_input_ids;
  if (first_canvas.defined())
    G4_CHECK(first_canvas.shape() == Shape({B, C}) && !is_floating(first_canvas.dtype()),
             "diffusion generate: decoder_input_ids ", first_canvas.describe(), " must be [", B, ", ", C,
             "] token ids (one canvas_length block per row)");
  const Tensor& first_sc = inputs.self_conditioning_logits;
  if (first_sc.defined())
    G4_CHECK(first_sc.shape() == Shape({B, C, V}) && is_floating(first_sc.dtype()),
             "diffusion generate: self_conditioning_logits ", first_sc.describe(), " must be [", B, ", ", C, ", ", V,
             "] floats");
  EncoderCache fresh;
  EncoderCache& cache = inputs.past_key_values ? *inputs.past_key_values : fresh;
  G4_CHECK(cache.length() == 0 || cache.batch() == B, "diffusion generate: ", B,
           " rows of input_ids for a past_key_values cache of ", cache.batch());
  const DType sc_dtype = m.dtype() == DType::BF16 ? DType::BF16 : DType::F32;
  std::vector<uint8_t> finished_seq(static_cast<size_t>(B), 0);
  std::vector<int64_t> passes(static_cast<size_t>(B), 0);
  GenerateOutput out;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t L = static_cast<int64_t>(seq.size()) / B;
    if (block == 0) {
      encode(m, prompt, mask, cache);
    } else {
      // The finished previous block (EOS-padded), attended whatever it holds.
      std::vector<int64_t> last(static_cast<size_t>(B * C));
      for (int64_t b = 0; b < B; ++b) std::copy_n(&seq[b * L + L - C], C, &last[b * C]);
      encode(m, Tensor::from_vector(last, {B, C}), {}, cache);
    }
    BlockState s = start_block(cfg, draws, block, B, C, V);
    if (block == 0 && first_canvas.defined()) {
      const Tensor given = first_canvas.to(Device::CPU).to(DType::I64);
      s.canvas.assign(given.data<int64_t>(), given.data<int64_t>() + B * C);
      s.argmax = s.canvas;
    }
    if (block == 0 && first_sc.defined()) s.sc = first_sc.to(m.device()).reshape({B * C, V});
    int64_t steps = 0;
    for (int64_t cur_step = N; cur_step >= 1; --cur_step) {
      for (int64_t b = 0; b < B; ++b) passes[b] += !(s.finished[b] || finished_seq[b]);
      const Tensor sc = s.sc.defined() ? s.sc.reshape({B, C, V}) : Tensor();
      const Tensor logits = denoise(m, Tensor::from_vector(s.canvas, {B, C}).to(m.device()), cache, sc);
      StepTrace* st = nullptr;
      if (trace) st = &trace->emplace_back();
      denoise_step(logits, block, cur_step, cfg, sc_dtype, draws, s, st);
      ++steps;
      if (std::all_of(s.finished.begin(), s.finished.end(), [](uint8_t f) { return f != 0; })) break;
    }
    out.steps_per_block.push_back(steps);
    // Append the argmax canvas (not the sampled one) to every row.
    std::vector<int64_t> grown(static_cast<size_t>(B * (L + C)));
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(&seq[b * L], L, &grown[b * (L + C)]);
      std::copy_n(&s.argmax[b * C], C, &grown[b * (L + C) + L]);
    }
    seq = std::move(grown);
    finalize_block(seq, B, C, cfg, finished_seq);
    if (std::all_of(finished_seq.begin(), finished_seq.end(), [](uint8_t f) { return f != 0; })) break;
  }
  const int64_t L = static_cast<int64_t>(seq.size()) / B;
  out.sequences = Tensor::from_vector(seq, {B, L});
  for (int64_t b = 0; b < B; ++b) {
    int64_t valid = L - P;
    if (cfg.pad_token_id)
      valid = std::count_if(&seq[b * L + P], &seq[b * L + L], [&](int64_t id) { return id != *cfg.pad_token_id; });
    out.tokens_per_forward.push_back(static_cast<float>(valid) / static_cast<float>(passes[b]));
  }
  return out;
}

}  // namespace g4::diffusion

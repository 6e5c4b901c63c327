// PyTorch's CPU generator, bit for bit (torch 2.x, DIFFUSION.md §E.3), so that g4 replays what
// transformers' CPU `generate` and NeMo Automodel's training step draw from a given seed: the
// canvas and renoise tokens, the Exp(1) draws behind torch.multinomial, the corruption levels,
// positions and replacement tokens, and the block-selection / self-conditioning uniforms.
// g4's own draws stay on Philox (core/philox.h); this is the "torch-compatible" mode only.
#pragma once
#include <cstdint>
#include <random>

#include "core/tensor.h"

namespace g4 {

// The engine is MT19937 seeded by init_genrand with the seed's low 32 bits: torch keeps only
// those (torch.manual_seed(2**32 + 5) draws what manual_seed(5) draws). std::mt19937 seeded with
// a 32-bit value is that algorithm (the C++ standard specifies init_genrand and the tempering);
// tests/core/torch_generator_test.cpp checks it against the fixtures' recorded torch streams.
class TorchGenerator {
 public:
  explicit TorchGenerator(uint64_t seed) : engine_(static_cast<uint32_t>(seed)) {}

  // One engine output (torch's `random()`).
  uint32_t u32() { return static_cast<uint32_t>(engine_()); }
  // Two outputs, the first in the high half (torch's `random64()`).
  uint64_t u64() {
    const uint64_t hi = u32();
    return (hi << 32) | u32();
  }
  // torch.randint(low, high): low + draw mod (high - low), the draw 32-bit when the range is
  // below 2^32 and 64-bit otherwise (torch's modulo bias included).
  int64_t randint(int64_t low, int64_t high);
  // torch.rand float32: the low 24 bits of one u32, times 2^-24; in [0, 1).
  float rand_f32() { return static_cast<float>(u32() & 0xFFFFFFu) * 0x1p-24f; }
  // Tensor.exponential_(1) float32: u = the low 53 bits of one u64 times 2^-53 (a double in
  // [0, 1)), then -log1p(-u) in double rounded to float. u = 0 gives +0.
  float exponential_f32();

  // Row-major fills, as torch fills a contiguous tensor element by element.
  Tensor randint(const Shape& shape, int64_t low, int64_t high);  // i64
  Tensor rand(const Shape& shape);                                // f32
  Tensor exponential(const Shape& shape);                         // f32
  void fill_exponential(float* out, int64_t n);

  // torch.multinomial(p, 1) for one probability row of length n on the CPU: draws n Exp(1)
  // values q and returns sample_argmax_ratio(p, q, n). Consumes exactly 2n engine outputs
  // whatever p is, so a [rows, V] call is `rows` calls of this in row order.
  int64_t multinomial_one(const float* p, int64_t n);

 private:
  std::mt19937 engine_;
};

// torch's CPU multinomial with one sample: argmax_v(p[v] / q[v]) with the division in float, the
// first index winning ties and a NaN ratio (p = 0 over q = 0, possible when an Exp draw is 0)
// beating every number, as torch's argmax does. p must be finite and non-negative with a
// positive entry (torch's own checks); the error names the offending index.
int64_t sample_argmax_ratio(const float* p, const float* q, int64_t n);

// NeMo Automodel 0.7.0's seeds (DIFFUSION.md §D.3, §D.4, §D.6), returned in full as Automodel
// computes them. TorchGenerator keeps only their low 32 bits, as torch does: the 2^43 of the
// corruption seed and the 2^42 of the block-selection seed vanish, so block selection and the
// self-conditioning coins draw the same uniforms (an Automodel quirk that parity keeps).

// Corruption generator of row `row` of micro-batch `microbatch` at optimizer step `step`:
// gidx = step·gbs + dp_rank + (microbatch·local_batch_size + row)·dp_size with
// gbs = local_batch_size·dp_size·grad_acc_steps; seed = (base + 2^43 + 2654435761·gidx) mod 2^63.
uint64_t automodel_corruption_seed(uint64_t base_seed, int64_t step, int64_t dp_rank, int64_t dp_size,
                                   int64_t local_batch_size, int64_t grad_acc_steps, int64_t microbatch, int64_t row);
// Self-conditioning coins of a micro-batch: base + 7919·step + microbatch (one rand per row).
uint64_t automodel_coin_seed(uint64_t base_seed, int64_t step, int64_t microbatch);
// Block selection of a micro-batch: the coin seed + 2^42 (one rand per row).
uint64_t automodel_selection_seed(uint64_t base_seed, int64_t step, int64_t microbatch);

// The draws of one example's corruption generator, in Automodel's order: the level
// t = f32(eps) + f32(1 - eps)·rand (float arithmetic), then `seq_len` uniforms u (f32 [seq_len])
// and `seq_len` replacement tokens in [0, vocab_size) (i64 [seq_len]). Position k is corrupted when
// u[k] < t and it is supervised; applying that is the training objective's business.
struct AutomodelCorruptionDraws {
  float t = 0;
  Tensor u;
  Tensor replacement;
};
AutomodelCorruptionDraws automodel_corruption_draws(uint64_t seed, int64_t seq_len, int64_t vocab_size, double eps);

}  // namespace g4

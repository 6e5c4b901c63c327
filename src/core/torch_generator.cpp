#include "core/torch_generator.h"

#include <cmath>
#include <vector>

namespace g4 {

int64_t TorchGenerator::randint(int64_t low, int64_t high) {
  G4_CHECK(high > low, "TorchGenerator::randint: empty range [", low, ", ", high, ")");
  // The difference of two int64 can exceed INT64_MAX; unsigned arithmetic wraps it correctly.
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  const uint64_t draw = range >= (uint64_t(1) << 32) ? u64() : u32();
  return static_cast<int64_t>(static_cast<uint64_t>(low) + draw % range);
}

float TorchGenerator::exponential_f32() {
  const double u = static_cast<double>(u64() & ((uint64_t(1) << 53) - 1)) * 0x1p-53;
  return static_cast<float>(-std::log1p(-u));
}

Tensor TorchGenerator::randint(const Shape& shape, int64_t low, int64_t high) {
  Tensor t = Tensor::empty(shape, DType::I64);
  int64_t* out = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = randint(low, high);
  return t;
}

Tensor TorchGenerator::rand(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* out = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = rand_f32();
  return t;
}

Tensor TorchGenerator::exponential(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  fill_exponential(t.data<float>(), t.numel());
  return t;
}

void TorchGenerator::fill_exponential(float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = exponential_f32();
}

int64_t TorchGenerator::multinomial_one(const float* p, int64_t n) {
  G4_CHECK(n > 0, "TorchGenerator::multinomial_one: empty probability row");
  // One buffer per thread: the sampler calls this once per canvas position with the same n.
  thread_local std::vector<float> q;
  q.resize(static_cast<size_t>(n));
  fill_exponential(q.data(), n);
  return sample_argmax_ratio(p, q.data(), n);
}

int64_t sample_argmax_ratio(const float* p, const float* q, int64_t n) {
  G4_CHECK(n > 0, "sample_argmax_ratio: empty probability row");
  int64_t best = -1;
  float best_ratio = 0;
  bool any_positive = false;
  for (int64_t v = 0; v < n; ++v) {
    G4_CHECK(p[v] >= 0 && std::isfinite(p[v]), "sample_argmax_ratio: probability ", p[v], " at index ", v,
             " of a row of ", n, " (inf, nan or negative)");
    any_positive = any_positive || p[v] > 0;
    const float ratio = p[v] / q[v];
    // torch's argmax: the first NaN wins outright, else the first of the largest values.
    if (best >= 0 && std::isnan(best_ratio)) continue;
    if (best < 0 || std::isnan(ratio) || ratio > best_ratio) {
      best = v;
      best_ratio = ratio;
    }
  }
  G4_CHECK(any_positive, "sample_argmax_ratio: a row of ", n, " probabilities that sums to 0");
  return best;
}

uint64_t automodel_corruption_seed(uint64_t base_seed, int64_t step, int64_t dp_rank, int64_t dp_size,
                                   int64_t local_batch_size, int64_t grad_acc_steps, int64_t microbatch, int64_t row) {
  G4_CHECK(step >= 0 && dp_size > 0 && dp_rank >= 0 && dp_rank < dp_size && local_batch_size > 0 &&
               grad_acc_steps > 0 && microbatch >= 0 && microbatch < grad_acc_steps && row >= 0 &&
               row < local_batch_size,
           "automodel_corruption_seed: step ", step, ", dp rank ", dp_rank, " of ", dp_size, ", row ", row,
           " of a local batch of ", local_batch_size, ", micro-batch ", microbatch, " of ", grad_acc_steps,
           " (out of range)");
  const uint64_t global_batch = static_cast<uint64_t>(local_batch_size * dp_size * grad_acc_steps);
  const uint64_t gidx = static_cast<uint64_t>(step) * global_batch + static_cast<uint64_t>(dp_rank) +
                        static_cast<uint64_t>((microbatch * local_batch_size + row) * dp_size);
  // Arithmetic mod 2^64 keeps every bit below 2^63, so masking gives Python's exact mod 2^63.
  return (base_seed + (uint64_t(1) << 43) + uint64_t(2654435761) * gidx) & ((uint64_t(1) << 63) - 1);
}

uint64_t automodel_coin_seed(uint64_t base_seed, int64_t step, int64_t microbatch) {
  G4_CHECK(step >= 0 && microbatch >= 0, "automodel_coin_seed: step ", step, ", micro-batch ", microbatch,
           " (negative)");
  return base_seed + uint64_t(7919) * static_cast<uint64_t>(step) + static_cast<uint64_t>(microbatch);
}

uint64_t automodel_selection_seed(uint64_t base_seed, int64_t step, int64_t microbatch) {
  return automodel_coin_seed(base_seed, step, microbatch) + (uint64_t(1) << 42);
}

AutomodelCorruptionDraws automodel_corruption_draws(uint64_t seed, int64_t seq_len, int64_t vocab_size, double eps) {
  G4_CHECK(seq_len > 0 && vocab_size > 0, "automodel_corruption_draws: sequence length ", seq_len, ", vocab size ",
           vocab_size, " (both must be positive)");
  TorchGenerator gen(seed);
  AutomodelCorruptionDraws d;
  // `eps + (1 - eps) * rand` on a float tensor: torch rounds both Python scalars to float and
  // multiplies, then adds, in float. The product of two floats is exact in double, so rounding it
  // to float gives the float product, and the cast keeps a compiler from fusing it into the add.
  const float level = static_cast<float>(static_cast<double>(gen.rand_f32()) * static_cast<float>(1.0 - eps));
  d.t = level + static_cast<float>(eps);
  d.u = gen.rand({seq_len});
  d.replacement = gen.randint({seq_len}, 0, vocab_size);
  return d;
}

}  // namespace g4

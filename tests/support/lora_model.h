// Helpers of the LoRA model tests: random batches, adapters whose B is drawn (so they change the
// function), and inference logits.
#pragma once
#include "autograd/variable.h"
#include "core/random.h"
#include "model/gemma4.h"

namespace g4::test {

inline model::ForwardInputs random_lm_batch(uint64_t seed, int64_t vocab, int64_t batch, int64_t len) {
  model::ForwardInputs in;
  in.input_ids = randint({batch, len}, seed, 0, vocab);
  in.labels = randint({batch, len}, seed + 1, 0, vocab);
  return in;
}

// Every B (zeros after enable_lora) drawn at random, so the adapters change the function.
inline void randomise_lora_b(model::Gemma4& m, uint64_t seed) {
  uint64_t i = 0;
  for (const model::LoraModule& mod : model::lora_modules(m.config(), *m.lora())) {
    Tensor& b = m.params().at(model::lora_b_name(mod.name)).mutable_value();
    b.copy_from(randn(b.shape(), seed + i++, DType::F32, 0.05).to(b.dtype()));
  }
}

// The logits of a no-grad forward (labels dropped).
inline Tensor eval_logits(const model::Gemma4& m, const model::ForwardInputs& in) {
  ag::NoGrad no_grad;
  model::ForwardInputs x = in;
  x.labels = Tensor();
  return m.forward(x).logits.value();
}

}  // namespace g4::test

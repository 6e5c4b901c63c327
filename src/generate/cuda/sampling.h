// The GPU path of gen::sample_batch (generate/sampling.h), which checks the arguments and calls
// it for logits on the GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "generate/sampling.h"

namespace g4::gen::cuda {

std::vector<SampledToken> sample_batch(const Tensor& logits, const std::vector<RowSampling>& rows);

// A sample_batch whose kernels and result copy are queued on the compute stream but not waited
// for: the engine queues its next decode step behind them (its token ids written on the device by
// write_sampled_ids) before the host reads these results.
class PendingSamples {
 public:
  PendingSamples();
  PendingSamples(PendingSamples&&) noexcept;
  PendingSamples& operator=(PendingSamples&&) noexcept;
  ~PendingSamples();
  bool empty() const { return state_ == nullptr; }
  // Waits for the copy (not for later work on the stream), checks each row's status and returns
  // the rows' results; once.
  std::vector<SampledToken> wait();

 private:
  friend PendingSamples sample_batch_async(const Tensor&, const std::vector<RowSampling>&, double);
  friend void write_sampled_ids(const PendingSamples&, const Tensor&, Tensor, const std::vector<int64_t>&,
                                int64_t);
  struct State;
  std::unique_ptr<State> state_;
};

// `logits` f32 [R, V] with softcap 0, or the LM head's product [R, V] (f32 or bf16) before a final
// softcap of `softcap` (0: none), which the first kernel applies as ops::softcap_to_f32 does: the
// same draws and log-probs as sampling softcap_to_f32's output, one pass fewer.
PendingSamples sample_batch_async(const Tensor& logits, const std::vector<RowSampling>& rows, double softcap);

// ids[j] = the token row src_rows[j] of `samples` drew, 0 where src_rows[j] < 0 (I64 tensors of
// one length on the GPU; queued on the compute stream): a decode step's inputs from the step
// before it, without the host. A token in `placeholders` (the model's media placeholder ids,
// which text_id maps) becomes `pad`.
void write_sampled_ids(const PendingSamples& samples, const Tensor& src_rows, Tensor ids,
                       const std::vector<int64_t>& placeholders, int64_t pad);

}  // namespace g4::gen::cuda

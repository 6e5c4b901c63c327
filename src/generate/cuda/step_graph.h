// CUDA graphs of the engine's decode steps (generate/engine.cpp): one capture of a whole
// forward_paged, replayed with new inputs copied into the same device buffers. Declared without
// CUDA headers; CUDA builds only.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "core/device_pool.h"
#include "core/tensor.h"

namespace g4::gen::cuda {

// Page-locked host memory, so that uploads from it are truly asynchronous.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  void* data() const { return data_.get(); }
  // Queues a copy of the buffer's first dst.nbytes() bytes into dst (a GPU tensor) on the compute
  // stream. The host must not write the buffer again before the stream ran the copy.
  void upload(Tensor& dst) const;

 private:
  std::shared_ptr<void> data_;
};

class StepGraph {
 public:
  // Captures the GPU work `body` queues, with every tensor it creates taken from `pool` (none of
  // them may be handed to other work while the graph lives). Body must not synchronise with the
  // host and must have run once before (lazy initialisations: kernel attributes, library plans).
  // Its result is the graph's output, rewritten by each replay.
  StepGraph(const std::function<Tensor()>& body, const DevicePool& pool);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  // Queues the graph on the compute stream; returns its output.
  const Tensor& replay() const;

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  Tensor out_;
};

}  // namespace g4::gen::cuda

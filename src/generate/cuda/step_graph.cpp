#include "generate/cuda/step_graph.h"

#include <cuda_runtime.h>

#include "core/cuda/runtime.h"
#include "core/error.h"

namespace g4::gen::cuda {

PinnedBuffer::PinnedBuffer(size_t bytes) {
  void* p = nullptr;
  G4_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
  data_ = std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
}

void PinnedBuffer::upload(Tensor& dst) const {
  G4_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), data_.get(), dst.nbytes(), cudaMemcpyHostToDevice, g4::cuda::stream()));
}

StepGraph::StepGraph(const std::function<Tensor()>& body, const DevicePool& pool) {
  cudaStream_t s = g4::cuda::stream();
  DevicePoolScope scope(pool);
  // Relaxed: a pool that has no free block of a size asks the driver for one during the capture.
  G4_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  cudaGraph_t graph = nullptr;
  try {
    out_ = body();
  } catch (...) {
    (void)cudaStreamEndCapture(s, &graph);
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  const cudaError_t end = cudaStreamEndCapture(s, &graph);
  if (end != cudaSuccess) {
    (void)cudaGetLastError();
    G4_FAIL("CUDA graph: the capture of a decode step failed (", cudaGetErrorString(end),
            "): some operation of the step synchronises with the host");
  }
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  G4_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  exec_ = exec;
}

StepGraph::~StepGraph() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

const Tensor& StepGraph::replay() const {
  G4_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), g4::cuda::stream()));
  return out_;
}

}  // namespace g4::gen::cuda

// Each op is declared once (ops/*.h) and defined in ops/cpu/, whose definition begins by handing
// tensors that live on the GPU to the CUDA implementation of the same name in g4::ops::cuda
// (declared in ops/cuda/*.h). Model code therefore never branches on the device. Builds without
// nvcc have no CUDA implementations and no way to create a GPU tensor.
#pragma once
#include "core/error.h"
#include "core/tensor.h"

#ifdef G4_WITH_CUDA
#define G4_FORWARD_TO_CUDA(tensor, call)                                          \
  do {                                                                            \
    if ((tensor).defined() && (tensor).device() == ::g4::Device::CUDA) return ::g4::ops::cuda::call; \
  } while (0)
#else
#define G4_FORWARD_TO_CUDA(tensor, call) \
  do {                                   \
  } while (0)
#endif

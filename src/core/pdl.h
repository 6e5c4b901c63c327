// Whether the decode-path kernels launch with programmatic dependent launch (PDL): each may be
// scheduled while the kernel before it still runs (src/core/cuda/pdl.cuh says how and why that is
// safe). Declared without CUDA headers so that tests and tools can switch it.
#pragma once

namespace g4 {

// G4_PDL=1 (read at the first call; 0 or unset: off), or the last set_pdl_enabled(). Launches read
// it when they are queued, so a CUDA graph keeps the kind of launch it was captured with.
bool pdl_enabled();
void set_pdl_enabled(bool on);

}  // namespace g4

// Index errors found on the GPU (an embedding id or a loss target outside its range, a paged
// attention key on a missing page, a KV slot outside its pool) cannot throw when the kernel meets
// them without a host synchronisation per op. The kernels record the first one; it is raised as a
// g4::Error by the next op of the same kind that is called after the faulty kernel has finished,
// or by check_device_index_errors() — call it at a natural synchronisation point (the end of a
// step, before reading the loss).
#pragma once

namespace g4::ops {

// Waits for the GPU's queued work and raises the first recorded index error, if any (the record
// is then cleared). Does nothing (and does not wait) when no GPU op that can record one has run.
void check_device_index_errors();

}  // namespace g4::ops

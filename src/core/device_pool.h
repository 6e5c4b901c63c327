// A private pool of the GPU caching allocator (core/device_memory.h), for CUDA graphs: a captured
// graph replays into the addresses it was captured with, so no other work may be handed that
// memory in between. While a DevicePoolScope is alive on a thread, the GPU tensors it creates take
// their blocks from the pool (its own freed blocks first, else new ones from the driver) and give
// them back to the pool when freed, never to the shared free lists. The pool returns its cached
// blocks to the driver when the DevicePool and every block it handed out are gone.
// Declared without CUDA headers; defined in CUDA builds only (core/cuda/device_memory.cpp).
#pragma once
#include <memory>

namespace g4 {

class DevicePool {
 public:
  DevicePool();
  struct State;
  const std::shared_ptr<State>& state() const { return state_; }

 private:
  std::shared_ptr<State> state_;
};

class DevicePoolScope {
 public:
  explicit DevicePoolScope(const DevicePool& pool);
  ~DevicePoolScope();
  DevicePoolScope(const DevicePoolScope&) = delete;
  DevicePoolScope& operator=(const DevicePoolScope&) = delete;

 private:
  std::shared_ptr<DevicePool::State> previous_;
};

}  // namespace g4

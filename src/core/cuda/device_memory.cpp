// A caching allocator for GPU memory. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, far too much for the thousands of activations a training step creates and drops.
// Freed blocks go to a free list keyed by their (rounded) size and are handed out again. All work
// runs on one stream, so a block freed by the host may be reused by the next kernel at once: the
// stream orders that kernel after every earlier use of the block; while run_side_by_side has work
// on a second stream, freed blocks wait until the streams join. Private pools (core/device_pool.h)
// keep their own free lists, for the memory CUDA graphs replay into.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/device_memory.h"
#include "core/device_pool.h"

namespace g4 {

namespace {

// Small blocks round to 512 bytes, large ones to 2 MiB (as PyTorch's allocator does): a training
// step asks for the same sizes every step, so exact size classes are reused, and the waste on the
// gigabyte-sized weights and optimizer states stays negligible.
size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= (size_t{1} << 20)) return (bytes + 511) / 512 * 512;
  const size_t step = size_t{2} << 20;
  return (bytes + step - 1) / step * step;
}

// Cached blocks by rounded size, returned to the driver on demand.
struct FreeLists {
  std::map<size_t, std::vector<void*>> blocks;

  void* take(size_t size) {
    auto it = blocks.find(size);
    if (it == blocks.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }
  // Frees every cached block (after the stream has finished with them); returns the bytes freed.
  // Touches no CUDA state when there is none (a pool that never allocated, as on a machine without GPU).
  int64_t release() {
    if (std::all_of(blocks.begin(), blocks.end(), [](const auto& kv) { return kv.second.empty(); })) return 0;
    G4_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    int64_t bytes = 0;
    for (auto& [size, list] : blocks) {
      for (void* p : list) {
        G4_CUDA_CHECK(cudaFree(p));
        bytes += static_cast<int64_t>(size);
      }
      list.clear();
    }
    return bytes;
  }
};

class CachingAllocator {
 public:
  // From `pool`'s free list when given, else from the shared one; new blocks from the driver.
  void* allocate(size_t bytes, FreeLists* pool) {
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    void* p = (pool ? pool : &free_)->take(size);
    if (!p) {
      cudaError_t err = cudaMalloc(&p, size);
      if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        release_cached_locked();
        err = cudaMalloc(&p, size);
      }
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        G4_FAIL("out of GPU memory allocating ", bytes, " bytes (", current_ >> 20, " MiB in use by tensors, ",
                reserved_ >> 20, " MiB reserved): ", cudaGetErrorString(err));
      }
      reserved_ += static_cast<int64_t>(size);
    }
    current_ += static_cast<int64_t>(size);
    if (current_ > peak_) peak_ = current_;
    return p;
  }

  // `keep` holds the private pool `pool` belongs to while the block waits (defer_frees).
  void release(void* p, size_t bytes, FreeLists* pool, std::shared_ptr<void> keep) {
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    current_ -= static_cast<int64_t>(size);
    if (deferring_ > 0) {
      deferred_.push_back({p, size, pool, std::move(keep)});
      return;
    }
    (pool ? pool : &free_)->blocks[size].push_back(p);
  }
  // Between defer_frees(true) and defer_frees(false) freed blocks wait, then join their free lists:
  // run_side_by_side's two streams may both still be reading a block the host has dropped.
  void defer_frees(bool on) {
    std::vector<Deferred> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      deferring_ += on ? 1 : -1;
      if (deferring_ > 0) return;
      for (Deferred& d : deferred_) (d.pool ? d.pool : &free_)->blocks[d.size].push_back(d.p);
      done.swap(deferred_);
    }
    // The pools the blocks kept are let go outside the lock: a pool's last reference gives its
    // blocks back to the driver under it (drop_pool).
  }
  // A private pool's blocks back to the driver (the pool is gone).
  void drop_pool(FreeLists& pool) {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_ -= pool.release();
  }

  DeviceMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return DeviceMemoryStats{current_, peak_, reserved_};
  }
  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = current_;
  }

 private:
  void release_cached_locked() { reserved_ -= free_.release(); }

  struct Deferred {
    void* p;
    size_t size;
    FreeLists* pool;
    std::shared_ptr<void> keep;
  };
  std::mutex mu_;
  FreeLists free_;
  int64_t current_ = 0, peak_ = 0, reserved_ = 0;
  int deferring_ = 0;
  std::vector<Deferred> deferred_;
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator;  // never destroyed (see runtime.cpp)
  return *a;
}

// The pool of the innermost DevicePoolScope of this thread (null: the shared free lists).
thread_local std::shared_ptr<DevicePool::State> current_pool;

cudaMemcpyKind copy_kind(Device dst, Device src) {
  if (dst == Device::CUDA) return src == Device::CUDA ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
  return src == Device::CUDA ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void select_cuda_device(int device) { cuda::select_device(device); }

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

std::string cuda_device_name() {
  if (!cuda_available()) return {};
  int device = 0;
  G4_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  G4_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

DeviceMemoryStats device_memory_stats() { return allocator().stats(); }
int64_t device_free_bytes() {
  size_t free = 0, total = 0;
  G4_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  const DeviceMemoryStats s = allocator().stats();
  return static_cast<int64_t>(free) + s.reserved - s.current;
}
void reset_device_memory_peak() { allocator().reset_peak(); }
void release_cached_device_memory() { allocator().release_cached(); }
void device_synchronize() { G4_CUDA_CHECK(cudaStreamSynchronize(cuda::stream())); }

void run_side_by_side(const std::function<void()>& side, const std::function<void()>& main) {
  // Frees wait from here until the streams have joined (the guards undo in reverse order).
  struct Frees {
    Frees() { allocator().defer_frees(true); }
    ~Frees() { allocator().defer_frees(false); }
  } frees;
  // An exception after the fork still joins (best effort: the error being thrown is the one to report).
  struct JoinOnUnwind {
    bool armed = false;
    ~JoinOnUnwind() {
      if (!armed) return;
      try {
        cuda::SideStreamScope::join();
      } catch (...) {
      }
    }
  } unwind;
  {
    cuda::SideStreamScope scope;
    unwind.armed = true;
    side();
  }
  main();
  unwind.armed = false;
  cuda::SideStreamScope::join();
}

struct DevicePool::State {
  FreeLists lists;
  ~State() { allocator().drop_pool(lists); }
};

DevicePool::DevicePool() : state_(std::make_shared<State>()) {}

DevicePoolScope::DevicePoolScope(const DevicePool& pool) : previous_(std::move(current_pool)) {
  current_pool = pool.state();
}
DevicePoolScope::~DevicePoolScope() { current_pool = std::move(previous_); }

namespace detail {

std::shared_ptr<void> device_alloc(size_t bytes) {
  // Memory lives on the runtime's GPU: creating the runtime first fixes which (select_device).
  (void)cuda::stream();
  // A block of a private pool holds the pool, so the pool outlives what it handed out.
  std::shared_ptr<DevicePool::State> pool = current_pool;
  FreeLists* lists = pool ? &pool->lists : nullptr;
  void* p = allocator().allocate(bytes, lists);
  return std::shared_ptr<void>(p, [bytes, pool = std::move(pool), lists](void* q) { allocator().release(q, bytes, lists, pool); });
}

void device_zero(void* p, size_t bytes) {
  if (bytes == 0) return;
  G4_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda::stream()));
}

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  G4_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, copy_kind(dst_device, src_device), cuda::stream()));
  // The host may read host memory right after a copy into it: wait for it. A copy from host memory
  // needs no wait: every caller's host memory is pageable (cpu_alloc, std::vector), which CUDA
  // stages before cudaMemcpyAsync returns, so the source may be freed at once, and the GPU work
  // queued behind the upload is not drained (a wait per upload left the GPU idle while the host
  // queued the next kernels: block diffusion uploaded a key mask in every layer of every step).
  if (dst_device == Device::CPU) G4_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}

}  // namespace detail
}  // namespace g4

#include "generate/page_pool.h"

#include <algorithm>

#include "core/error.h"

namespace g4::gen {

PagePool::PagePool(int64_t pages) {
  G4_CHECK(pages >= 0, "page pool: ", pages, " pages");
  refs_.assign(static_cast<size_t>(pages), 0);
  keys_.assign(static_cast<size_t>(pages), 0);
  for (int64_t p = pages - 1; p >= 0; --p) free_.push_back(p);
}

int64_t PagePool::take() {
  G4_CHECK(!free_.empty(), "page pool: no free page (", size(), " in use)");
  const int64_t p = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(p)] = 1;
  return p;
}

void PagePool::retain(int64_t page) {
  G4_CHECK(page >= 0 && page < size() && refs_[static_cast<size_t>(page)] > 0, "page pool: retain of page ", page,
           ", which is not held");
  ++refs_[static_cast<size_t>(page)];
}

bool PagePool::release(int64_t page) {
  G4_CHECK(page >= 0 && page < size() && refs_[static_cast<size_t>(page)] > 0, "page pool: release of page ", page,
           ", which is not held");
  if (--refs_[static_cast<size_t>(page)] > 0) return false;
  keys_[static_cast<size_t>(page)] = 0;
  free_.push_back(page);
  return true;
}

PoolPages pool_pages_for_budget(int64_t budget, int64_t page_size, int64_t window, int64_t full_bytes,
                                int64_t sliding_bytes, int64_t sliding_wanted, int64_t sliding_least) {
  G4_CHECK(page_size > 0 && full_bytes > 0 && sliding_bytes >= 0, "KV pools: page size ", page_size, ", page bytes ",
           full_bytes, " (full) and ", sliding_bytes, " (sliding)");
  constexpr int64_t kMiB = int64_t{1} << 20;
  PoolPages n;
  if (sliding_bytes > 0) {
    // Pages of each kind that one sequence of kPoolBalanceTokens holds.
    const int64_t full_each = (kPoolBalanceTokens + page_size - 1) / page_size;
    const int64_t sliding_each = (std::min(kPoolBalanceTokens, window) + page_size - 1) / page_size;
    const double sequences = static_cast<double>(budget) /
                             static_cast<double>(full_each * full_bytes + sliding_each * sliding_bytes);
    const auto balanced = static_cast<int64_t>(sequences * static_cast<double>(sliding_each));
    n.sliding = std::max(sliding_least, std::min(sliding_wanted, balanced));
  }
  n.full = (budget - n.sliding * sliding_bytes) / full_bytes;
  G4_CHECK(n.full > 0, "Engine: ", budget / kMiB, " MiB of GPU memory for the KV pages cannot hold ",
           sliding_bytes > 0 ? "the sliding layers' least pool (one window of " + std::to_string(window) +
                                   " tokens and one step's chunk: " + std::to_string(sliding_least) + " pages of " +
                                   std::to_string(sliding_bytes / 1024) + " KiB) and "
                             : std::string(),
           "one page of the full-attention layers (", full_bytes / 1024, " KiB; pages of ", page_size,
           " tokens); raise memory_fraction, shorten max_step_tokens or free GPU memory");
  return n;
}

}  // namespace g4::gen
